// The online-softmax state and its merge, written once for every attnd kernel (decode on CUDA
// cores and on tensor cores, prefill/append, the split-KV merge and MergeStates).
//
// State of one query row over a set of keys, in the base-2 domain of the logits (numerics.h):
//   m = max_j l2_j,  d = sum_j 2^(l2_j - m),  o = sum_j 2^(l2_j - m) v_j   (o / d is the output)
// and, once normalised, the natural-log LSE = (m + log2 d) ln 2. A kernel keeps (m, d, o) per
// row in registers (o as 8 floats per thread: SoftmaxState, or MMA C fragments: MmaRowsSoftmax)
// and merges partial states of the same row (token slices, warps, KV chunks) with the weights
// below.
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

// ---- finalization: the variant's sink policy, then o / d and the LSE ------------------------
// What a finished row state (m, d) becomes: o_final = o * inv, and its natural-log lse.
struct RowFinal {
  float inv;
  float lse;
};
inline constexpr float kLog2e = 1.4426950408889634f;
// The one finalization of every kernel (decode on CUDA cores and tensor cores, prefill FA2 and
// sm90, both split-KV merges). m: the row's max in the base-2 logit domain, d: sum 2^(l2 - m)
// (empty row: m = -inf, d = 0). sinks ([num_qo_heads], natural-log units of the scaled, capped
// logits, VariantParams::sinks) null: no sink, o / d and LseFromBase2. Otherwise head qo_head's
// sink s joins the softmax as one more logit with no value (FlashInfer's AttentionSink):
//   m' = max(m, s log2 e),  d' = d 2^(m - m') + 2^(s log2 e - m'),  o_final = o 2^(m - m') / d'
// and lse = (m' + log2 d') ln 2, the LSE of the whole softmax; an empty row gets o = 0 and
// lse = s. d' >= 1 (the max contributes 2^0), so there is no 0 to guard; a NaN sink gives NaN
// (o and lse) rather than hiding in InvSum. Callers pass null for split-KV partial states: the
// sink is applied once, after the merge.
__device__ __forceinline__ RowFinal FinalizeRow(const float* sinks, int qo_head, float m, float d) {
  if (sinks == nullptr) return {InvSum(d), LseFromBase2(m, d)};
  const float s2 = sinks[qo_head] * kLog2e;
  const float m_new = fmaxf(m, s2);
  const float keep = SoftmaxRescale(m, m_new);  // 0 for an empty row
  const float d_new = fmaf(d, keep, Exp2(s2 - m_new));
  return {keep / d_new, (m_new + __log2f(d_new)) * kLn2};
}

// ---- value types: the state of rows, held in registers -------------------------------------

// SoftmaxState<kVec>: one row's state over a set of keys, as a thread of a CUDA-core kernel holds
// it: (m, d) and its kVec dims of o (the other threads of the row hold the other dims and the
// same m, d). Used by the CUDA-core decode kernel (kVec = 8: 16 bytes of K/V per thread).
template <int kVec>
struct SoftmaxState {
  float m = -INFINITY;  // running max of the base-2 logits
  float d = 0.f;        // sum of 2^(l2 - m)
  float o[kVec] = {};   // sum of 2^(l2 - m) v (this thread's dims)

  // Moves the running max to m_new (>= m, finite) and rescales d and o to it.
  __device__ __forceinline__ void MoveMax(float m_new) {
    const float scale = SoftmaxRescale(m, m_new);  // m = -inf -> 0
    d *= scale;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o[k] *= scale;
    m = m_new;
  }
  // Adds one key with base-2 logit l2 (<= m; -inf adds nothing) and value dims v.
  __device__ __forceinline__ void Add(float l2, const float (&v)[kVec]) {
    const float w = Exp2(l2 - m);
    d += w;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o[k] = fmaf(w, v[k], o[k]);
  }
  // Starts a merge of partial states of this row whose largest max is m_all: the state becomes
  // empty at max m_all; AddPart then adds each part.
  __device__ __forceinline__ void BeginMerge(float m_all) {
    m = m_all;
    d = 0.f;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o[k] = 0.f;
  }
  // Adds a partial state (m_i, d_i, o_i) of the same row (m_i <= m; an empty part weighs 0).
  __device__ __forceinline__ void AddPart(float m_i, float d_i, const float* o_i) {
    const float w = Base2StateWeight(m_i, m);
    d = fmaf(w, d_i, d);
#pragma unroll
    for (int k = 0; k < kVec; ++k) o[k] = fmaf(w, o_i[k], o[k]);
  }
  // Finished: FinalizeRow(sinks, head, m, d) gives o's factor and the LSE.
};

