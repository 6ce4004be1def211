// Public launch API of the attnd CUDA kernels, usable without the daemon.
//
// All pointers inside the params structs are device pointers (the page table too). Every
// function returns a status instead of aborting: INVALID_ARGUMENT / UNIMPLEMENTED for shapes or
// dtypes the kernels do not support, INTERNAL for a failed launch (cudaGetLastError is checked
// after every launch).
//
// Preconditions (checked before anything is launched, so that no parameter can fault the device;
// the Check* functions run the same checks without launching): tensors accessed with 16-byte
// vectors (q, o, new k/v, the paged cache, merge v_in/v_out) need 16-byte aligned pointers and
// strides that are multiples of 16 bytes; lse and merge s_in/s_out need 4-byte alignment; page
// tables and indptr arrays must be set. INVALID_ARGUMENT names the field and its value, e.g.
// "decode: q=0x7f0000000002 is not 16-byte aligned".
//
// Decode uses a plan/run split like prefill (cuda_prefill.h): PrepareDecode computes, from host
// copies of the kv lengths, the split-KV schedule of a batch (which request is cut into how many
// chunks so that the grid fills the GPU) and allocates the workspace for the partial states;
// RunPagedDecode then runs one layer and may be called many times (every layer of a step) with
// the same DecodeWork. Runs that share a DecodeWork must be ordered (one stream, or events),
// because they share its workspace.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/kernels/cuda_prefill.h"
#include "attnd/kernels/schedule_options.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda {

// True when the kernels for head_dim were compiled (ATTND_CUDA_HEAD_DIMS); the others give
// UNIMPLEMENTED.
bool HeadDimCompiled(int32_t head_dim);

// Writes new tokens' K/V into their pages (see AppendKvParams). Any dtype, any page size, any
// strides with head_dim * sizeof(dtype) a multiple of 16 bytes and 16-byte aligned rows.
absl::Status LaunchAppendKv(const AppendKvParams& params, cudaStream_t stream);
absl::Status CheckAppendKv(const AppendKvParams& params);

// Merges attention states (see MergeStatesParams); dtype fp32, fp16 or bf16, head_dim % 4 == 0.
absl::Status LaunchMergeStates(const MergeStatesParams& params, cudaStream_t stream);
absl::Status CheckMergeStates(const MergeStatesParams& params);

// DecodeScheduleOptions (how PrepareDecode cuts long sequences into chunks): schedule_options.h.

class DecodeWork;  // opaque; owns its device arrays and workspace (RAII)
struct DecodeWorkDeleter {
  void operator()(DecodeWork* w) const;
};
using DecodeWorkPtr = std::unique_ptr<DecodeWork, DecodeWorkDeleter>;

// kv_len: [batch] host, each >= 1. page_size aligns chunk boundaries to pages. The work may be
// used with any PagedAttentionParams whose batch has these kv lengths and these head counts.
absl::StatusOr<DecodeWorkPtr> PrepareDecode(std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                            int32_t num_kv_heads, int32_t head_dim,
                                            int32_t page_size, const DecodeScheduleOptions& options,
                                            cudaStream_t stream);

// A CUDA-graph-safe decode work (issue 13 item 3): planned for kv_len now (its batch <= max_batch)
// with device arrays sized for up to max_batch requests, so that RunPagedDecode calls on it can be
// captured into a CUDA graph once and replayed after UpdateDecode re-planned it for a new batch.
// Its runs launch a fixed grid (the item capacity; CTAs past the valid items exit at once) and
// always the merge pass (when it may split), read the schedule from its device arrays and
// allocate nothing; their params keep the same pointers from run to run: q and o sized for
// max_batch rows (rows past the current batch are not written), the page table's indptr /
// indices / last_page_len buffers rewritten in place by the caller for each step's batch, and
// batch_size = max_batch. Only the first kv_len.size() requests are computed.
absl::StatusOr<DecodeWorkPtr> PrepareDecodeForGraph(
    std::span<const int32_t> kv_len, int32_t max_batch, int32_t num_qo_heads, int32_t num_kv_heads,
    int32_t head_dim, int32_t page_size, const DecodeScheduleOptions& options, cudaStream_t stream);
// Re-plans a graph-safe work for a new batch (kv_len.size() <= max_batch, each >= 1) and writes
// the schedule into its device arrays, in `stream`'s order (before the next replay on it): the
// same schedule rule as PrepareDecode, coarser chunks if the items would pass the capacity. Host
// cost: the plan and one pinned host-to-device copy (it waits for the previous update's copy, if
// still pending, before reusing the pinned buffer). FAILED_PRECONDITION for a work from
// PrepareDecode; INVALID_ARGUMENT for a bad batch (nothing changed).
absl::Status UpdateDecode(DecodeWork& work, std::span<const int32_t> kv_len, cudaStream_t stream);

// What PrepareDecode decided (for logs, tests and benchmarks).
struct DecodeScheduleInfo {
  int32_t batch_size = 0;
  int32_t num_chunks = 0;     // work items along the sequence axis, all requests together
  int32_t chunk_tokens = 0;   // 0 = no request was split
  int32_t head_groups = 0;    // CTAs per chunk along the head axis
  bool split = false;         // some request has more than one chunk (a merge pass runs)
  bool balanced = false;      // the load-balancing rule cut a batch that filled the device
  bool tensor_cores = false;  // the mma.sync kernel (else the CUDA-core kernel)
};
DecodeScheduleInfo GetDecodeScheduleInfo(const DecodeWork& work);

// Batch decode over the paged cache: params.qo has one query row per request (qo_indptr is
// ignored), q/o dtype == kv dtype (fp16 or bf16), head_dim 64/128/256 (those instantiated).
// Honours every AttentionOptions field (RoPE LLaMA, soft cap, sliding window; rope_offsets is
// a device pointer or null); writes lse when params.qo.lse is set.
absl::Status RunPagedDecode(const DecodeWork& work, const PagedAttentionParams& params,
                            cudaStream_t stream);
// The checks RunPagedDecode makes before it launches anything.
absl::Status CheckPagedDecode(const DecodeWork& work, const PagedAttentionParams& params);

}  // namespace attnd::kernels::cuda
