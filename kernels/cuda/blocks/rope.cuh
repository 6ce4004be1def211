// RoPE (LLaMA "rotate half") on the device, written once for every kernel: the angle of a
// (position, pair) and the rotation, and the hi/lo split that keeps rotated operands exact on
// tensor cores. Frequencies: RopeFreq (numerics.h), filled on the host. Why: NUMERICS.md.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/numerics.h"
#include "blocks/vec.cuh"

namespace attnd::kernels::cuda::internal {

// cos/sin of position * freq, with the product kept exact (two-product) and a two-constant
// reduction modulo 2*pi before the fast hardware sine/cosine (accurate on [-pi, pi]).
__device__ __forceinline__ void RopeCosSin(int position, RopeFreq f, float* c, float* s) {
  const float pos = static_cast<float>(position);  // exact for |position| < 2^24
  const float p = pos * f.hi;
  const float e = fmaf(pos, f.hi, -p) + pos * f.lo;
  const float k = rintf(p * 0.15915494309189535f);  // 1 / (2 pi)
  float r = fmaf(-k, 6.28318548202514648f, p);      // 2 pi, high part (float)
  r = fmaf(-k, -1.7484556000744487e-07f, r);        // 2 pi - high part
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
// The same for one pair (one 32-bit register of two T).
template <typename T>
__device__ __forceinline__ void SplitHiLo2(float x, float y, uint32_t* hi, uint32_t* lo) {
  *hi = Pack2<T>(x, y);
  const float2 h = Unpack2<T>(*hi);
  *lo = Pack2<T>(x - h.x, y - h.y);
}

}  // namespace attnd::kernels::cuda::internal
