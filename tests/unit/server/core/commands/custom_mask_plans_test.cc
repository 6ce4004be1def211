// Custom masks through Core (CreatePlanRequest.custom_mask): the plan's mask decides which keys
// each query row sees (a row that sees one key gets exactly its value), the lower-triangle mask
// equals causal bit for bit, a cascade plan's mask covers its own pages; the plan's host charge
// counts the mask; bad masks refused by name with nothing changed and another session's plan
// unaffected.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/custom_mask.h"
#include "attnd/kernels/float_convert.h"
#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server {
namespace {

using testing::Allocate;
using testing::CreatePool;
using ::testing::HasSubstr;
using testing::MakeCore;
using testing::Open;
using testing::PlanRequest;
using testing::PoolSpec;
using testing::RandomTensor;

constexpr int kKvHeads = 2, kHeadDim = 64, kPageSize = 4, kQoHeads = 8;  // GQA group 4

std::string Bytes(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

std::vector<float> Floats(const v1::Tensor& t) {
  std::vector<float> out(t.inline_data().size() / sizeof(float));
  std::memcpy(out.data(), t.inline_data().data(), out.size() * sizeof(float));
  return out;
}

// The values of an inline float16 tensor.
std::vector<float> Halves(const v1::Tensor& t) {
  std::vector<float> out(t.inline_data().size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = kernels::LoadAsFloat(t.inline_data().data(), kernels::DType::kFloat16, i);
  }
  return out;
}

// One prefill run of `plan_id` (float32 q, float16 k / v appended first), o inline.
v1::RunResponse RunOnce(Core& core, const std::string& session, const std::string& plan_id,
                        const v1::Tensor& q, const v1::Tensor& k, const v1::Tensor& v,
                        bool causal) {
  v1::RunRequest run;
  run.set_plan_id(plan_id);
  run.set_layer(1);
  *run.mutable_q() = q;
  *run.mutable_k() = k;
  *run.mutable_v() = v;
  run.mutable_options()->set_causal(causal);
  run.mutable_options()->set_return_lse(true);
  auto response = core.Run(session, run);
  EXPECT_TRUE(response.ok()) << response.status();
  return response.ok() ? *response : v1::RunResponse();
}

TEST(CustomMaskPlansTest, TheMaskPicksTheKeysEachRowSees) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, s, PoolSpec{.num_kv_heads = kKvHeads, .num_pages = 16});
  const std::vector<int32_t> a = Allocate(*core, s, pool.pool_id(), 2);  // 8 tokens
  const std::vector<int32_t> b = Allocate(*core, s, pool.pool_id(), 2);  // 6 tokens
  // Every token of both requests is a query row appended by the run.
  v1::CreatePlanRequest request = PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, kQoHeads,
                                              {a, b}, {kPageSize, 2}, {8, 6});
  // Row i of a request sees only key pick(i): its o is exactly that key's value.
  const auto pick = [](int request_index, int i) { return (3 * i + request_index) % (i + 1); };
  std::vector<std::vector<uint8_t>> dense = {std::vector<uint8_t>(8 * 8, 0),
                                             std::vector<uint8_t>(6 * 6, 0)};
  for (int r = 0; r < 2; ++r) {
    const int kv = r == 0 ? 8 : 6;
    for (int i = 0; i < kv; ++i) dense[r][static_cast<size_t>(i) * kv + pick(r, i)] = 1;
  }
  request.set_custom_mask(Bytes(kernels::PackCustomMask(dense)));
  auto plan = core->CreatePlan(s, request);
  ASSERT_TRUE(plan.ok()) << plan.status();

  std::mt19937 rng(9);
  const v1::Tensor q = RandomTensor(rng, v1::DTYPE_FLOAT32, {14, kQoHeads, kHeadDim});
  const v1::Tensor k = RandomTensor(rng, v1::DTYPE_FLOAT16, {14, kKvHeads, kHeadDim});
  const v1::Tensor v = RandomTensor(rng, v1::DTYPE_FLOAT16, {14, kKvHeads, kHeadDim});
  const v1::RunResponse out = RunOnce(*core, s, plan->plan_id(), q, k, v, /*causal=*/true);
  // One visible key: o is its value, exactly.
  const std::vector<float> o = Floats(out.o()), vv = Halves(v);
  ASSERT_EQ(o.size(), static_cast<size_t>(14 * kQoHeads * kHeadDim));
  for (int r = 0; r < 2; ++r) {
    const int first = r == 0 ? 0 : 8, rows = r == 0 ? 8 : 6;
    for (int i = 0; i < rows; ++i) {
      const int key = first + pick(r, i);
      for (int h = 0; h < kQoHeads; ++h) {
        for (int d = 0; d < kHeadDim; ++d) {
          const float want = vv[(static_cast<size_t>(key) * kKvHeads + h / 4) * kHeadDim + d];
          ASSERT_EQ(o[((static_cast<size_t>(first + i)) * kQoHeads + h) * kHeadDim + d], want)
              << "request " << r << " row " << i << " head " << h << " dim " << d;
        }
      }
    }
  }
}

