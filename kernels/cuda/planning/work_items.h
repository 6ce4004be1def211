// The work items the planning layer writes and the kernels read: plain structs, uploaded as
// device arrays with the plan (host and device code; no CUDA types).
#pragma once

#include <cstdint>

namespace attnd::kernels::cuda::internal {

// One CTA of the decode kernels: request `request`, kv positions [chunk_start, chunk_end)
// (clipped to the request's kv length and window in the kernel), one group of query heads of one
// KV head (blockIdx.y). Array: [num_items], ordered by request, chunks in kv order.
struct DecodeWorkItem {
  int32_t request;
  int32_t chunk_start;
  int32_t chunk_end;
  int32_t split;  // 1: the request has several chunks; write a partial state at the item index
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
