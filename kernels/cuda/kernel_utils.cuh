// Small device helpers shared by the attnd CUDA kernels: cp.async, programmatic dependent
// launch, 8-wide dtype conversions, paged token -> page. (The attention numerics: numerics.cuh.)
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

}  // namespace attnd::kernels::cuda::internal
