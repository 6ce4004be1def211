// AttentionState (kernels/cpu/attention_state.h): adding keys in blocks, merging states and
// merging normalized states all give the softmax over the union of the keys.
#include "attention_state.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

constexpr int kDim = 5;

// Softmax-weighted sum of values and log-sum-exp of logits, in double.
void Exact(const std::vector<float>& logits, const std::vector<float>& values, double* o,
           double* lse) {
  double max = -INFINITY;
  for (float s : logits) max = std::max<double>(max, s);
  double sum = 0;
  for (float s : logits) sum += std::exp(s - max);
  for (int d = 0; d < kDim; ++d) o[d] = 0;
  for (size_t j = 0; j < logits.size(); ++j) {
    for (int d = 0; d < kDim; ++d) o[d] += std::exp(logits[j] - max) / sum * values[j * kDim + d];
  }
  *lse = max + std::log(sum);
}

TEST(AttentionState, BlocksMergesAndNormalizedMergesAgree) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-20.f, 20.f);
  const int n = 50;
  std::vector<float> logits(n), values(n * kDim);
  for (float& s : logits) s = dist(rng);
  for (float& v : values) v = dist(rng) / 20;
  double o_exact[kDim], lse_exact;
  Exact(logits, values, o_exact, &lse_exact);

  // One block; blocks of 7; two states merged; normalized halves merged.
  AttentionState whole(kDim), blocks(kDim), a(kDim), b(kDim), merged(kDim);
  whole.AddKeys(logits.data(), values.data(), n, kDim);
  for (int j = 0; j < n; j += 7) {
    blocks.AddKeys(&logits[j], &values[j * kDim], std::min(7, n - j), kDim);
  }
  a.AddKeys(logits.data(), values.data(), 20, kDim);
  b.AddKeys(&logits[20], &values[20 * kDim], n - 20, kDim);
  AttentionState ab = a;
  ab.Merge(b);
  float va[kDim], vb[kDim];
  a.WriteNormalized(va);
  b.WriteNormalized(vb);
  merged.MergeNormalized(vb, b.lse());
  merged.MergeNormalized(va, a.lse());
  for (const AttentionState* s : {&whole, &blocks, &ab, &merged}) {
    float out[kDim];
    s->WriteNormalized(out);
    for (int d = 0; d < kDim; ++d) EXPECT_NEAR(out[d], o_exact[d], 1e-5);
    EXPECT_NEAR(s->lse(), lse_exact, 1e-5);
  }
}

TEST(AttentionState, EmptyMaskedAndNan) {
  AttentionState s(kDim);
  float out[kDim];
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.lse(), -INFINITY);
  s.WriteNormalized(out);
  for (float x : out) EXPECT_EQ(x, 0.f);

  // Masked keys (-inf) are skipped even when their values are NaN.
  const float masked[2] = {-INFINITY, 1.f};
  std::vector<float> values(2 * kDim, 2.f);
  for (int d = 0; d < kDim; ++d) values[d] = NAN;
  s.AddKeys(masked, values.data(), 2, kDim);
  s.WriteNormalized(out);
  for (float x : out) EXPECT_EQ(x, 2.f);
  EXPECT_FLOAT_EQ(s.lse(), 1.f);

  AttentionState empty(kDim);
  s.Merge(empty);
  s.MergeNormalized(values.data(), -INFINITY);
  EXPECT_FLOAT_EQ(s.lse(), 1.f);

  const float nan_logit[1] = {NAN};
  s.AddKeys(nan_logit, values.data() + kDim, 1, kDim);
  EXPECT_TRUE(std::isnan(s.lse()));
  s.WriteNormalized(out);
  EXPECT_TRUE(std::isnan(out[0]));
  AttentionState t(kDim);
  t.MergeNormalized(values.data() + kDim, NAN);
  EXPECT_TRUE(std::isnan(t.lse()));
}

}  // namespace
}  // namespace attnd::kernels::cpu
