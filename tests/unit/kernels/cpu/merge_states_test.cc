// MergeStates: merging the attention states of two halves of the keys equals attention over all
// keys; empty partitions (lse = -inf) contribute nothing; several states in 16-bit dtypes match a
// naive float64 merge.
#include <cmath>
#include <random>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

using testing::DenseKv;

// Dense ragged K/V ([nnz][heads][dim] float32) of the keys [begin_b, end_b) of each request.
struct RaggedSlice {
  std::vector<float> k, v;
  std::vector<int32_t> indptr = {0};
};

RaggedSlice Slice(const std::vector<DenseKv>& dense, const std::vector<int>& begin,
                  const std::vector<int>& end, int64_t row) {
  RaggedSlice s;
  for (size_t b = 0; b < dense.size(); ++b) {
    for (int t = begin[b]; t < end[b]; ++t) {
      for (int64_t e = 0; e < row; ++e) {
        s.k.push_back(static_cast<float>(dense[b].k[t * row + e]));
        s.v.push_back(static_cast<float>(dense[b].v[t * row + e]));
      }
    }
    s.indptr.push_back(s.indptr.back() + end[b] - begin[b]);
  }
  return s;
}

TEST(MergeStates, TwoHalvesOfTheKeysEqualAllKeys) {
  const int num_kv_heads = 2, group = 4, dim = 64;
  const int num_qo_heads = num_kv_heads * group;
  testing::PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {1, 97, 300, 10, 0};
  spec.qo_lens = {1, 5, 17, 3, 2};
  spec.num_kv_heads = num_kv_heads;
  spec.group = group;
  spec.head_dim = dim;
  spec.kv_dtype = spec.q_dtype = DType::kFloat32;
  testing::PagedProblem p = testing::MakePagedProblem(spec);
  // Split points: everything in the first half, a middle split, and nothing in the first half.
  const std::vector<int> zero = {0, 0, 0, 0, 0};
  const std::vector<int> split = {1, 40, 150, 0, 0};
  const int64_t row = num_kv_heads * dim;
  RaggedSlice first = Slice(p.dense, zero, split, row);
  RaggedSlice second = Slice(p.dense, split, spec.kv_lens, row);

  AttentionOptions options;  // not causal, no RoPE: key positions do not matter
  options.logits_soft_cap = 20.f;
  auto run = [&](const RaggedSlice& s, std::vector<float>& o, std::vector<float>& lse) {
    RaggedAttentionParams params;
    params.qo = p.Params(options, true).qo;
    o.assign(p.qo_nnz * num_qo_heads * dim, NAN);
    lse.assign(p.qo_nnz * num_qo_heads, NAN);
    params.qo.o = o.data();
    params.qo.lse = lse.data();
    params.kv.k = s.k.data();
    params.kv.v = s.v.data();
    params.kv.dtype = DType::kFloat32;
    params.kv.num_kv_heads = num_kv_heads;
    params.kv.head_dim = dim;
    params.kv.stride_n = row;
    params.kv.stride_h = dim;
    params.kv.batch_size = static_cast<int32_t>(s.indptr.size()) - 1;
    params.kv.indptr = s.indptr.data();
    params.options = options;
    ASSERT_TRUE(RaggedAttention(params).ok());
  };
  std::vector<float> o1, lse1, o2, lse2;
  run(first, o1, lse1);
  run(second, o2, lse2);
  EXPECT_EQ(lse1[(1 + 5 + 17) * num_qo_heads], -INFINITY);  // request 3: empty first half

  // v_in [rows][2][heads][dim], s_in [rows][2][heads].
  const int64_t rows = p.qo_nnz;
  std::vector<float> v_in(rows * 2 * num_qo_heads * dim), s_in(rows * 2 * num_qo_heads);
  for (int64_t r = 0; r < rows; ++r) {
    for (int i = 0; i < 2; ++i) {
      const std::vector<float>& o = i ? o2 : o1;
      const std::vector<float>& lse = i ? lse2 : lse1;
      for (int h = 0; h < num_qo_heads; ++h) {
        s_in[(r * 2 + i) * num_qo_heads + h] = lse[r * num_qo_heads + h];
        for (int d = 0; d < dim; ++d) {
          v_in[((r * 2 + i) * num_qo_heads + h) * dim + d] = o[(r * num_qo_heads + h) * dim + d];
        }
      }
    }
  }
  std::vector<uint8_t> v_out(rows * num_qo_heads * dim * sizeof(float));
  testing::Poison(v_out, DType::kFloat32);
  std::vector<float> s_out(rows * num_qo_heads, NAN);
  MergeStatesParams merge;
  merge.v_in = v_in.data();
  merge.s_in = s_in.data();
  merge.v_out = v_out.data();
  merge.s_out = s_out.data();
  merge.dtype = DType::kFloat32;
  merge.num_rows = static_cast<int32_t>(rows);
  merge.num_states = 2;
  merge.num_heads = num_qo_heads;
  merge.head_dim = dim;
  ASSERT_TRUE(MergeStates(merge, 3).ok());

  const auto ref = testing::NaiveAttention(p.dense, p.qo_lens, p.q_values, num_qo_heads,
                                           num_kv_heads, dim, options, {});
  testing::ExpectOutputsClose(v_out, DType::kFloat32, ref.o, "merged halves");
  testing::ExpectLseClose(s_out, ref.lse, "merged halves");
  // Request 4 has no keys at all: both states empty -> o = 0, lse = -inf.
  EXPECT_EQ(s_out[(rows - 1) * num_qo_heads], -INFINITY);
}

