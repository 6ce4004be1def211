// Small device helpers shared by the attnd CUDA kernels: cp.async, 8-wide dtype conversions,
// accurate RoPE angles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch_internal.h"

namespace attnd::kernels::cuda::internal {

// ---- cp.async (sm_80+): 16-byte global -> shared copies that bypass L1 ---------------------
// valid == false zero-fills the 16 destination bytes without reading global memory.
__device__ __forceinline__ void CpAsync16(void* smem_dst, const void* gmem_src, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- programmatic dependent launch (sm_90) ---------------------------------------------------
// The decode kernels signal once their main loop is done (the split-KV merge grid may then be
// scheduled); the merge kernel waits for the decode grid's completion and memory flush before
// reading partial states. Both are no-ops when the launch has no programmatic dependency.
__device__ __forceinline__ void GridDependencyTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// ---- 8 x 16-bit <-> 8 floats --------------------------------------------------------------
template <typename T>
struct Vec8;

template <>
struct Vec8<__half> {
  static __device__ __forceinline__ void ToFloat(const uint4& u, float (&f)[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 x = __half22float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
  static __device__ __forceinline__ uint4 FromFloat(const float (&f)[8]) {
    uint4 u;
    __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    return u;
  }
};

template <>
struct Vec8<__nv_bfloat16> {
  static __device__ __forceinline__ void ToFloat(const uint4& u, float (&f)[8]) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 x = __bfloat1622float2(h[i]);
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
  static __device__ __forceinline__ uint4 FromFloat(const float (&f)[8]) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return u;
  }
};

// ---- paged KV: token -> (page slot in the request's page list, row in the page) ------------
// Division by the page size with the host's magic numbers (DecodeKernelParams::page_div_m/_s):
// three integer instructions and no branch, for any page size. 0 <= t < 2^31.
__device__ __forceinline__ int PageOfToken(int t, uint32_t div_m, int div_s) {
  const uint32_t u = static_cast<uint32_t>(t);
  return static_cast<int>((__umulhi(u, div_m) + u) >> div_s);
}

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

}  // namespace attnd::kernels::cuda::internal
