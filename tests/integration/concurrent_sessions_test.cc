// Two sessions on one pool, driven from two threads at once: outputs stay correct, and neither
// can use the other's pages (PERMISSION_DENIED) or plans (NOT_FOUND).
#include <thread>

#include "daemon_fixture.h"
#include "reference_attention.h"

namespace attnd::testing {
namespace {

class ConcurrentSessionsTest : public DaemonTest {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }
};

TEST_F(ConcurrentSessionsTest, SessionsAreIsolatedAndCorrectInParallel) {
  ModelShape shape;
  shape.kv_heads = 2;
  shape.qo_heads = 4;
  shape.num_pages = 96;
  auto a = client_->OpenSession("session-a");
  auto b = client_->OpenSession("session-b");
  ATTND_ASSERT_OK(a);
  ATTND_ASSERT_OK(b);
  ASSERT_NE((*a)->session_id(), (*b)->session_id());
  const std::string name = UniqueName("shared");
  auto pool_a = (*a)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool_a);
  auto pool_b = (*b)->AttachPool(name);
  ATTND_ASSERT_OK(pool_b);
  ASSERT_EQ(pool_a->pool_id(), pool_b->pool_id());
  EXPECT_EQ(pool_b->attached_sessions(), 2);

  Workload work_a(a->get(), shape, pool_a->pool_id(), /*seed=*/101);
  Workload work_b(b->get(), shape, pool_b->pool_id(), /*seed=*/202);

  // Phase 1: both sessions prefill and decode at the same time.
  absl::Status status_a, status_b;
  auto drive = [](Workload* work, std::vector<int> lens, int steps, absl::Status* out) {
    *out = work->Prefill(lens);
    for (int i = 0; i < steps && out->ok(); ++i) *out = work->DecodeStep();
  };
  std::thread ta(drive, &work_a, std::vector<int>{40, 7, 16}, 12, &status_a);
  std::thread tb(drive, &work_b, std::vector<int>{3, 33}, 12, &status_b);
  ta.join();
  tb.join();
  ATTND_ASSERT_OK(status_a);
  ATTND_ASSERT_OK(status_b);

  // No page is granted to both.
  std::vector<int32_t> pages_a = work_a.AllPages(), pages_b = work_b.AllPages();
  for (int32_t p : pages_a) {
    EXPECT_EQ(std::count(pages_b.begin(), pages_b.end(), p), 0) << "page " << p << " in both";
  }

  // Phase 2: B uses A's pages in a plan -> PERMISSION_DENIED naming the field and page id.
  client::PlanSpec stolen = work_a.PlanFor(v1::ATTENTION_KIND_DECODE, {0}, {1});
  stolen.qo_indptr.clear();
  const int32_t first_page_of_a = stolen.kv_indices[0];
  EXPECT_TRUE(StatusIs((*b)->CreatePlan(stolen), absl::StatusCode::kPermissionDenied,
                       {absl::StrCat("kv_indices[0]=", first_page_of_a)}));
  // Mixing one own page with one of A's is refused just the same.
  client::PlanSpec mixed = stolen;
  mixed.kv_indices = {pages_b[0], first_page_of_a};
  mixed.kv_indptr = {0, 2};
  EXPECT_TRUE(StatusIs((*b)->CreatePlan(mixed), absl::StatusCode::kPermissionDenied,
                       {absl::StrCat("kv_indices[1]=", first_page_of_a)}));
  // Freeing or forking A's pages from B is refused too (any error), and changes nothing.
  EXPECT_FALSE((*b)->FreePages(pool_b->pool_id(), {first_page_of_a}).ok());
  EXPECT_FALSE((*b)->ForkPages(pool_b->pool_id(), {first_page_of_a}).ok());

  // A's plan ids do not exist for B.
  client::PlanSpec own = work_a.PlanFor(v1::ATTENTION_KIND_DECODE, {0, 1}, {1, 1});
  own.qo_indptr.clear();
  auto plan_a = (*a)->CreatePlan(own);
  ATTND_ASSERT_OK(plan_a);
  client::RunArgs run;
  run.plan_id = plan_a->plan_id;
  run.layer = 0;
  auto q = client::MakeTensor(std::vector<float>(2 * shape.qo_heads * shape.head_dim, 0.5f),
                              {2, shape.qo_heads, shape.head_dim}, shape.q_dtype);
  ATTND_ASSERT_OK(q);
  run.q = *q;
  EXPECT_TRUE(StatusIs((*b)->Run(run), absl::StatusCode::kNotFound, {plan_a->plan_id}));
  EXPECT_TRUE(StatusIs((*b)->DeletePlan(plan_a->plan_id), absl::StatusCode::kNotFound,
                       {plan_a->plan_id}));
  ATTND_EXPECT_OK((*a)->Run(run));  // still A's, still usable by A
  ATTND_EXPECT_OK((*a)->DeletePlan(plan_a->plan_id));

