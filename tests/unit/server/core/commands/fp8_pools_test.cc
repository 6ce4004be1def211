// FP8 KV pools through Core (CreatePoolRequest.kv_dtype DTYPE_FLOAT8_E4M3 / _E5M2 with
// k_scale / v_scale): the scales are checked and expanded to one per layer and KV head
// (PoolInfo), and a run reads V as the stored fp8 value times its layer's and head's scale (a
// row that sees one key gets exactly float(v8) * v_scale); rows given as float16 are quantized
// with the layer's scales on the way in; bad scales, and rows of a type the pool does not take,
// are refused by name with nothing created or written.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

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
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::MakeCore;
using testing::Open;
using testing::PlanRequest;
using testing::PoolRequest;
using testing::PoolSpec;

constexpr int kLayers = 2, kKvHeads = 2, kHeadDim = 64, kQoHeads = 4;

v1::CreatePoolRequest Fp8Pool(v1::DType dtype, const std::vector<float>& k_scale,
                              const std::vector<float>& v_scale) {
  v1::CreatePoolRequest request = PoolRequest(PoolSpec{
      .num_layers = kLayers, .num_kv_heads = kKvHeads, .head_dim = kHeadDim, .kv_dtype = dtype});
  request.mutable_k_scale()->Add(k_scale.begin(), k_scale.end());
  request.mutable_v_scale()->Add(v_scale.begin(), v_scale.end());
  return request;
}

// An inline fp8 tensor of `shape`: element i is code codes(i) (never NaN).
template <typename Codes>
v1::Tensor Fp8Tensor(v1::DType dtype, const std::vector<int64_t>& shape, Codes codes) {
  v1::Tensor t;
  t.set_dtype(dtype);
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  std::string bytes(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(codes(i));
  t.set_inline_data(bytes);
  return t;
}

TEST(Fp8PoolsTest, ScalesAreExpandedPerLayerAndHead) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  auto pool = core->CreatePool(s, Fp8Pool(v1::DTYPE_FLOAT8_E4M3, {0.5f, 2.f}, {}));
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_THAT(pool->pool().k_scale(), ElementsAre(0.5f, 0.5f, 2.f, 2.f));  // per layer
  EXPECT_THAT(pool->pool().v_scale(), ElementsAre(1.f, 1.f, 1.f, 1.f));    // the other: 1
  auto per_head = core->CreatePool(s, [] {
    v1::CreatePoolRequest r = Fp8Pool(v1::DTYPE_FLOAT8_E5M2, {}, {1.f, 2.f, 3.f, 4.f});
    r.set_name("per-head");
    return r;
  }());
  ASSERT_TRUE(per_head.ok()) << per_head.status();
  EXPECT_THAT(per_head->pool().v_scale(), ElementsAre(1.f, 2.f, 3.f, 4.f));
  EXPECT_EQ(per_head->pool().kv_dtype(), v1::DTYPE_FLOAT8_E5M2);
  // No scales: none reported (every scale 1).
  v1::CreatePoolRequest plain = Fp8Pool(v1::DTYPE_FLOAT8_E4M3, {}, {});
  plain.set_name("plain");
  auto unscaled = core->CreatePool(s, plain);
  ASSERT_TRUE(unscaled.ok());
  EXPECT_TRUE(unscaled->pool().k_scale().empty());
}

TEST(Fp8PoolsTest, BadScalesAreRefusedByName) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const size_t pools_before = core->Stats().pools.size();
  EXPECT_STATUS(
      core->CreatePool(s, Fp8Pool(v1::DTYPE_FLOAT16, {1.f, 1.f}, {})).status(), kInvalidArgument,
      HasSubstr("k_scale has 2 values; scales are for fp8 pools (kv_dtype=DTYPE_FLOAT16)"));
  EXPECT_STATUS(core->CreatePool(s, Fp8Pool(v1::DTYPE_FLOAT8_E4M3, {}, {1.f, 1.f, 1.f})).status(),
                kInvalidArgument,
                HasSubstr("v_scale has 3 values, expected num_layers (2) or num_layers * "
                          "num_kv_heads (4)"));
  EXPECT_STATUS(core->CreatePool(s, Fp8Pool(v1::DTYPE_FLOAT8_E4M3, {1.f, -1.f}, {})).status(),
                kInvalidArgument, HasSubstr("k_scale[1]=-1 must be finite and > 0"));
  EXPECT_STATUS(
      core->CreatePool(s, Fp8Pool(v1::DTYPE_FLOAT8_E5M2, {}, {1.f, NAN, 1.f, 1.f})).status(),
      kInvalidArgument, HasSubstr("v_scale[1]=nan must be finite and > 0"));
  EXPECT_EQ(core->Stats().pools.size(), pools_before);
}

