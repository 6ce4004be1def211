// The online-softmax state and its merge, written once for every attnd kernel (decode on CUDA
// cores and on tensor cores, prefill/append, the split-KV merge and MergeStates).
//
// State of one query row over a set of keys, in the base-2 domain of the logits (numerics.h):
//   m = max_j l2_j,  d = sum_j 2^(l2_j - m),  o = sum_j 2^(l2_j - m) v_j   (o / d is the output)
// and, once normalised, the natural-log LSE = (m + log2 d) ln 2. A kernel keeps (m, d, o) per
// row in registers (o as 8 floats per thread, or MMA C fragments) and merges partial states of
// the same row (token slices, warps, KV chunks) with the weights below.
//
// One convention for empty rows (no visible key: masked, window, kv_len 0): m = -inf, d = 0,
// o = 0. Exponents are taken relative to SoftmaxBase(m), which is 0 for an empty row, so no
// inf - inf arises; an empty state weighs exactly 0 in every merge; normalising it gives o = 0
// (InvSum = 0) and LSE = -inf.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace attnd::kernels::cuda::internal {

inline constexpr float kLn2 = 0.69314718055994531f;

// 2^x, fast (ex2.approx: rel. error ~2^-22; ex2(-inf) = +0; results below 2^-126 flush to 0).
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- base-2 states (inside a kernel) --------------------------------------------------------
// The exponent base of a row whose running max is m: m, or 0 for an empty row.
__device__ __forceinline__ float SoftmaxBase(float m) { return m == -INFINITY ? 0.f : m; }
// The factor that rescales (d, o) when the running max moves from m_old to m_new:
// 2^(m_old - SoftmaxBase(m_new)), 0 when m_old = -inf (nothing to keep), 1 when unchanged.
__device__ __forceinline__ float SoftmaxRescale(float m_old, float m_new) {
  return Exp2(m_old - SoftmaxBase(m_new));
}
// Weight of a partial state with max m_i in a merge of states whose max is m_all (>= m_i):
// 2^(m_i - m_all), 0 for an empty state.
__device__ __forceinline__ float Base2StateWeight(float m_i, float m_all) {
  return m_i == -INFINITY ? 0.f : Exp2(m_i - m_all);
}
// 1 / d for the normalisation o / d, 0 for an empty row (d = 0: o stays 0).
__device__ __forceinline__ float InvSum(float d) { return d > 0.f ? 1.f / d : 0.f; }

// Natural-log LSE of a base-2 state: m2 = max of the base-2 logits, d = sum of 2^(l2 - m2) >= 1
// (the max contributes 2^0). Empty row (d = 0): -inf. The fast lg2 (MUFU, absolute error ~2^-22
// for d >= 1) is as exact as the fp32 sum it is taken of.
__device__ __forceinline__ float LseFromBase2(float m2, float d) {
  return d > 0.f ? (m2 + __log2f(d)) * kLn2 : -INFINITY;
}

// ---- natural-log states (between kernels: partial o normalised, lse) -------------------------
// Merging (lse_i, o_i): m = max lse_i, w_i = exp(lse_i - m), o = sum w_i o_i / sum w_i,
// lse = m + log(sum w_i). An empty state (lse_i = -inf) weighs 0; all empty: o = 0, lse = -inf.
__device__ __forceinline__ float StateWeight(float lse_i, float m) {
  return lse_i == -INFINITY ? 0.f : Exp2((lse_i - m) * 1.4426950408889634f);
}
__device__ __forceinline__ float MergedLse(float m, float weight_sum) {
  return weight_sum > 0.f ? m + logf(weight_sum) : -INFINITY;
}

}  // namespace attnd::kernels::cuda::internal
