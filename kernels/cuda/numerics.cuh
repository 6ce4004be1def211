// The device numerics every attnd attention kernel shares, defined once (decode on CUDA cores,
// decode on tensor cores, prefill/append, the two merge kernels): RoPE angles and rotation, the
// logit transform (scale, soft cap, base-2 domain), exp2, the LSE of an online-softmax state and
// the merging of states, and the hi/lo split that keeps rotated operands exact on tensor cores.
// Parameters: numerics.h. Reasoning and measured errors: NUMERICS.md.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernel_utils.cuh"
#include "numerics.h"

namespace attnd::kernels::cuda::internal {

inline constexpr float kLn2 = 0.69314718055994531f;

// ---- RoPE ------------------------------------------------------------------------------------
// cos/sin of position * freq, with the product kept exact (two-product) and a two-constant
// reduction modulo 2*pi before the fast hardware sine/cosine (accurate on [-pi, pi]).
__device__ __forceinline__ void RopeCosSin(int position, RopeFreq f, float* c, float* s) {
  const float pos = static_cast<float>(position);  // exact for |position| < 2^24
  const float p = pos * f.hi;
  const float e = fmaf(pos, f.hi, -p) + pos * f.lo;
  const float k = rintf(p * 0.15915494309189535f);  // 1 / (2 pi)
  float r = fmaf(-k, 6.28318548202514648f, p);      // 2 pi, high part (float)
  r = fmaf(-k, -1.7484556000744487e-07f, r);         // 2 pi - high part
  r += e;
  __sincosf(r, s, c);
}

// Rotates 8 "rotate half" pairs in place: lo[k] = x[i + k], hi[k] = x[i + D/2 + k], freq[k] their
// frequencies; x'[i] = x[i] cos - x[i + D/2] sin, x'[i + D/2] = x[i + D/2] cos + x[i] sin.
__device__ __forceinline__ void RotateHalfPairs8(float (&lo)[8], float (&hi)[8], int position,
                                                 const RopeFreq* freq) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    float cs, sn;
    RopeCosSin(position, freq[k], &cs, &sn);
    const float a = lo[k], b = hi[k];
    lo[k] = a * cs - b * sn;
    hi[k] = b * cs + a * sn;
  }
}

// ---- logits ----------------------------------------------------------------------------------
// The soft cap part of the base-2 logit (numerics.h): tanh(raw * pre) with a cap, raw without.
__device__ __forceinline__ float CapLogit(float raw, const LogitScale& ls) {
  return ls.soft_cap ? tanhf(raw * ls.pre) : raw;
}
// The base-2 logit l2 = post * CapLogit(raw).
__device__ __forceinline__ float Log2Logit(float raw, const LogitScale& ls) {
  return ls.post * CapLogit(raw, ls);
}

// 2^x, fast (ex2.approx: rel. error ~2^-22; ex2(-inf) = +0; results below 2^-126 flush to 0).
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- softmax states ----------------------------------------------------------------------------
// Natural-log LSE of an online-softmax state in the base-2 domain: m2 = max of the base-2 logits,
// d = sum of 2^(l2 - m2) >= 1 (the max contributes 2^0). No visible key (d = 0): -inf. The fast
// lg2 (MUFU, absolute error ~2^-22 for d >= 1) is as exact as the fp32 sum it is taken of.
__device__ __forceinline__ float LseFromBase2(float m2, float d) {
  return d > 0.f ? (m2 + __log2f(d)) * kLn2 : -INFINITY;
}

// Merging natural-log states (lse_i, o_i normalised): m = max lse_i, w_i = exp(lse_i - m),
// o = sum w_i o_i / sum w_i, lse = m + log(sum w_i). An empty state (lse_i = -inf) weighs 0.
__device__ __forceinline__ float StateWeight(float lse_i, float m) {
  return lse_i == -INFINITY ? 0.f : Exp2((lse_i - m) * 1.4426950408889634f);
}
__device__ __forceinline__ float MergedLse(float m, float weight_sum) {
  return weight_sum > 0.f ? m + logf(weight_sum) : -INFINITY;
}

// ---- exact rotated operands on tensor cores ----------------------------------------------------
// A rotated q or k row is not representable in the 16-bit input type; rounding it would put a
// relative error of up to 2^-9 (bf16) on every logit, and the LSE would inherit it. Split it
// instead: x = hi + lo with hi = T(x), lo = T(x - hi); Q K^T = Qhi Khi + Qlo Khi + Qhi Klo up to
// Qlo Klo (~2^-16 relative for bf16), three MMAs instead of one.
template <typename T>
__device__ __forceinline__ void SplitHiLo8(const float (&x)[8], uint4* hi, uint4* lo) {
  *hi = Vec8<T>::FromFloat(x);
  float h[8], r[8];
  Vec8<T>::ToFloat(*hi, h);
#pragma unroll
  for (int k = 0; k < 8; ++k) r[k] = x[k] - h[k];
  *lo = Vec8<T>::FromFloat(r);
}

// Two floats -> one 32-bit register of two T (x = low half), and the residual pair.
template <typename T>
__device__ __forceinline__ uint32_t Pack2(float x, float y);
template <>
__device__ __forceinline__ uint32_t Pack2<__half>(float x, float y) {
  __half2 h = __floats2half2_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t Pack2<__nv_bfloat16>(float x, float y) {
  __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <typename T>
__device__ __forceinline__ float2 Unpack2(uint32_t u);
template <>
__device__ __forceinline__ float2 Unpack2<__half>(uint32_t u) {
  return __half22float2(*reinterpret_cast<const __half2*>(&u));
}
template <>
__device__ __forceinline__ float2 Unpack2<__nv_bfloat16>(uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
}
template <typename T>
__device__ __forceinline__ void SplitHiLo2(float x, float y, uint32_t* hi, uint32_t* lo) {
  *hi = Pack2<T>(x, y);
  const float2 h = Unpack2<T>(*hi);
  *lo = Pack2<T>(x - h.x, y - h.y);
}

}  // namespace attnd::kernels::cuda::internal