TEST(Fp8PoolsTest, RunsReadTheStoredValueTimesItsScale) {
  for (const v1::DType dtype : {v1::DTYPE_FLOAT8_E4M3, v1::DTYPE_FLOAT8_E5M2}) {
    const kernels::DType kd =
        dtype == v1::DTYPE_FLOAT8_E4M3 ? kernels::DType::kFloat8E4M3 : kernels::DType::kFloat8E5M2;
    auto core = MakeCore();
    const std::string s = Open(*core);
    const std::vector<float> v_scale = {0.5f, 4.f, 0.25f, 3.f};  // [layer][head]
    auto pool = core->CreatePool(s, Fp8Pool(dtype, {2.f, 0.125f}, v_scale));
    ASSERT_TRUE(pool.ok()) << pool.status();
    const std::vector<int32_t> pages = Allocate(*core, s, pool->pool().pool_id(), 2);  // 8 tokens
    v1::CreatePlanRequest request = PlanRequest(pool->pool().pool_id(), v1::ATTENTION_KIND_PREFILL,
                                                kQoHeads, {pages}, {4}, {8});
    // Row i sees only key (5 * i) % (i + 1): its o is that key's V, dequantized.
    std::vector<uint8_t> mask(8 * 8, 0);
    for (int i = 0; i < 8; ++i) mask[static_cast<size_t>(i) * 8 + (5 * i) % (i + 1)] = 1;
    const std::vector<uint8_t> packed = kernels::PackCustomMask({mask});
    request.set_custom_mask(std::string(packed.begin(), packed.end()));
    auto plan = core->CreatePlan(s, request);
    ASSERT_TRUE(plan.ok()) << plan.status();
    // Codes 0x00 .. 0x6f: finite in both formats (no NaN, no Inf), both signs.
    const auto code = [](int64_t i) {
      return static_cast<uint8_t>((i * 37) % 0x70 | (i % 2) << 7);
    };
    v1::RunRequest run;
    run.set_plan_id(plan->plan_id());
    run.set_layer(1);
    *run.mutable_q() = testing::HalfTensor({8, kQoHeads, kHeadDim}, '\x11');
    run.mutable_q()->set_dtype(v1::DTYPE_FLOAT16);
    *run.mutable_k() =
        Fp8Tensor(dtype, {8, kKvHeads, kHeadDim}, [&](int64_t i) { return code(i + 3); });
    *run.mutable_v() = Fp8Tensor(dtype, {8, kKvHeads, kHeadDim}, code);
    auto out = core->Run(s, run);
    ASSERT_TRUE(out.ok()) << out.status();
    const std::string& o = out->o().inline_data();  // float16
    ASSERT_EQ(o.size(), static_cast<size_t>(8 * kQoHeads * kHeadDim * 2));
    for (int i = 0; i < 8; ++i) {
      const int key = (5 * i) % (i + 1);
      for (int h = 0; h < kQoHeads; ++h) {
        const int kvh = h / (kQoHeads / kKvHeads);
        for (int d = 0; d < kHeadDim; ++d) {
          const int64_t v_index = (static_cast<int64_t>(key) * kKvHeads + kvh) * kHeadDim + d;
          const uint8_t v8 = code(v_index);
          const float want = kernels::RoundTo(kernels::DType::kFloat16,
                                              kernels::LoadAsFloat(&v8, kd, 0) * v_scale[2 + kvh]);
          const float got =
              kernels::LoadAsFloat(o.data(), kernels::DType::kFloat16,
                                   (static_cast<size_t>(i) * kQoHeads + h) * kHeadDim + d);
          ASSERT_EQ(got, want) << kernels::DTypeName(kd) << " row " << i << " head " << h << " dim "
                               << d;
        }
      }
    }
  }
}

