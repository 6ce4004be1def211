// The prefill kernel's tile scheduling on the device: which work a CTA does. The planner
// (planning/prefill_tiling.h, work_items.h) orders the items longest first; the grid is
// item-major with the KV head fastest, so that the order holds over all heads (the grid's tail
// is made of the shortest tiles). KV-head-major (FA2's order, for L2 reuse) was measured worse
// (H200, 2026-11-21): B1 L4096 lost ~10% to the tail, as a list-scheduling simulation predicts
// (88% vs 99.5% efficiency with 64-row tiles).
#pragma once

#include <cstdint>

#include "blocks/paged_kv.cuh"
#include "blocks/variant.cuh"
#include "prefill/prefill_config.cuh"

namespace attnd::kernels::cuda::internal {

// One CTA's tile: packed query rows [packed_start, packed_end) of request b (packed row
// pk = query row pk / group, head kv_head * group + pk % group) against the K/V of kv_head.
struct PrefillTile {
  int kv_head;
  int b;             // request
  int qo_begin;      // first q row of b in q/o
  int kv_row_begin;  // paged: first page-table slot of b; ragged: first K/V row of b
  int kv_len;
  int packed_start;
  int packed_end;
  int q_lo;  // query rows q_lo..q_hi of b are in the tile
  int q_hi;
  int delta;     // query row i sits at kv position delta + i
  int kv_begin;  // the KV range any row of the tile can see; tiles outside it are never loaded
  int kv_end;
  int rope_offset;  // kRope: the request's position offset
};

// The planned item of work unit `work` (item-major, KV head fastest; kRope: p.sub_items units per
// item). One CTA per unit: work = blockIdx.x; the persistent sm90 kernel loops over units.
template <bool kRope>
__device__ __forceinline__ int PrefillItemIndex(const PrefillParams& p, int work) {
  const int item_sub = work / p.num_kv_heads;
  return kRope ? item_sub / p.sub_items : item_sub;
}
template <bool kRope>
__device__ __forceinline__ int PrefillItemIndex(const PrefillParams& p) {
  return PrefillItemIndex<kRope>(p, blockIdx.x);
}

// The tile of work unit `work` (a CTA: blockIdx.x). kRope: p.sub_items CTAs of Cfg::kCtaRows rows
// share a planned item of p.item_rows rows (a plan made for a wider tile); the other kernels have
// the plan's tile (one CTA per item and KV head). False when the CTA has no rows (the last sub-item
// of a short item).
template <class Cfg, bool kPaged>
__device__ __forceinline__ bool ResolvePrefillTile(const PrefillParams& p, PrefillTile& t,
                                                   int work) {
  constexpr bool kRope = Cfg::kRope;
  constexpr int CTA_M = Cfg::kCtaRows;
  const int item_sub = work / p.num_kv_heads;
  t.kv_head = work - item_sub * p.num_kv_heads;
  const int item = PrefillItemIndex<kRope>(p, work);
  const int sub = kRope ? item_sub - item * p.sub_items : 0;
  const PrefillItem it = p.items[item];
  t.b = it.request;
  const int group = p.group;

  t.qo_begin = p.qo_indptr[t.b];
  const int qo_len = p.qo_indptr[t.b + 1] - t.qo_begin;
  if constexpr (kPaged) {
    t.kv_row_begin = p.kv_indptr[t.b];
    const int num_pages = p.kv_indptr[t.b + 1] - t.kv_row_begin;
    t.kv_len = num_pages > 0 ? KvLengthOfPages(num_pages, p.page_size, p.last_page_len[t.b]) : 0;
  } else {
    t.kv_row_begin = p.kv_indptr[t.b];
    t.kv_len = p.kv_indptr[t.b + 1] - t.kv_row_begin;
  }

  t.packed_start = it.packed_start + sub * CTA_M;
  const int item_end = kRope ? min(it.packed_start + p.item_rows, qo_len * group) : qo_len * group;
  t.packed_end = min(t.packed_start + CTA_M, item_end);
  if (t.packed_start >= t.packed_end) return false;
  t.q_lo = t.packed_start / group;
  t.q_hi = (t.packed_end - 1) / group;
  t.delta = t.kv_len - qo_len;

  // Split-KV: the chunk's keys only (an unsplit item's chunk is [0, kPrefillWholeKv)).
  t.kv_begin = FirstVisibleKv(p.variant, t.delta + t.q_lo, it.kv_chunk_begin);
  t.kv_end = min(t.kv_len, it.kv_chunk_end);
  if (p.variant.causal) t.kv_end = min(t.kv_end, t.delta + t.q_hi + 1);
  t.rope_offset = (kRope && p.variant.rope_offsets != nullptr) ? p.variant.rope_offsets[t.b] : 0;
  return true;
}
template <class Cfg, bool kPaged>
__device__ __forceinline__ bool ResolvePrefillTile(const PrefillParams& p, PrefillTile& t) {
  return ResolvePrefillTile<Cfg, kPaged>(p, t, blockIdx.x);
}

}  // namespace attnd::kernels::cuda::internal
