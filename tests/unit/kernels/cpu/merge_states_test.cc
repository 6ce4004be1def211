// MergeStates: merging the attention states of two halves of the keys equals attention over all
// keys; empty partitions (lse = -inf) contribute nothing; several states in 16-bit dtypes match a
// naive float64 merge; the pair form (MergeState) and in-place merges match it too; no states at
// all give v = 0, s = -inf.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "gtest/gtest.h"
#include "merge_reference.h"

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
    const std::vector<double> v =
        testing::FillRandom(v_in, dtype, rows * states * heads * dim, 1.0, rng);
    std::vector<float> s_in(rows * states * heads);
    std::uniform_real_distribution<float> lse_dist(-30.f, 30.f);
    for (float& s : s_in) s = lse_dist(rng);
    for (int h = 0; h < heads; ++h) s_in[(0 * states + 2) * heads + h] = -INFINITY;   // empty
    for (int i = 0; i < states; ++i) s_in[(1 * states + i) * heads + 0] = -INFINITY;  // all empty

    std::vector<double> expected_v(rows * heads * dim, 0.0), expected_s(rows * heads);
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < heads; ++h) {
        double max = -testing::kInfD;
        for (int i = 0; i < states; ++i)
          max = std::max<double>(max, s_in[(r * states + i) * heads + h]);
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
            expected_v[(r * heads + h) * dim + d] +=
                w * v[((r * states + i) * heads + h) * dim + d];
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

TEST(MergeStates, PairFormMatchesANaiveMergeAlsoInPlace) {
  std::mt19937 rng(15);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    const int rows = 6, heads = 3, dim = 36;
    const size_t n = static_cast<size_t>(rows) * heads * dim, cells = rows * heads;
    std::vector<uint8_t> va, vb;
    const std::vector<double> a = testing::FillRandom(va, dtype, n, 2.0, rng);
    const std::vector<double> b = testing::FillRandom(vb, dtype, n, 2.0, rng);
    std::vector<float> sa(cells), sb(cells);
    std::uniform_real_distribution<float> lse_dist(-40.f, 40.f);
    for (size_t c = 0; c < cells; ++c) {
      sa[c] = lse_dist(rng);
      sb[c] = lse_dist(rng);
    }
    sa[1] = -INFINITY;                   // a empty: b's state comes back
    sb[2] = -INFINITY;                   // b empty
    sa[3] = sb[3] = -INFINITY;           // both empty: v = 0, s = -inf
    sa[4] = 80.f, sb[4] = 80.f - 1e-3f;  // nearly equal weights far from 0
    // An empty state's v is never read as a number (`b` keeps the values before this).
    StoreFromFloat(vb.data(), dtype, 2 * dim, NAN);
    StoreFromFloat(vb.data(), dtype, 2 * dim + 1, INFINITY);
    const auto ref = test_support::NaiveMergeStateList<double, float>({a, b}, {sa, sb}, cells, dim);
    EXPECT_NEAR(ref.s[0], std::log(std::exp(double{sa[0]}) + std::exp(double{sb[0]})), 1e-9);

    MergeStatesParams p;
    p.v_in = va.data();
    p.s_in = sa.data();
    p.v_in_b = vb.data();
    p.s_in_b = sb.data();
    p.dtype = dtype;
    p.num_rows = rows;
    p.num_states = 2;
    p.num_heads = heads;
    p.head_dim = dim;
    std::vector<uint8_t> v_out(n * DTypeSize(dtype));
    testing::Poison(v_out, dtype);
    std::vector<float> s_out(cells, NAN);
    p.v_out = v_out.data();
    p.s_out = s_out.data();
    ASSERT_TRUE(MergeStates(p, 2).ok());
    const std::string what = std::string("pair ") + DTypeName(dtype);
    testing::ExpectOutputsClose(v_out, dtype, ref.v, what);
    testing::ExpectLseClose(s_out, ref.s, what);
    EXPECT_EQ(s_out[3], -INFINITY);
    for (int d = 0; d < dim; ++d) EXPECT_EQ(LoadAsFloat(v_out.data(), dtype, 3 * dim + d), 0.f);

    // In place into a (FlashInfer's merge_state_in_place), and into b: the same bytes.
    for (bool into_a : {true, false}) {
      std::vector<uint8_t> va2 = va, vb2 = vb;
      std::vector<float> sa2 = sa, sb2 = sb;
      p.v_in = va2.data();
      p.s_in = sa2.data();
      p.v_in_b = vb2.data();
      p.s_in_b = sb2.data();
      p.v_out = into_a ? static_cast<void*>(va2.data()) : vb2.data();
      p.s_out = into_a ? sa2.data() : sb2.data();
      ASSERT_TRUE(MergeStates(p, 3).ok());
      EXPECT_EQ(into_a ? va2 : vb2, v_out) << what << " in place";
      EXPECT_EQ(into_a ? sa2 : sb2, s_out) << what << " in place";
    }

    // The pair form has exactly two states and both of its tensors.
    p.num_states = 3;
    EXPECT_EQ(MergeStates(p).code(), absl::StatusCode::kInvalidArgument);
    p.num_states = 2;
    p.s_in_b = nullptr;
    EXPECT_EQ(MergeStates(p).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(MergeStates, NoStatesGiveZeroAndMinusInfinity) {
  const int rows = 3, heads = 2, dim = 8;
  std::vector<uint8_t> v_out(rows * heads * dim * 2);
  testing::Poison(v_out, DType::kBFloat16);
  std::vector<float> s_out(rows * heads, NAN);
  MergeStatesParams p;  // num_states = 0: no inputs to read
  p.v_out = v_out.data();
  p.s_out = s_out.data();
  p.dtype = DType::kBFloat16;
  p.num_rows = rows;
  p.num_heads = heads;
  p.head_dim = dim;
  ASSERT_TRUE(MergeStates(p).ok());
  for (float s : s_out) EXPECT_EQ(s, -INFINITY);
  for (size_t i = 0; i < v_out.size() / 2; ++i) {
    EXPECT_EQ(LoadAsFloat(v_out.data(), DType::kBFloat16, i), 0.f);
  }
  // No rows: nothing is read or written, not even v_out.
  p.num_rows = 0;
  p.v_out = nullptr;
  EXPECT_TRUE(MergeStates(p).ok());
}

TEST(MergeStates, OneStateInPlaceIsTheIdentity) {
  std::mt19937 rng(3);
  const int rows = 4, heads = 2, dim = 16;
  std::vector<uint8_t> v;
  testing::FillRandom(v, DType::kFloat16, rows * heads * dim, 1.0, rng);
  std::vector<float> s = {0.f, -INFINITY, 3.f, -2.f, 1.f, 9.f, -7.f, 0.5f};
  const std::vector<uint8_t> v0 = v;
  const std::vector<float> s0 = s;
  MergeStatesParams p;
  p.v_in = p.v_out = v.data();
  p.s_in = p.s_out = s.data();
  p.dtype = DType::kFloat16;
  p.num_rows = rows;
  p.num_states = 1;
  p.num_heads = heads;
  p.head_dim = dim;
  ASSERT_TRUE(MergeStates(p).ok());
  EXPECT_EQ(s, s0);
  // Row 0 head 1 was empty: it becomes 0; every other row is unchanged.
  for (int i = 0; i < rows * heads * dim; ++i) {
    const float want = i / dim == 1 ? 0.f : LoadAsFloat(v0.data(), DType::kFloat16, i);
    EXPECT_EQ(LoadAsFloat(v.data(), DType::kFloat16, i), want) << i;
  }
}

}  // namespace
}  // namespace attnd::kernels::cpu
