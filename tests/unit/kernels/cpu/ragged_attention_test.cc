// RaggedAttention: equal (bit for bit) to PagedAttention on the same data, correct against the
// naive reference, and honest about strides (K and V interleaved in one packed buffer).
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

using testing::DenseKv;
using testing::MakePagedProblem;
using testing::PagedProblem;
using testing::PagedProblemSpec;

// K and V of a batch packed per token as [K heads][V heads] (stride_n = 2 * heads * dim).
struct PackedRagged {
  std::vector<uint8_t> buffer;
  std::vector<int32_t> indptr;
  RaggedKV View(DType dtype, int num_kv_heads, int head_dim) const {
    RaggedKV kv;
    kv.k = buffer.data();
    kv.v = buffer.data() + static_cast<size_t>(num_kv_heads) * head_dim * DTypeSize(dtype);
    kv.dtype = dtype;
    kv.num_kv_heads = num_kv_heads;
    kv.head_dim = head_dim;
    kv.stride_n = 2LL * num_kv_heads * head_dim;
    kv.stride_h = head_dim;
    kv.batch_size = static_cast<int32_t>(indptr.size()) - 1;
    kv.indptr = indptr.data();
    return kv;
  }
};

PackedRagged Pack(const std::vector<DenseKv>& dense, DType dtype, int num_kv_heads, int head_dim) {
  PackedRagged r;
  r.indptr.push_back(0);
  for (const DenseKv& d : dense) r.indptr.push_back(r.indptr.back() + d.kv_len);
  const int64_t row = 2LL * num_kv_heads * head_dim;
  r.buffer.assign(r.indptr.back() * row * DTypeSize(dtype), 0);
  for (size_t b = 0; b < dense.size(); ++b) {
    for (int64_t t = 0; t < dense[b].kv_len; ++t) {
      for (int64_t e = 0; e < num_kv_heads * head_dim; ++e) {
        const int64_t base = (r.indptr[b] + t) * row;
        StoreFromFloat(r.buffer.data(), dtype, base + e,
                       static_cast<float>(dense[b].k[t * num_kv_heads * head_dim + e]));
        StoreFromFloat(r.buffer.data(), dtype, base + num_kv_heads * head_dim + e,
                       static_cast<float>(dense[b].v[t * num_kv_heads * head_dim + e]));
      }
    }
  }
  return r;
}

TEST(RaggedAttention, EqualsPagedAttentionBitForBitAndMatchesNaive) {
  std::mt19937 rng(5);
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (bool causal : {false, true}) {
      PagedProblemSpec spec;
      spec.decode = false;
      spec.kv_lens = {1, 97, 200, 33};
      spec.qo_lens = {1, 97, 50, 1};
      spec.group = 4;
      spec.kv_dtype = spec.q_dtype = dtype;
      spec.seed = rng();
      // Sinks on every other case: [num_qo_heads], around the logits' magnitude.
      std::vector<float> sinks(spec.num_kv_heads * spec.group);
      for (size_t h = 0; h < sinks.size(); ++h) sinks[h] = 0.7f * static_cast<float>(h) - 2.f;
      AttentionOptions options;
      options.causal = causal;
      options.pos_encoding = PosEncoding::kRopeLlama;
      options.window_left = causal ? 40 : -1;
      if (causal == (dtype == DType::kFloat32)) options.sinks = sinks.data();
      const std::string what = testing::DescribeSpec(spec, options);
      SCOPED_TRACE(what);

      PagedProblem p = MakePagedProblem(spec);
      p.PoisonOutputs();
      ASSERT_TRUE(PagedAttention(p.Params(options, true)).ok());
      const std::vector<uint8_t> paged_o = p.o;
      const std::vector<float> paged_lse = p.lse;

      const PackedRagged packed = Pack(p.dense, dtype, spec.num_kv_heads, spec.head_dim);
      RaggedAttentionParams params;
      params.qo = p.Params(options, true).qo;
      params.kv = packed.View(dtype, spec.num_kv_heads, spec.head_dim);
      params.options = options;
      p.PoisonOutputs();
      ASSERT_TRUE(RaggedAttention(params, 2).ok());
      EXPECT_EQ(p.o, paged_o);
      EXPECT_EQ(0, std::memcmp(p.lse.data(), paged_lse.data(), paged_lse.size() * sizeof(float)));

      const auto ref = testing::NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads,
                                               spec.num_kv_heads, spec.head_dim, options, {});
      testing::ExpectOutputsClose(p.o, dtype, ref.o, what);
      testing::ExpectLseClose(p.lse, ref.lse, what);
    }
  }
}

