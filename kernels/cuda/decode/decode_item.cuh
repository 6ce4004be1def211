// What a decode CTA derives from its work item, written once for both decode kernels: the
// request's page list and kv length, the query position (the last kv position), the kv range
// the chunk covers after the sliding window, and the request's RoPE position offset.
#pragma once

#include <cuda_runtime.h>

#include "blocks/paged_kv.cuh"
#include "blocks/variant.cuh"
#include "decode/decode_params.h"

namespace attnd::kernels::cuda::internal {

// Which work item and head tile this CTA runs. The grid is one-dimensional and item-major,
// [num_items * head_ctas]: the hardware dispatches CTAs in index order, so the schedule's order
// (longest first when balanced) is the order the work starts in. live: false for a CTA past the
// valid items of a graph-safe work (p.live_items); it must exit without touching anything.
struct DecodeCta {
  DecodeWorkItem item;
  int kv_head;
  int head_tile;  // which tile of the KV head's group of query heads
  bool live;
};
__device__ __forceinline__ DecodeCta LocateDecodeCta(const DecodeKernelParams& p) {
  const int item = static_cast<int>(blockIdx.x) / p.head_ctas;
  const int head_cta = static_cast<int>(blockIdx.x) - item * p.head_ctas;
  DecodeCta c{};
  c.live = p.live_items == nullptr || item < *p.live_items;
  if (c.live) c.item = p.items[item];
  c.kv_head = head_cta / p.head_tiles;
  c.head_tile = head_cta % p.head_tiles;
  return c;
}

struct DecodeItemRange {
  int page_begin;   // first slot of the request's page list in kv.indices
  int q_pos;        // kv_len - 1: the query row is the newest token
  int start, end;   // kv positions [start, end) this CTA reads (start may be >= end)
  int rope_offset;  // added to every RoPE position of the request (0 without kRope)
};

template <bool kRope>
__device__ __forceinline__ DecodeItemRange ResolveDecodeItem(const DecodeKernelParams& p,
                                                             const DecodeWorkItem& item) {
  const int b = item.request;
  DecodeItemRange r;
  r.page_begin = p.kv.indptr[b];
  const int kv_len =
      KvLengthOfPages(p.kv.indptr[b + 1] - r.page_begin, p.kv.page_size, p.kv.last_page_len[b]);
  r.q_pos = kv_len - 1;
  r.start = FirstVisibleKv(p.variant, r.q_pos, item.chunk_start);
  r.end = min(item.chunk_end, kv_len);
  r.rope_offset = kRope && p.variant.rope_offsets != nullptr ? p.variant.rope_offsets[b] : 0;
  return r;
}

}  // namespace attnd::kernels::cuda::internal