TEST(CustomMaskPlansTest, TheLowerTriangleMaskIsCausal) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, s, PoolSpec{.num_kv_heads = kKvHeads, .num_pages = 16});
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 3);  // 11 tokens, 5 new
  const v1::CreatePlanRequest plain =
      PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, kQoHeads, {pages}, {3}, {5});
  v1::CreatePlanRequest masked = plain;
  std::vector<uint8_t> tri(5 * 11, 0);
  for (int i = 0; i < 5; ++i) {
    for (int t = 0; t <= 6 + i; ++t) tri[static_cast<size_t>(i) * 11 + t] = 1;
  }
  masked.set_custom_mask(Bytes(kernels::PackCustomMask({tri})));
  auto p_plain = core->CreatePlan(s, plain);
  auto p_masked = core->CreatePlan(s, masked);
  ASSERT_TRUE(p_plain.ok() && p_masked.ok());
  std::mt19937 rng(4);
  const v1::Tensor q = RandomTensor(rng, v1::DTYPE_FLOAT32, {5, kQoHeads, kHeadDim});
  const v1::Tensor k = RandomTensor(rng, v1::DTYPE_FLOAT16, {5, kKvHeads, kHeadDim});
  const v1::Tensor v = RandomTensor(rng, v1::DTYPE_FLOAT16, {5, kKvHeads, kHeadDim});
  // Both runs append the same 5 tokens and see the same 6 before them.
  const v1::RunResponse causal = RunOnce(*core, s, p_plain->plan_id(), q, k, v, true);
  const v1::RunResponse mask = RunOnce(*core, s, p_masked->plan_id(), q, k, v, false);
  EXPECT_EQ(causal.o().inline_data(), mask.o().inline_data());
  EXPECT_EQ(causal.lse().inline_data(), mask.lse().inline_data());
}

TEST(CustomMaskPlansTest, BadMasksAreRefusedByNameAndChangeNothing) {
  auto core = MakeCore();
  const std::string s = Open(*core), other = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, s, PoolSpec{.num_kv_heads = kKvHeads, .num_pages = 16});
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 3);  // 10 tokens
  // Another session's plan, run before and after the refusals.
  const v1::PoolInfo other_pool =
      CreatePool(*core, other, PoolSpec{.name = "other", .num_kv_heads = kKvHeads});
  const std::vector<int32_t> other_pages = Allocate(*core, other, other_pool.pool_id(), 1);
  auto other_plan =
      core->CreatePlan(other, PlanRequest(other_pool.pool_id(), v1::ATTENTION_KIND_PREFILL,
                                          kQoHeads, {other_pages}, {4}, {4}));
  ASSERT_TRUE(other_plan.ok());
  std::mt19937 rng(2);
  const v1::Tensor oq = RandomTensor(rng, v1::DTYPE_FLOAT32, {4, kQoHeads, kHeadDim});
  const v1::Tensor ok = RandomTensor(rng, v1::DTYPE_FLOAT16, {4, kKvHeads, kHeadDim});
  const v1::Tensor ov = RandomTensor(rng, v1::DTYPE_FLOAT16, {4, kKvHeads, kHeadDim});
  const std::string other_before =
      RunOnce(*core, other, other_plan->plan_id(), oq, ok, ov, true).o().inline_data();

  const uint64_t host_before = core->Stats().host_bytes;
  const int64_t plans_before = core->Stats().plans;
  // 4 query rows on 10 keys: 40 bits = 5 bytes.
  v1::CreatePlanRequest request =
      PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, kQoHeads, {pages}, {2}, {4});
  for (const size_t size : {size_t{4}, size_t{6}, size_t{1}}) {
    request.set_custom_mask(std::string(size, '\xff'));
    EXPECT_STATUS(core->CreatePlan(s, request).status(), kInvalidArgument,
                  HasSubstr(absl::StrCat("custom_mask has ", size, " bytes, expected 5")));
  }
  v1::CreatePlanRequest decode =
      PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, kQoHeads, {pages}, {2}, {});
  decode.set_custom_mask(std::string(2, '\xff'));
  EXPECT_STATUS(core->CreatePlan(s, decode).status(), kInvalidArgument,
                HasSubstr("custom_mask (2 bytes) needs kind=ATTENTION_KIND_PREFILL"));
  EXPECT_EQ(core->Stats().host_bytes, host_before);
  EXPECT_EQ(core->Stats().plans, plans_before);

  // The right size is taken, and charged with its image (4 rows of one word, the offsets, the
  // padding), twice: the spec and the backend's copy.
  request.set_custom_mask(std::string(5, '\xff'));
  auto plan = core->CreatePlan(s, request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const uint64_t with_mask = core->Stats().host_bytes - host_before;
  v1::DeletePlanRequest del;
  del.set_plan_id(plan->plan_id());
  ASSERT_TRUE(core->DeletePlan(s, del).ok());
  request.clear_custom_mask();
  auto plain = core->CreatePlan(s, request);
  ASSERT_TRUE(plain.ok());
  const uint64_t without = core->Stats().host_bytes - host_before;
  EXPECT_EQ(with_mask - without, 2 * ((4 + kernels::kCustomMaskPadWords) * 4 + 2 * 4));

  EXPECT_EQ(RunOnce(*core, other, other_plan->plan_id(), oq, ok, ov, true).o().inline_data(),
            other_before);
}

}  // namespace
}  // namespace attnd::server