TEST(RaggedAttention, EmptyRequestAndValidation) {
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {0, 5};
  spec.qo_lens = {2, 5};
  PagedProblem p = MakePagedProblem(spec);
  const PackedRagged packed = Pack(p.dense, spec.kv_dtype, spec.num_kv_heads, spec.head_dim);
  RaggedAttentionParams params;
  params.qo = p.Params({}, true).qo;
  params.kv = packed.View(spec.kv_dtype, spec.num_kv_heads, spec.head_dim);
  p.PoisonOutputs();
  ASSERT_TRUE(RaggedAttention(params).ok());
  for (int i = 0; i < 2 * p.num_qo_heads; ++i) EXPECT_EQ(p.lse[i], -INFINITY);
  const auto ref = testing::NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads,
                                           spec.num_kv_heads, spec.head_dim, {}, {});
  testing::ExpectOutputsClose(p.o, spec.q_dtype, ref.o, "ragged with an empty request");

  RaggedAttentionParams bad = params;
  bad.kv.stride_n = 0;
  EXPECT_EQ(RaggedAttention(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = params;
  bad.kv.k = nullptr;
  EXPECT_EQ(RaggedAttention(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = params;
  std::vector<int32_t> indptr = {0, 3, 2};
  bad.kv.indptr = indptr.data();
  EXPECT_EQ(RaggedAttention(bad).code(), absl::StatusCode::kInvalidArgument);
}

// The window semantics of the wire API (FlashInfer's): window_left bounds only from below (a row
// at position p sees keys >= p - window_left); the upper bound comes from `causal` (p), or is the
// end of the sequence without it; window_left = -1 is no window. Equal logits (q = k = 0) and
// one-hot values make o the indicator of the visible keys divided by their count.
TEST(RaggedAttention, WindowLeftBoundsOnlyFromBelow) {
  constexpr int kKeys = 10, kDim = 16;
  std::vector<float> k(kKeys * kDim, 0.f), v(kKeys * kDim, 0.f), q(3 * kDim, 0.f);
  for (int t = 0; t < kKeys; ++t) v[t * kDim + t] = 1.f;
  const std::vector<int32_t> kv_indptr = {0, kKeys}, qo_indptr = {0, 3};
  RaggedAttentionParams p;
  p.kv.k = k.data();
  p.kv.v = v.data();
  p.kv.dtype = DType::kFloat32;
  p.kv.num_kv_heads = 1;
  p.kv.head_dim = kDim;
  p.kv.stride_n = kDim;
  p.kv.stride_h = kDim;
  p.kv.batch_size = 1;
  p.kv.indptr = kv_indptr.data();
  p.qo.q = q.data();
  p.qo.q_dtype = DType::kFloat32;
  p.qo.num_qo_heads = 1;
  p.qo.batch_size = 1;
  p.qo.qo_indptr = qo_indptr.data();  // 3 rows at positions 7, 8, 9
  struct Expect {
    bool causal;
    int window_left;
    int first, last;  // visible keys of the row at position 7
  };
  for (const Expect& e : {Expect{false, 2, 5, 9}, Expect{true, 2, 5, 7}, Expect{false, -1, 0, 9},
                          Expect{true, -1, 0, 7}, Expect{false, 0, 7, 9}, Expect{true, 0, 7, 7}}) {
    std::vector<float> o(3 * kDim, -1.f), lse(3, 0.f);
    p.qo.o = o.data();
    p.qo.lse = lse.data();
    p.options.causal = e.causal;
    p.options.window_left = e.window_left;
    ASSERT_TRUE(RaggedAttention(p).ok());
    const float share = 1.f / static_cast<float>(e.last - e.first + 1);
    for (int t = 0; t < kDim; ++t) {
      const float want = t >= e.first && t <= e.last ? share : 0.f;
      EXPECT_NEAR(o[t], want, 1e-6f)
          << "causal " << e.causal << " window " << e.window_left << " key " << t;
    }
    EXPECT_NEAR(lse[0], std::log(static_cast<float>(e.last - e.first + 1)), 1e-5f);
  }
}

}  // namespace
}  // namespace attnd::kernels::cpu