// MmaRowsSoftmax: the state of the two rows (g = lane / 4 and g + 8) a thread holds of m16n8k16
// MMA C fragments (tensor-core kernels). o stays in the kernel's accumulator fragments
// ([n][4]: elements 0, 1 in row g, 2, 3 in row g + 8), which the kernel rescales by the factors
// Update returns (RescaleRows); d is this thread's part of each row sum (its columns), the quad
// (4 lanes of a row) adds its parts at the end (RowSum).
struct MmaRowsSoftmax {
  float m[2] = {-INFINITY, -INFINITY};  // running max, base-2 domain
  float d[2] = {0.f, 0.f};              // this thread's part of sum 2^(l2 - m)

  // One tile of logits s ([kN][4] C fragments of this thread, kN n8 tiles; masked = -inf),
  // base-2 after multiplying by `post` (> 0; 1 when s is base-2 already): turns s into the
  // probabilities 2^(s * post - m) in place, moves m and d, and returns in scale[h] the factor
  // by which row h's accumulators must be multiplied (exactly 1 when its max did not move).
  template <int kN>
  __device__ __forceinline__ void Update(float (&s)[kN][4], float post, float (&scale)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kN; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx * post);
      // Nothing visible yet (m_new = -inf): subtract 0, so no inf - inf.
      const float base = SoftmaxBase(m_new);
      scale[h] = Exp2(m[h] - base);  // SoftmaxRescale(m, m_new)
      m[h] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const float p0 = Exp2(fmaf(s[j][2 * h], post, -base));
        const float p1 = Exp2(fmaf(s[j][2 * h + 1], post, -base));
        s[j][2 * h] = p0;
        s[j][2 * h + 1] = p1;
        sum += p0 + p1;
      }
      d[h] = d[h] * scale[h] + sum;
    }
  }
  // The whole sum of row h (the quad's parts added; every lane of the quad gets it).
  __device__ __forceinline__ float RowSum(int h) const {
    float sum = d[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    return sum;
  }
};

// Multiplies the accumulator fragments o ([kN][4], rows as in MmaRowsSoftmax) by the rows'
// factors.
template <int kN>
__device__ __forceinline__ void RescaleRows(float (&o)[kN][4], const float (&scale)[2]) {
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    o[j][0] *= scale[0];
    o[j][1] *= scale[0];
    o[j][2] *= scale[1];
    o[j][3] *= scale[1];
  }
}

// ---- natural-log states (between kernels: partial o normalised, lse) -------------------------
// Merging (lse_i, o_i): m = max lse_i, w_i = exp(lse_i - m), o = sum w_i o_i / sum w_i,
// lse = m + log(sum w_i). An empty state (lse_i = -inf) weighs 0; all empty: o = 0, lse = -inf.
__device__ __forceinline__ float StateWeight(float lse_i, float m) {
  return lse_i == -INFINITY ? 0.f : Exp2((lse_i - m) * kLog2e);
}
__device__ __forceinline__ float MergedLse(float m, float weight_sum) {
  return weight_sum > 0.f ? m + logf(weight_sum) : -INFINITY;
}
// FinalizeRow of a merged state (the split-KV merges, after all chunks): m = max lse_i (natural
// log), weight_sum = sum exp(lse_i - m), which is the base-2 state (m log2 e, weight_sum). Without
// sinks: o / weight_sum and MergedLse, as before sinks existed.
__device__ __forceinline__ RowFinal FinalizeMergedRow(const float* sinks, int head, float m,
                                                      float weight_sum) {
  if (sinks == nullptr) return {InvSum(weight_sum), MergedLse(m, weight_sum)};
  return FinalizeRow(sinks, head, m * kLog2e, weight_sum);
}

}  // namespace attnd::kernels::cuda::internal