  // Phase 3: both keep decoding concurrently and correctly after B's attempts.
  std::thread ta2([&] {
    for (int i = 0; i < 6 && status_a.ok(); ++i) status_a = work_a.DecodeStep();
  });
  std::thread tb2([&] {
    for (int i = 0; i < 6 && status_b.ok(); ++i) status_b = work_b.DecodeStep();
  });
  ta2.join();
  tb2.join();
  ATTND_EXPECT_OK(status_a);
  ATTND_EXPECT_OK(status_b);

  // Page accounting of the shared pool: both sessions' pages are in use.
  auto described = (*a)->DescribePool(pool_a->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->free_pages(),
            shape.num_pages - static_cast<int64_t>(work_a.AllPages().size() +
                                                    work_b.AllPages().size()));
  // Closing B releases exactly B's pages; A keeps working.
  const size_t b_pages = work_b.AllPages().size();
  ATTND_ASSERT_OK((*b)->Close());
  described = (*a)->DescribePool(pool_a->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->free_pages(),
            shape.num_pages - static_cast<int64_t>(work_a.AllPages().size()));
  EXPECT_GT(b_pages, 0u);
  ATTND_EXPECT_OK(work_a.DecodeStep());
}

// A shares a prefix with B through ForkPages to B's fork grant: B attends over A's pages plus
// its own, cannot append into the shared pages, and the pages live until both dropped them.
TEST_F(ConcurrentSessionsTest, ForkPagesSharesAPrefixAcrossSessions) {
  ModelShape shape;
  shape.kv_heads = 2;
  shape.qo_heads = 4;
  shape.num_pages = 16;
  auto a = client_->OpenSession("prefix-owner");
  auto b = client_->OpenSession("prefix-user");
  ATTND_ASSERT_OK(a);
  ATTND_ASSERT_OK(b);
  const std::string name = UniqueName("prefix");
  auto pool = (*a)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool);
  const std::string pool_id = pool->pool_id();

  Workload work_a(a->get(), shape, pool_id, /*seed=*/5);
  ATTND_ASSERT_OK(work_a.Prefill({32}));  // two full pages
  const std::vector<int32_t> prefix = work_a.AllPages();
  ASSERT_EQ(prefix.size(), 2u);

  // B's session id is no way to reach it (ids are not credentials) ...
  v1::ForkPagesRequest by_id;
  by_id.set_pool_id(pool_id);
  by_id.mutable_page_ids()->Add(prefix.begin(), prefix.end());
  by_id.set_target_session_id((*b)->session_id());
  EXPECT_TRUE(StatusIs((*a)->ForkPages(by_id), absl::StatusCode::kFailedPrecondition, {"target_grant"}));
  // ... its fork grant is, once it is attached (the grant comes with its attachment).
  auto b_view = (*b)->AttachPool(name);
  ATTND_ASSERT_OK(b_view);
  ASSERT_FALSE(b_view->fork_grant().empty());
  EXPECT_NE(b_view->fork_grant(), pool->fork_grant());
  auto refcounts = (*a)->ForkPages(pool_id, prefix, b_view->fork_grant());
  ATTND_ASSERT_OK(refcounts);
  EXPECT_EQ(*refcounts, (std::vector<int32_t>{2, 2}));

  // B decodes token 32 over the shared prefix plus a page of its own.
  auto own = (*b)->AllocatePages(pool_id, 1);
  ATTND_ASSERT_OK(own);
  client::PlanSpec spec;
  spec.pool_id = pool_id;
  spec.kind = v1::ATTENTION_KIND_DECODE;
  spec.num_qo_heads = shape.qo_heads;
  spec.kv_indptr = {0, 3};
  spec.kv_indices = {prefix[0], prefix[1], own->page_ids[0]};
  spec.kv_last_page_len = {1};
  auto plan = (*b)->CreatePlan(spec);
  ATTND_ASSERT_OK(plan);
  std::mt19937 rng(6);
  const Workload::Sequence& seq = work_a.sequences()[0];
  const ReferenceShape ref{shape.qo_heads, shape.kv_heads, shape.head_dim};
  for (int layer = 0; layer < shape.layers; ++layer) {
    const size_t kv_row = static_cast<size_t>(shape.kv_heads) * shape.head_dim;
    std::vector<float> q = RandomValues(rng, shape.qo_heads * shape.head_dim, shape.q_dtype);
    std::vector<float> k = RandomValues(rng, kv_row, shape.kv_dtype);
    std::vector<float> v = RandomValues(rng, kv_row, shape.kv_dtype);
    client::RunArgs run;
    run.plan_id = plan->plan_id;
    run.layer = layer;
    run.q = *client::MakeTensor(q, {1, shape.qo_heads, shape.head_dim}, shape.q_dtype);
    run.k = *client::MakeTensor(k, {1, shape.kv_heads, shape.head_dim}, shape.kv_dtype);
    run.v = *client::MakeTensor(v, {1, shape.kv_heads, shape.head_dim}, shape.kv_dtype);
    run.options.set_return_lse(true);
    auto out = (*b)->RunAndDecode(run);
    ATTND_ASSERT_OK(out);
    std::vector<float> keys = seq.k[layer], values = seq.v[layer];
    keys.insert(keys.end(), k.begin(), k.end());
    values.insert(values.end(), v.begin(), v.end());
    std::vector<double> o_ref(q.size()), lse_ref(shape.qo_heads);
    ReferenceAttentionRow(ref, q.data(), keys, values, 0, 32, 0, o_ref.data(), lse_ref.data());
    for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(out->o[i], o_ref[i], 5e-3) << i;
    for (int h = 0; h < shape.qo_heads; ++h) ASSERT_NEAR(out->lse[h], lse_ref[h], 5e-3);
  }
  ATTND_ASSERT_OK((*b)->DeletePlan(plan->plan_id));

  // Appending into a shared page (token 31 lives in prefix[1]) is refused.
  spec.kv_indptr = {0, 2};
  spec.kv_indices = {prefix[0], prefix[1]};
  spec.kv_last_page_len = {16};
  auto shared_append = (*b)->CreatePlan(spec);
  if (shared_append.ok()) {
    // Refused at the append instead of at plan time: either is a FAILED_PRECONDITION.
    client::RunArgs run;
    run.plan_id = shared_append->plan_id;
    run.q = *client::MakeTensor(std::vector<float>(shape.qo_heads * shape.head_dim, 0.f),
                                {1, shape.qo_heads, shape.head_dim}, shape.q_dtype);
    run.k = *client::MakeTensor(std::vector<float>(shape.kv_heads * shape.head_dim, 9.f),
                                {1, shape.kv_heads, shape.head_dim}, shape.kv_dtype);
    run.v = run.k;
    EXPECT_TRUE(StatusIs((*b)->Run(run), absl::StatusCode::kFailedPrecondition,
                         {std::to_string(prefix[1])}));
  } else {
    EXPECT_TRUE(StatusIs(shared_append, absl::StatusCode::kFailedPrecondition,
                         {std::to_string(prefix[1])}));
  }
  // A's view of its sequence is unchanged by B's attempts.
  ATTND_EXPECT_OK(work_a.DecodeStep());

  // Pages live while either holds them: A drops its references -> prefix still in use.
  // (A's decode step took a third page of its own, which goes back now.)
  ASSERT_EQ(work_a.AllPages().size(), 3u);
  auto free_after_a = (*a)->FreePages(pool_id, work_a.AllPages());
  ATTND_ASSERT_OK(free_after_a);
  EXPECT_EQ(*free_after_a, shape.num_pages - 3);  // B still holds the prefix and its own page
  auto free_after_b = (*b)->FreePages(pool_id, {prefix[0], prefix[1], own->page_ids[0]});
  ATTND_ASSERT_OK(free_after_b);
  EXPECT_EQ(*free_after_b, shape.num_pages);
}

// Many sessions with their own pools, all at once: a smoke test of the daemon's locking.
TEST_F(ConcurrentSessionsTest, EightSessionsInParallel) {
  constexpr int kSessions = 8;
  std::vector<absl::Status> results(kSessions);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&, i] {
      auto session = client_->OpenSession(absl::StrCat("parallel-", i));
      if (!session.ok()) {
        results[i] = session.status();
        return;
      }
      ModelShape shape;
      shape.layers = 1;
      shape.num_pages = 16;
      auto pool = (*session)->CreatePool(MakePoolSpec(shape, UniqueName("parallel")));
      if (!pool.ok()) {
        results[i] = pool.status();
        return;
      }
      Workload work(session->get(), shape, pool->pool_id(), 1000 + i);
      results[i] = work.Prefill({5 + i, 17});
      for (int step = 0; step < 3 && results[i].ok(); ++step) results[i] = work.DecodeStep();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kSessions; ++i) ATTND_EXPECT_OK(results[i]);
  ExpectServing();
}

}  // namespace
}  // namespace attnd::testing
