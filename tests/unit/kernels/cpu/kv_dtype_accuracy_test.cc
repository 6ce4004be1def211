// How far attention over a KV cache stored in each K/V dtype is from float64 attention over the
// unrounded values (issue 13: "accuracy against float64 per dtype"): one decode batch (B = 8,
// kv_len 500 .. 2048, 32 query / 8 KV heads, head_dim 128, K and V uniform in [-1, 1], q in
// [-2, 2]), the cache rounded to fp32 / fp16 / bf16, or quantized to e4m3 / e5m2 with per-KV-head
// scales amax / max_finite (the usual recipe) as the append path quantizes (fp8(x / scale),
// AppendKvParams::new_dtype), the CPU reference's output (fp32) against the float64 reference. The
// GPU kernels match the CPU reference within the GPU tests' tolerances (tests/gpu/decode_test.cc),
// so these are the storage formats' own errors. Prints the table (docs/BENCHMARKS.md run 9 quotes
// it) and checks each error against a bound a few times above it.
#include <cmath>
#include <cstdio>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/float_convert.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

using testing::MakePagedProblem;
using testing::NaiveAttention;
using testing::PagedProblem;
using testing::PagedProblemSpec;

struct Error {
  double rel_l2 = 0, max_abs = 0;
};

Error Measure(DType storage) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {500, 2048, 900, 1500, 1024, 600, 2000, 1250};
  spec.num_kv_heads = 8;
  spec.group = 4;
  spec.head_dim = 128;
  spec.kv_dtype = DType::kFloat32;  // the unrounded values; re-stored below
  spec.q_dtype = DType::kFloat32;
  spec.seed = 9;
  PagedProblem p = MakePagedProblem(spec);
  const PagedKV f32 = p.View();
  const int64_t elems = static_cast<int64_t>(p.pool.size() / sizeof(float));
  const auto head_of = [&](int64_t i) { return (i % f32.token_stride) / spec.head_dim; };
  const auto is_v = [&](int64_t i) { return i % f32.page_stride >= f32.kv_stride; };

  // FP8: per-KV-head scales amax / max_finite over the cache's finite values.
  std::vector<float> k_scale(spec.num_kv_heads, 1.f), v_scale(spec.num_kv_heads, 1.f);
  if (IsFp8(storage)) {
    const double max_finite = storage == DType::kFloat8E4M3 ? 448.0 : 57344.0;
    std::vector<double> k_amax(spec.num_kv_heads, 0), v_amax(spec.num_kv_heads, 0);
    for (int64_t i = 0; i < elems; ++i) {
      const double x = LoadAsFloat(p.pool.data(), DType::kFloat32, i);
      if (!std::isfinite(x)) continue;  // the unused pages' NaN
      double& amax = (is_v(i) ? v_amax : k_amax)[head_of(i)];
      amax = std::max(amax, std::fabs(x));
    }
    for (int h = 0; h < spec.num_kv_heads; ++h) {
      k_scale[h] = static_cast<float>(k_amax[h] / max_finite);
      v_scale[h] = static_cast<float>(v_amax[h] / max_finite);
    }
  }
  // The cache in `storage`: every element stored as the append path stores it (fp8(x / scale);
  // rounded for 16-bit).
  std::vector<uint8_t> pool(static_cast<size_t>(elems) * DTypeSize(storage));
  for (int64_t i = 0; i < elems; ++i) {
    const float x = LoadAsFloat(p.pool.data(), DType::kFloat32, i);
    const float scale = !IsFp8(storage) ? 1.f : (is_v(i) ? v_scale : k_scale)[head_of(i)];
    StoreFromFloat(pool.data(), storage, i, x / scale);
  }
  AttentionOptions options;
  PagedAttentionParams params = p.Params(options, /*with_lse=*/false);
  params.kv.data = pool.data();
  params.kv.dtype = storage;
  if (IsFp8(storage)) {
    params.kv.k_scale = k_scale.data();
    params.kv.v_scale = v_scale.data();
  }
  p.PoisonOutputs();
  EXPECT_TRUE(PagedAttention(params).ok());
  const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, spec.num_kv_heads,
                                  spec.head_dim, options, {});
  Error e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.o.size(); ++i) {
    const double got = LoadAsFloat(p.o.data(), DType::kFloat32, i);
    num += (got - ref.o[i]) * (got - ref.o[i]);
    den += ref.o[i] * ref.o[i];
    e.max_abs = std::max(e.max_abs, std::fabs(got - ref.o[i]));
  }
  e.rel_l2 = std::sqrt(num / den);
  return e;
}

TEST(KvDtypeAccuracy, AgainstFloat64PerStorageType) {
  struct Row {
    DType dtype;
    double bound;  // rel L2 bound, a few times the measured error
  };
  std::printf("K/V storage  rel L2 of o vs float64  max |o - ref|\n");
  for (const Row& r :
       {Row{DType::kFloat32, 1e-5}, Row{DType::kFloat16, 1e-3}, Row{DType::kBFloat16, 6e-3},
        Row{DType::kFloat8E4M3, 0.12}, Row{DType::kFloat8E5M2, 0.25}}) {
    const Error e = Measure(r.dtype);
    std::printf("%-12s %22.3e  %13.3e\n", DTypeName(r.dtype), e.rel_l2, e.max_abs);
    EXPECT_LE(e.rel_l2, r.bound) << DTypeName(r.dtype);
    EXPECT_GT(e.rel_l2, 0.0) << DTypeName(r.dtype) << ": no rounding at all is suspicious";
  }
}

}  // namespace
}  // namespace attnd::kernels::cpu