// An inline float16 tensor of `shape` whose element i is value(i) (rounded to float16).
template <typename Values>
v1::Tensor HalfValues(const std::vector<int64_t>& shape, Values value) {
  v1::Tensor t = testing::HalfTensor(shape);
  std::string& bytes = *t.mutable_inline_data();
  for (size_t i = 0; i < bytes.size() / 2; ++i) {
    kernels::StoreFromFloat(bytes.data(), kernels::DType::kFloat16, i,
                            value(static_cast<int64_t>(i)));
  }
  return t;
}

// k and v given in float16 on an fp8 pool: stored as fp8(x / scale) with the layer's and head's
// scale, so a row that sees one key gets exactly float(fp8(v / v_scale)) * v_scale.
TEST(Fp8PoolsTest, RunsQuantizeFloat16RowsWithTheLayersScales) {
  for (const v1::DType dtype : {v1::DTYPE_FLOAT8_E4M3, v1::DTYPE_FLOAT8_E5M2}) {
    const kernels::DType kd =
        dtype == v1::DTYPE_FLOAT8_E4M3 ? kernels::DType::kFloat8E4M3 : kernels::DType::kFloat8E5M2;
    auto core = MakeCore();
    const std::string s = Open(*core);
    const std::vector<float> v_scale = {0.5f, 4.f, 0.25f, 3.f};  // [layer][head]
    auto pool = core->CreatePool(s, Fp8Pool(dtype, {2.f, 0.125f}, v_scale));
    ASSERT_TRUE(pool.ok()) << pool.status();
    const std::vector<int32_t> pages = Allocate(*core, s, pool->pool().pool_id(), 2);
    v1::CreatePlanRequest request = PlanRequest(pool->pool().pool_id(), v1::ATTENTION_KIND_PREFILL,
                                                kQoHeads, {pages}, {4}, {8});
    std::vector<uint8_t> mask(8 * 8, 0);  // row i sees key i only
    for (int i = 0; i < 8; ++i) mask[static_cast<size_t>(i) * 8 + i] = 1;
    const std::vector<uint8_t> packed = kernels::PackCustomMask({mask});
    request.set_custom_mask(std::string(packed.begin(), packed.end()));
    auto plan = core->CreatePlan(s, request);
    ASSERT_TRUE(plan.ok()) << plan.status();
    // Values over many magnitudes, both signs; a few beyond the format's range (saturated).
    const auto value = [](int64_t i) {
      return std::ldexp(static_cast<float>((i * 29) % 17) - 8.f, static_cast<int>(i % 23) - 14);
    };
    v1::RunRequest run;
    run.set_plan_id(plan->plan_id());
    run.set_layer(1);
    *run.mutable_q() = testing::HalfTensor({8, kQoHeads, kHeadDim}, '\x11');
    run.mutable_q()->set_dtype(v1::DTYPE_FLOAT16);
    *run.mutable_k() = HalfValues({8, kKvHeads, kHeadDim}, [&](int64_t i) { return value(i + 5); });
    *run.mutable_v() = HalfValues({8, kKvHeads, kHeadDim}, value);
    auto out = core->Run(s, run);
    ASSERT_TRUE(out.ok()) << out.status();
    const std::string& o = out->o().inline_data();
    for (int i = 0; i < 8; ++i) {
      for (int h = 0; h < kQoHeads; ++h) {
        const int kvh = h / (kQoHeads / kKvHeads);
        for (int d = 0; d < kHeadDim; ++d) {
          const int64_t v_index = (static_cast<int64_t>(i) * kKvHeads + kvh) * kHeadDim + d;
          const float vs = v_scale[2 + kvh];
          const float x = kernels::RoundTo(kernels::DType::kFloat16, value(v_index));
          uint8_t v8 = 0;
          kernels::StoreFromFloat(&v8, kd, 0, x / vs);
          const float want =
              kernels::RoundTo(kernels::DType::kFloat16, kernels::LoadAsFloat(&v8, kd, 0) * vs);
          const float got =
              kernels::LoadAsFloat(o.data(), kernels::DType::kFloat16,
                                   (static_cast<size_t>(i) * kQoHeads + h) * kHeadDim + d);
          ASSERT_EQ(got, want) << kernels::DTypeName(kd) << " row " << i << " head " << h << " dim "
                               << d;
        }
      }
    }
  }
}

