// The paged KV cache on the device, written once: the length of a request, the address of a
// (token, head) row, and the page walk that streams a request's K/V rows through shared memory
// (both decode kernels). The view they read and the layout: paged_kv.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/paged_kv.h"
#include "blocks/ptx.cuh"

namespace attnd::kernels::cuda::internal {

// Page slot (in the request's page list) of kv position t: t / page_size with the host's magic
// numbers, three integer instructions and no branch. 0 <= t < 2^31.
__device__ __forceinline__ int PageOfToken(int t, uint32_t div_m, int div_s) {
  const uint32_t u = static_cast<uint32_t>(t);
  return static_cast<int>((__umulhi(u, div_m) + u) >> div_s);
}

// Keys of a request with num_pages >= 1 pages, the last holding last_page_len.
__device__ __forceinline__ int KvLengthOfPages(int num_pages, int page_size, int last_page_len) {
  return (num_pages - 1) * page_size + last_page_len;
}

// Element offset of row `slot` of page `page` (the head offset is added by the caller).
__device__ __forceinline__ int64_t PagedRowOffset(int page, int slot, int64_t page_stride,
                                                  int64_t token_stride) {
  return static_cast<int64_t>(page) * page_stride + static_cast<int64_t>(slot) * token_stride;
}

// The page walk of the decode kernels: streams the K/V rows [start, end) of one request and one
// KV head through a ring of shared-memory stages of kTokens tokens, [2 (K, V)][kTokens][D] each
// (16-byte chunks swizzled when kSwizzle, for ldmatrix: Swz<D> for 16-bit T, SwzFp8<D> for
// fp8; linear otherwise), with
// cp.async (zero-filled past `end`). T: the stored element (16-bit, or fp8: 16 per chunk).
// Copy i < kLoads of thread tid is chunk c % kChunks of token c / kChunks of the stage, c = tid
// + i * kThreads. The page ids of a stage's tokens are fetched one stage ahead of its copies
// (Fetch into registers) so that the dependent page-table load does not stall the warp before
// its cp.async.
//
// kTokenMajor picks how that index is written: tid / kChunks + i * (kThreads / kChunks) (true) or
// (tid + i * kThreads) / kChunks (false). They are the same numbers (kThreads % kChunks == 0); the
// choice only steers ptxas, and each kernel takes the form it allocates fewer registers for
// (CUDA-core decode: true, tensor-core decode: false; docs/bench-runs/2026-12-01-ptxas-*.txt).
template <typename T, int D, int kTokens, int kThreads, bool kSwizzle, bool kTokenMajor>
struct PagedKvStage {
  static constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));  // elements per chunk
  static constexpr int kChunks = D / kVecElems;                       // 16-byte chunks per row

  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kLoads = kTokens * kChunks / kThreads;  // copies per thread (K and V each)
  static_assert(kThreads % kChunks == 0 && kTokens * kChunks % kThreads == 0,
                "whole copies per thread");

  static __device__ __forceinline__ int Token(int tid, int i) {
    return kTokenMajor ? tid / kChunks + i * kRowsPerPass : (tid + i * kThreads) / kChunks;
  }
  static __device__ __forceinline__ int Chunk(int tid, int i) {
    return kTokenMajor ? tid % kChunks : (tid + i * kThreads) % kChunks;
  }

  // pages[i] = page id of the token of copy i of the stage starting at stage_start (0 past end).
  static __device__ __forceinline__ void Fetch(int (&pages)[kLoads], const PagedKvParams& kv,
                                               int page_begin, int stage_start, int end, int tid) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int t = stage_start + Token(tid, i);
      pages[i] =
          t < end ? kv.indices[page_begin + PageOfToken(t, kv.page_div_m, kv.page_div_s)] : 0;
    }
  }

  // Issues the copies of the stage starting at stage_start into stage_k ([kTokens][D] K, then
  // [kTokens][D] V) with the page ids of its Fetch. base: the layer's data as T; head_off:
  // kv_head * head_stride.
  static __device__ __forceinline__ void Copy(T* stage_k, const int (&pages)[kLoads],
                                              const PagedKvParams& kv, const T* base,
                                              int64_t head_off, int stage_start, int end, int tid) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int tok = Token(tid, i);
      const int ch = Chunk(tid, i);
      const int t = stage_start + tok;
      const bool valid = t < end;
      const T* src_k = base;
      if (valid) {
        const int slot = t - PageOfToken(t, kv.page_div_m, kv.page_div_s) * kv.page_size;
        src_k = base + PagedRowOffset(pages[i], slot, kv.page_stride, kv.token_stride) + head_off +
                ch * kVecElems;
      }
      const T* src_v = valid ? src_k + kv.kv_stride : base;
      int off = tok * D + ch * kVecElems;  // elements
      if constexpr (kSwizzle) off = sizeof(T) == 2 ? Swz<D>(tok, ch) : SwzFp8<D>(tok, ch);
      CpAsync16(stage_k + off, src_k, valid);
      CpAsync16(stage_k + kTokens * D + off, src_v, valid);
    }
  }
};

}  // namespace attnd::kernels::cuda::internal
