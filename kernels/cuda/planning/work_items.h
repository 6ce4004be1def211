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
// head is query row p / group, query head kv_head * group + p % group). Array: [num_items],
// longest first.
struct PrefillItem {
  int32_t request;
  int32_t packed_start;
};

}  // namespace attnd::kernels::cuda::internal
