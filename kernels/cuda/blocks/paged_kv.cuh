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
// (16-byte chunks swizzled by Swz<D> when kSwizzle, for ldmatrix; linear otherwise), with
// cp.async (zero-filled past `end`). Copy i < kLoads of thread tid is chunk c % (D/8) of token
// c / (D/8) of the stage, c = tid + i * kThreads. The page ids of a stage's tokens are fetched
// one stage ahead of its copies (Fetch into registers) so that the dependent page-table load
// does not stall the warp before its cp.async.
//
// kTokenMajor picks how that index is written: tid / (D/8) + i * (kThreads / (D/8)) (true) or
// (tid + i * kThreads) / (D/8) (false). They are the same numbers (kThreads % (D/8) == 0); the
// choice only steers ptxas, and each kernel takes the form it allocates fewer registers for
// (CUDA-core decode: true, tensor-core decode: false; docs/bench-runs/2026-12-01-ptxas-*.txt).
template <typename T, int D, int kTokens, int kThreads, bool kSwizzle, bool kTokenMajor>
struct PagedKvStage {
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
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
                                               int page_begin, int stage_start, int end,
                                               int tid) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int t = stage_start + Token(tid, i);
      pages[i] = t < end ? kv.indices[page_begin + PageOfToken(t, kv.page_div_m, kv.page_div_s)]
                         : 0;
    }
  }

  // Issues the copies of the stage starting at stage_start into stage_k ([kTokens][D] K, then
  // [kTokens][D] V) with the page ids of its Fetch. base: the layer's data as T; head_off:
  // kv_head * head_stride.
  static __device__ __forceinline__ void Copy(T* stage_k, const int (&pages)[kLoads],
                                              const PagedKvParams& kv, const T* base,
                                              int64_t head_off, int stage_start, int end,
                                              int tid) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int tok = Token(tid, i);
      const int ch = Chunk(tid, i);
      const int t = stage_start + tok;
      const bool valid = t < end;
      const T* src_k = base;
      if (valid) {
        const int slot = t - PageOfToken(t, kv.page_div_m, kv.page_div_s) * kv.page_size;
        src_k = base + PagedRowOffset(pages[i], slot, kv.page_stride, kv.token_stride) +
                head_off + ch * 8;
      }
      const T* src_v = valid ? src_k + kv.kv_stride : base;
      const int off = kSwizzle ? Swz<D>(tok, ch) : tok * D + ch * 8;
      CpAsync16(stage_k + off, src_k, valid);
      CpAsync16(stage_k + kTokens * D + off, src_v, valid);
    }
  }
};

// The same page walk as a pipeline object (the page ids as a member): stage `it` covers tokens
// start + it * kTokens ...; Prologue issues stages 0 .. kStages - 2, Advance one per iteration.
template <typename T, int D, int kTokens, int kThreads, bool kSwizzle>
class PagedKvStageLoader {
 public:
  using Stage = PagedKvStage<T, D, kTokens, kThreads, kSwizzle, /*kTokenMajor=*/true>;

  // kv_head's rows of the request whose page list starts at page_begin. The view is passed to
  // every call rather than kept (a reference into the kernel's __grid_constant__ params).
  __device__ __forceinline__ PagedKvStageLoader(const PagedKvParams& kv, int page_begin,
                                                int kv_head, int start, int end, int tid)
      : head_off_(static_cast<int64_t>(kv_head) * kv.head_stride), page_begin_(page_begin),
        start_(start), end_(end), tid_(tid) {}

  __device__ __forceinline__ void FetchPages(const PagedKvParams& kv, int it) {
    Stage::Fetch(pages_, kv, page_begin_, start_ + it * kTokens, end_, tid_);
  }
  __device__ __forceinline__ void Load(const PagedKvParams& kv, int it, T* stage_k) const {
    Stage::Copy(stage_k, pages_, kv, static_cast<const T*>(kv.data), head_off_,
                start_ + it * kTokens, end_, tid_);
  }

  // The pipeline's prologue: stages 0 .. kStages - 2 issued (one commit group each, empty past
  // `iters`), the page ids of stage kStages - 1 fetched. stage(slot) -> its K tile.
  template <int kStages, typename StageK>
  __device__ __forceinline__ void Prologue(const PagedKvParams& kv, int iters, StageK stage) {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      FetchPages(kv, s);
      if (s < iters) Load(kv, s, stage(s));
      CpAsyncCommit();
    }
    FetchPages(kv, kStages - 1);
  }

  // One pipeline step at the top of iteration `it` (after its barrier): issues stage
  // it + kStages - 1 into its slot (its page ids were fetched last step), commits, and fetches
  // the page ids of the stage after it, in flight while stage `it` is computed.
  template <int kStages, typename StageK>
  __device__ __forceinline__ void Advance(const PagedKvParams& kv, int it, int iters,
                                          StageK stage) {
    const int next = it + kStages - 1;
    if (next < iters) Load(kv, next, stage(next % kStages));
    CpAsyncCommit();
    FetchPages(kv, next + 1);
  }

 private:
  int64_t head_off_;
  int page_begin_, start_, end_, tid_;
  int pages_[Stage::kLoads];
};

}  // namespace attnd::kernels::cuda::internal
