// The work items the planning layer writes and the kernels read: plain structs, uploaded as
// device arrays with the plan (host and device code; no CUDA types).
#pragma once

#include <cstdint>

namespace attnd::kernels::cuda::internal {

// One item of the decode kernels: request `request`, kv positions [chunk_start, chunk_end)
// (clipped to the request's kv length and window in the kernel); it runs as head_ctas CTAs, one
// per group of query heads of one KV head (grid: [num_items * head_ctas], item-major, so that
// the hardware dispatches items in array order). Array: [num_items] in launch order: longest
// chunk first when the schedule balances (planning/decode_schedule.h), else by request.
struct DecodeWorkItem {
  int32_t request;
  int32_t chunk_start;
  int32_t chunk_end;
  // -1: the request has one chunk; the CTA writes o and lse. Else the row of this chunk's
  // partial state (partial_o / partial_lse rows state_row * num_qo_heads + head); a request's
  // chunks hold the rows [chunk_indptr[b], chunk_indptr[b + 1]) in kv order.
  int32_t state_row;
};

// One prefill tile: a request and the first packed query row of its tile (packed row p of a KV
// head is query row p / group, query head kv_head * group + p % group), and the K/V chunk it
// reads. Array: [num_items], longest first.
//   Unsplit request: kv positions [0, kv_len) (kv_chunk_end = kPrefillWholeKv), the tile writes
//   o and lse (state_base = -1).
//   Split request (split-KV): kv positions [kv_chunk_begin, kv_chunk_end), chunk `chunk` of
//   `num_chunks`; the tile writes the partial state of its query row qi and this chunk at state
//   row state_base + qi * num_chunks + chunk (normalised o in fp32, lse), merged afterwards.
inline constexpr int32_t kPrefillWholeKv = 0x7fffffff;
struct PrefillItem {
  int32_t request;
  int32_t packed_start;
  int32_t kv_chunk_begin = 0;
  int32_t kv_chunk_end = kPrefillWholeKv;
  int32_t state_base = -1;
  int32_t chunk = 0;
  int32_t num_chunks = 1;
};

}  // namespace attnd::kernels::cuda::internal
