// Streamed page-table updates over the wire (C++ client, Session stream and unary sessions): one
// decode plan lives across many steps and changes by UpdatePlan deltas (requests grow into new
// pages, one leaves, one joins); every step's Run (K/V appended) equals, bit for bit, the Run of
// a plan created from scratch with the same table; a bad delta is refused naming its field and
// the session carries on with the plan unchanged. fp16 throughout, so that it also runs against
// the CUDA backend (ATTND_IT_BACKEND=cuda), whose updated and fresh plans have the same schedule.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "daemon_fixture.h"

namespace attnd::testing {
namespace {

constexpr int kQoHeads = 4, kKvHeads = 2, kHeadDim = 64, kPageSize = 4, kPages = 48;

class PlanUpdatesTest : public DaemonTest, public ::testing::WithParamInterface<bool> {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }
};

INSTANTIATE_TEST_SUITE_P(Transports, PlanUpdatesTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Unary" : "Stream"; });

struct Request {
  std::vector<int32_t> pages;
  int32_t kv_len = 0;
};

client::PlanSpec SpecOf(const std::string& pool_id, const std::vector<Request>& batch) {
  client::PlanSpec spec;
  spec.pool_id = pool_id;
  spec.kind = v1::ATTENTION_KIND_DECODE;
  spec.num_qo_heads = kQoHeads;
  spec.kv_indptr = {0};
  for (const Request& r : batch) {
    spec.kv_indices.insert(spec.kv_indices.end(), r.pages.begin(), r.pages.end());
    spec.kv_indptr.push_back(static_cast<int32_t>(spec.kv_indices.size()));
    spec.kv_last_page_len.push_back(r.kv_len -
                                    (static_cast<int32_t>(r.pages.size()) - 1) * kPageSize);
  }
  return spec;
}

TEST_P(PlanUpdatesTest, ADecodePlanLivesAcrossStepsAndMatchesFreshPlans) {
  auto session = OpenSessionOn(GetParam(), "plan-updates");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(41);
  client::PoolSpec pool_spec;
  pool_spec.name = UniqueName("updates");
  pool_spec.num_layers = 1;
  pool_spec.num_kv_heads = kKvHeads;
  pool_spec.head_dim = kHeadDim;
  pool_spec.page_size = kPageSize;
  pool_spec.num_pages = kPages;
  auto pool = session->CreatePool(pool_spec);
  ATTND_ASSERT_OK(pool);
  auto grant = session->AllocatePages(pool->pool_id(), kPages);
  ATTND_ASSERT_OK(grant);
  std::vector<int32_t> free = grant->page_ids;
  auto take = [&] {
    const int32_t page = free.back();
    free.pop_back();
    return page;
  };
  // Random K/V in every page first (a prefill plan's append over all of them).
  {
    client::PlanSpec fill = SpecOf(pool->pool_id(), {{free, kPages * kPageSize}});
    fill.kind = v1::ATTENTION_KIND_PREFILL;
    fill.qo_indptr = {0, kPages * kPageSize};
    auto plan = session->CreatePlan(fill);
    ATTND_ASSERT_OK(plan);
    const int64_t rows = kPages * kPageSize;
    ATTND_ASSERT_OK(session->AppendKv(
        plan->plan_id, 0,
        *client::MakeTensor(RandomValues(rng, rows * kKvHeads * kHeadDim, v1::DTYPE_FLOAT16),
                            {rows, kKvHeads, kHeadDim}, v1::DTYPE_FLOAT16),
        *client::MakeTensor(RandomValues(rng, rows * kKvHeads * kHeadDim, v1::DTYPE_FLOAT16),
                            {rows, kKvHeads, kHeadDim}, v1::DTYPE_FLOAT16)));
    ATTND_ASSERT_OK(session->DeletePlan(plan->plan_id));
  }
  std::vector<Request> batch = {{{take()}, 2}, {{take(), take()}, 5}, {{take()}, 4}};
  client::PlanSpec living = SpecOf(pool->pool_id(), batch);
  living.q_dtype = v1::DTYPE_FLOAT16;  // kept by every UpdatePlan (checked after the steps)
  auto plan = session->CreatePlan(living);
  ATTND_ASSERT_OK(plan);
  const std::string plan_id = plan->plan_id;
  for (int step = 0; step < 16; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    std::vector<client::PlanDeltaSpec> deltas;
    std::vector<int32_t> released;
    for (int32_t b = 0; b < static_cast<int32_t>(batch.size()); ++b) {
      if (step == 7 && b == 1) {  // request 1 finishes; its pages may be used again
        deltas.push_back(client::PlanLeave{.request = b});
        released = batch[b].pages;
        continue;
      }
      Request& r = batch[b];
      std::vector<int32_t> new_pages;
      if (r.kv_len % kPageSize == 0) new_pages.push_back(take());
      deltas.push_back(client::PlanGrow{.request = b, .num_tokens = 1, .new_pages = new_pages});
      r.kv_len += 1;
      r.pages.insert(r.pages.end(), new_pages.begin(), new_pages.end());
    }
    if (step == 7) {
      batch.erase(batch.begin() + 1);
      Request joined{{take(), take()}, 6};
      deltas.push_back(client::PlanJoin{.kv_indices = joined.pages, .kv_last_page_len = 2});
      batch.push_back(joined);
    }
    auto updated = session->UpdatePlan(plan_id, deltas);
    ATTND_ASSERT_OK(updated);
    free.insert(free.end(), released.begin(), released.end());
    auto fresh = session->CreatePlan(SpecOf(pool->pool_id(), batch));
    ATTND_ASSERT_OK(fresh);
    EXPECT_EQ(updated->batch_size, fresh->batch_size);
    EXPECT_EQ(updated->kv_tokens, fresh->kv_tokens);

    const int64_t rows = static_cast<int64_t>(batch.size());
    client::RunArgs run;
    run.plan_id = plan_id;
    run.q = *client::MakeTensor(RandomValues(rng, rows * kQoHeads * kHeadDim, v1::DTYPE_FLOAT16),
                                {rows, kQoHeads, kHeadDim}, v1::DTYPE_FLOAT16);
    run.k = *client::MakeTensor(RandomValues(rng, rows * kKvHeads * kHeadDim, v1::DTYPE_FLOAT16),
                                {rows, kKvHeads, kHeadDim}, v1::DTYPE_FLOAT16);
    run.v = *client::MakeTensor(RandomValues(rng, rows * kKvHeads * kHeadDim, v1::DTYPE_FLOAT16),
                                {rows, kKvHeads, kHeadDim}, v1::DTYPE_FLOAT16);
    run.options.set_return_lse(true);
    client::RunArgs again = run;  // the fresh plan reads what this run appends
    again.plan_id = fresh->plan_id;
    again.k.reset();
    again.v.reset();
    auto mine = session->RunAndDecode(run);
    auto theirs = session->RunAndDecode(again);
    ATTND_ASSERT_OK(mine);
    ATTND_ASSERT_OK(theirs);
    EXPECT_EQ(mine->o, theirs->o);
    EXPECT_EQ(mine->lse, theirs->lse);
    ATTND_ASSERT_OK(session->DeletePlan(fresh->plan_id));
  }
  // A bad delta: refused by name over the wire, the plan unchanged, the session carries on.
  auto refused = session->UpdatePlan(
      plan_id,
      {client::PlanGrow{.request = 0, .num_tokens = 4, .new_pages = {kPages + 5}, .qo_len = 0}});
  EXPECT_TRUE(StatusIs(refused, absl::StatusCode::kOutOfRange,
                       {"deltas[0].grow.new_pages[0]=53 is outside 0..47"}));
  auto same = session->UpdatePlan(plan_id, {});
  ATTND_ASSERT_OK(same);
  EXPECT_EQ(same->batch_size, static_cast<int32_t>(batch.size()));
  // The plan's q_dtype survived the updates: a bfloat16 q is refused by name.
  client::RunArgs other;
  other.plan_id = plan_id;
  other.q = *client::MakeTensor(
      RandomValues(rng, batch.size() * kQoHeads * kHeadDim, v1::DTYPE_BFLOAT16),
      {static_cast<int64_t>(batch.size()), kQoHeads, kHeadDim}, v1::DTYPE_BFLOAT16);
  EXPECT_TRUE(
      StatusIs(session->Run(other), absl::StatusCode::kInvalidArgument,
               {"q.dtype=DTYPE_BFLOAT16 but the plan was created with q_dtype=DTYPE_FLOAT16"}));
  ATTND_ASSERT_OK(session->DeletePlan(plan_id));
  ATTND_ASSERT_OK(session->DeletePool(pool->pool_id()));
  ExpectServing();
}

}  // namespace
}  // namespace attnd::testing
