// client::DecodeBatch over the wire (client/cpp/include/attnd/client/decode_batch.h): a decode
// batch kept as one plan across steps. Over 10 steps -- every request growing by one token
// (into a new page at page boundaries), one leaving, one joining -- every step's Run (its new
// K/V appended) equals, bit for bit, the Run of a plan created from scratch with the batch's
// table; a refused step (a join naming a page the session does not hold) changes nothing, its
// pages given back, and the batch goes on; the destructor frees the pages the batch owns.
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attnd/client/decode_batch.h"
#include "daemon_fixture.h"

namespace attnd::testing {
namespace {

constexpr int kQoHeads = 4, kKvHeads = 2, kHeadDim = 64, kPageSize = 4, kPages = 64;

class DecodeBatchTest : public DaemonTest {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }
};

v1::Tensor Random(std::mt19937& rng, int64_t rows, int64_t heads) {
  return *client::MakeTensor(RandomValues(rng, rows * heads * kHeadDim, v1::DTYPE_FLOAT16),
                             {rows, heads, kHeadDim}, v1::DTYPE_FLOAT16);
}

TEST_F(DecodeBatchTest, ABatchLivesAcrossStepsAndMatchesFreshPlans) {
  auto session = OpenSessionOn(/*unary=*/false, "decode-batch");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(7);
  client::PoolSpec pool_spec;
  pool_spec.name = UniqueName("decode-batch");
  pool_spec.num_layers = 1;
  pool_spec.num_kv_heads = kKvHeads;
  pool_spec.head_dim = kHeadDim;
  pool_spec.page_size = kPageSize;
  pool_spec.num_pages = kPages;
  auto pool = session->CreatePool(pool_spec);
  ATTND_ASSERT_OK(pool);
  // Prefilled requests: pages with random K/V through a prefill plan's append.
  auto prefilled = [&](int32_t kv_len) {
    auto grant = session->AllocatePages(pool->pool_id(), (kv_len + kPageSize - 1) / kPageSize);
    EXPECT_TRUE(grant.ok());
    client::PlanSpec fill;
    fill.pool_id = pool->pool_id();
    fill.kind = v1::ATTENTION_KIND_PREFILL;
    fill.num_qo_heads = kQoHeads;
    fill.kv_indptr = {0, static_cast<int32_t>(grant->page_ids.size())};
    fill.kv_indices = grant->page_ids;
    fill.kv_last_page_len = {kv_len -
                             (static_cast<int32_t>(grant->page_ids.size()) - 1) * kPageSize};
    fill.qo_indptr = {0, kv_len};
    auto plan = session->CreatePlan(fill);
    EXPECT_TRUE(plan.ok());
    EXPECT_TRUE(session
                    ->AppendKv(plan->plan_id, 0, Random(rng, kv_len, kKvHeads),
                               Random(rng, kv_len, kKvHeads))
                    .ok());
    EXPECT_TRUE(session->DeletePlan(plan->plan_id).ok());
    return grant->page_ids;
  };
  const int64_t free_at_start = session->DescribePool(pool->pool_id())->free_pages();
  {
    client::PlanSpec fixed;
    fixed.num_qo_heads = kQoHeads;
    client::DecodeBatch batch(*session, pool->pool_id(), kPageSize, fixed);
    auto a = batch.Join(prefilled(3), 3);
    auto b = batch.Join(prefilled(8), 8);  // full pages: a new page at the first step
    auto c = batch.Join(prefilled(5), 5);
    ATTND_ASSERT_OK(a);
    ATTND_ASSERT_OK(b);
    ATTND_ASSERT_OK(c);
    int64_t late = -1;
    for (int step = 0; step < 10; ++step) {
      SCOPED_TRACE(::testing::Message() << "step " << step);
      if (step == 4) ATTND_ASSERT_OK(batch.Leave(*b));
      if (step == 6) {
        auto j = batch.Join(prefilled(6), 6);
        ATTND_ASSERT_OK(j);
        late = *j;
      }
      ATTND_ASSERT_OK(batch.Step());
      const std::vector<int64_t> handles = batch.handles();
      const int64_t rows = static_cast<int64_t>(handles.size());
      client::RunArgs run;
      run.q = Random(rng, rows, kQoHeads);
      run.k = Random(rng, rows, kKvHeads);
      run.v = Random(rng, rows, kKvHeads);
      run.options.set_return_lse(true);
      auto mine = batch.RunAndDecode(run);
      ATTND_ASSERT_OK(mine);
      client::PlanSpec fresh;
      fresh.pool_id = pool->pool_id();
      fresh.kind = v1::ATTENTION_KIND_DECODE;
      fresh.num_qo_heads = kQoHeads;
      fresh.kv_indptr = {0};
      for (int64_t h : handles) {
        const std::vector<int32_t> pages = *batch.pages(h);
        fresh.kv_indices.insert(fresh.kv_indices.end(), pages.begin(), pages.end());
        fresh.kv_indptr.push_back(static_cast<int32_t>(fresh.kv_indices.size()));
        fresh.kv_last_page_len.push_back(*batch.kv_len(h) -
                                         (static_cast<int32_t>(pages.size()) - 1) * kPageSize);
      }
      auto plan = session->CreatePlan(fresh);
      ATTND_ASSERT_OK(plan);
      client::RunArgs again = run;
      again.plan_id = plan->plan_id;
      again.k.reset();
      again.v.reset();
      auto theirs = session->RunAndDecode(again);
      ATTND_ASSERT_OK(theirs);
      EXPECT_EQ(mine->o, theirs->o);
      EXPECT_EQ(mine->lse, theirs->lse);
      ATTND_ASSERT_OK(session->DeletePlan(plan->plan_id));
    }
    EXPECT_EQ(batch.handles(), (std::vector<int64_t>{*a, *c, late}));
    EXPECT_EQ(*batch.kv_len(*a), 3 + 10);
    EXPECT_EQ(*batch.kv_len(late), 6 + 4);

    // A refused step: a join naming a page this session does not hold (one of the pages no one
    // was given). Nothing changes; the pages the step took are given back.
    const int64_t free_before = session->DescribePool(pool->pool_id())->free_pages();
    const std::vector<int32_t> a_pages = *batch.pages(*a);
    auto bad = batch.Join({kPages - 1}, 2, /*owns_pages=*/false);
    ATTND_ASSERT_OK(bad);
    const absl::Status refused = batch.Step();
    EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
    EXPECT_EQ(*batch.kv_len(*a), 13);
    EXPECT_EQ(*batch.pages(*a), a_pages);
    EXPECT_EQ(session->DescribePool(pool->pool_id())->free_pages(), free_before);
    ATTND_ASSERT_OK(batch.Leave(*bad));
    ATTND_ASSERT_OK(batch.Step());
    EXPECT_EQ(*batch.kv_len(*a), 14);
    EXPECT_EQ(batch.Join({0}, 9).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(session->DescribePool(pool->pool_id())->free_pages(), free_at_start);
  ATTND_ASSERT_OK(session->DeletePool(pool->pool_id()));
  ExpectServing();
}

}  // namespace
}  // namespace attnd::testing