// CreatePlanRequest.q_dtype: a query dtype only; set, every Run's q must have it (refused by
// name otherwise, the plan intact: a Run with it then succeeds).
TEST(Fp8PoolsTest, APlansQDtypeIsCheckedAtCreatePlanAndAtEachRun) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  auto pool = core->CreatePool(s, Fp8Pool(v1::DTYPE_FLOAT8_E4M3, {}, {}));
  ASSERT_TRUE(pool.ok()) << pool.status();
  const std::vector<int32_t> pages = Allocate(*core, s, pool->pool().pool_id(), 1);
  v1::CreatePlanRequest request =
      PlanRequest(pool->pool().pool_id(), v1::ATTENTION_KIND_DECODE, kQoHeads, {pages}, {3}, {1});
  request.set_q_dtype(v1::DTYPE_FLOAT8_E5M2);
  EXPECT_STATUS(core->CreatePlan(s, request).status(), kInvalidArgument,
                HasSubstr("q_dtype=DTYPE_FLOAT8_E5M2 is not a query dtype"));
  request.set_q_dtype(v1::DTYPE_FLOAT16);
  auto plan = core->CreatePlan(s, request);
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  run.set_layer(0);
  *run.mutable_q() = testing::HalfTensor({1, kQoHeads, kHeadDim}, '\x11');
  run.mutable_q()->set_dtype(v1::DTYPE_BFLOAT16);
  EXPECT_STATUS(core->Run(s, run).status(), kInvalidArgument,
                HasSubstr("q.dtype=DTYPE_BFLOAT16 but the plan was created with "
                          "q_dtype=DTYPE_FLOAT16"));
  run.mutable_q()->set_dtype(v1::DTYPE_FLOAT16);
  EXPECT_TRUE(core->Run(s, run).ok());
}

// Rows the pool does not take are refused by name before anything is written: float16 k on a
// bfloat16 pool, v of another type than k on an fp8 pool, float8_e5m2 rows on an e4m3 pool.
TEST(Fp8PoolsTest, RowsOfATypeThePoolDoesNotTakeAreRefusedByName) {
  struct Case {
    v1::DType pool, k, v;
    const char* message;
  };
  for (const Case& c : {Case{v1::DTYPE_BFLOAT16, v1::DTYPE_FLOAT16, v1::DTYPE_FLOAT16,
                             "k.dtype=DTYPE_FLOAT16, expected DTYPE_BFLOAT16"},
                        Case{v1::DTYPE_FLOAT8_E4M3, v1::DTYPE_FLOAT16, v1::DTYPE_BFLOAT16,
                             "v.dtype=DTYPE_BFLOAT16, expected DTYPE_FLOAT16"},
                        Case{v1::DTYPE_FLOAT8_E4M3, v1::DTYPE_FLOAT8_E5M2, v1::DTYPE_FLOAT8_E5M2,
                             "k.dtype=DTYPE_FLOAT8_E5M2, expected DTYPE_FLOAT8_E4M3"}}) {
    auto core = MakeCore();
    const std::string s = Open(*core);
    v1::CreatePoolRequest pool_request = PoolRequest(PoolSpec{
        .num_layers = kLayers, .num_kv_heads = kKvHeads, .head_dim = kHeadDim, .kv_dtype = c.pool});
    auto pool = core->CreatePool(s, pool_request);
    ASSERT_TRUE(pool.ok()) << pool.status();
    const std::vector<int32_t> pages = Allocate(*core, s, pool->pool().pool_id(), 1);
    auto plan = core->CreatePlan(s, PlanRequest(pool->pool().pool_id(), v1::ATTENTION_KIND_DECODE,
                                                kQoHeads, {pages}, {3}, {1}));
    ASSERT_TRUE(plan.ok()) << plan.status();
    const auto rows = [&](v1::DType dtype) {
      v1::Tensor t = testing::HalfTensor({1, kKvHeads, kHeadDim}, '\x22');
      t.set_dtype(dtype);
      if (dtype == v1::DTYPE_FLOAT8_E4M3 || dtype == v1::DTYPE_FLOAT8_E5M2) {
        t.set_inline_data(std::string(static_cast<size_t>(kKvHeads) * kHeadDim, '\x22'));
      }
      return t;
    };
    v1::AppendKvRequest append;
    append.set_plan_id(plan->plan_id());
    append.set_layer(0);
    *append.mutable_k() = rows(c.k);
    *append.mutable_v() = rows(c.v);
    EXPECT_STATUS(core->AppendKv(s, append).status(), kInvalidArgument, HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace attnd::server