TEST(MergeStates, ManyStatesIn16BitDtypesMatchANaiveMerge) {
  std::mt19937 rng(9);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    const int rows = 7, states = 5, heads = 3, dim = 40;
    std::vector<uint8_t> v_in;
    const std::vector<double> v = testing::FillRandom(v_in, dtype, rows * states * heads * dim,
                                                      1.0, rng);
    std::vector<float> s_in(rows * states * heads);
    std::uniform_real_distribution<float> lse_dist(-30.f, 30.f);
    for (float& s : s_in) s = lse_dist(rng);
    for (int h = 0; h < heads; ++h) s_in[(0 * states + 2) * heads + h] = -INFINITY;  // empty
    for (int i = 0; i < states; ++i) s_in[(1 * states + i) * heads + 0] = -INFINITY;  // all empty

    std::vector<double> expected_v(rows * heads * dim, 0.0), expected_s(rows * heads);
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < heads; ++h) {
        double max = -testing::kInfD;
        for (int i = 0; i < states; ++i) max = std::max<double>(max, s_in[(r * states + i) * heads + h]);
        if (max == -testing::kInfD) {
          expected_s[r * heads + h] = max;
          continue;
        }
        double sum = 0;
        for (int i = 0; i < states; ++i) sum += std::exp(s_in[(r * states + i) * heads + h] - max);
        expected_s[r * heads + h] = max + std::log(sum);
        for (int i = 0; i < states; ++i) {
          const double w = std::exp(s_in[(r * states + i) * heads + h] - max) / sum;
          for (int d = 0; d < dim; ++d) {
            expected_v[(r * heads + h) * dim + d] += w * v[((r * states + i) * heads + h) * dim + d];
          }
        }
      }
    }
    std::vector<uint8_t> v_out(rows * heads * dim * DTypeSize(dtype));
    testing::Poison(v_out, dtype);
    std::vector<float> s_out(rows * heads, NAN);
    MergeStatesParams merge;
    merge.v_in = v_in.data();
    merge.s_in = s_in.data();
    merge.v_out = v_out.data();
    merge.s_out = s_out.data();
    merge.dtype = dtype;
    merge.num_rows = rows;
    merge.num_states = states;
    merge.num_heads = heads;
    merge.head_dim = dim;
    ASSERT_TRUE(MergeStates(merge).ok());
    testing::ExpectOutputsClose(v_out, dtype, expected_v, DTypeName(dtype));
    testing::ExpectLseClose(s_out, expected_s, DTypeName(dtype));
    EXPECT_EQ(s_out[1 * heads + 0], -INFINITY);

    merge.s_out = nullptr;  // optional
    EXPECT_TRUE(MergeStates(merge).ok());
    merge.v_in = nullptr;
    EXPECT_EQ(MergeStates(merge).code(), absl::StatusCode::kInvalidArgument);
    merge.v_in = v_in.data();
    merge.dtype = DType::kFloat8E4M3;
    EXPECT_EQ(MergeStates(merge).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace attnd::kernels::cpu
