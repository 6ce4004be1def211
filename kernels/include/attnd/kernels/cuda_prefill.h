// CUDA batch prefill/append attention (tensor cores) over the paged cache or ragged K/V.
//
// Plan/run split: PreparePrefill computes, once per batch, the tiling of every request's query
// rows into CTA work items from host copies of qo_indptr and kv lengths, and uploads it to device
// memory that the returned PrefillWork owns. RunPagedPrefill / RunRaggedPrefill then launch one
// layer each and may be called many times with the same PrefillWork.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/kernels/schedule_options.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda {

class PrefillWork;  // opaque; owns its device arrays (RAII)
struct PrefillWorkDeleter {
  void operator()(PrefillWork* w) const;
};
using PrefillWorkPtr = std::unique_ptr<PrefillWork, PrefillWorkDeleter>;

// qo_indptr: [batch + 1] host; kv_len: [batch] host (normally kv_len[b] >= qo_len[b]; when it
// is smaller, the earliest query rows sit at negative kv positions, as in cpu_reference.h).
// The work is valid for any run whose batch has these lengths and head counts, whatever its
// options (causal, window, RoPE, soft cap) and KV layout (paged, any page size, or ragged).
// options.tile picks the tile shape (PrefillScheduleOptions; default: the measured best).
// Errors: INVALID_ARGUMENT for inconsistent sizes, UNIMPLEMENTED for a head_dim that is not
// compiled (ATTND_CUDA_HEAD_DIMS), RESOURCE_EXHAUSTED / INTERNAL for a failed allocation/copy.
// The upload is issued on `stream` and not waited for (no host synchronisation): runs on
// `stream` are ordered after it, runs on another stream wait for it on the device (an event).
absl::StatusOr<PrefillWorkPtr> PreparePrefill(std::span<const int32_t> qo_indptr,
                                              std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                              int32_t num_kv_heads, int32_t head_dim,
                                              const PrefillScheduleOptions& options,
                                              cudaStream_t stream);
// The same with the default PrefillScheduleOptions.
absl::StatusOr<PrefillWorkPtr> PreparePrefill(std::span<const int32_t> qo_indptr,
                                              std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                              int32_t num_kv_heads, int32_t head_dim,
                                              cudaStream_t stream);

// params: device pointers (q, o, lse, qo_indptr, page table). Errors (unsupported head_dim or
// dtype, launch failure) come back as a status; nothing aborts.
absl::Status RunPagedPrefill(const PrefillWork& work, const PagedAttentionParams& params,
                             cudaStream_t stream);
absl::Status RunRaggedPrefill(const PrefillWork& work, const RaggedAttentionParams& params,
                              cudaStream_t stream);
// The kernel a run of this plan without RoPE launches: "sm90" (the warp-specialized wgmma
// kernel, head_dim 64/128 on compute capability 9.0), "fa2-wide64", "fa2-wide", "fa2-wide3" or
// "fa2-default". Runs with RoPE on the fly take the FA2 default-tile RoPE kernel whatever the
// plan ("fa2-rope"). For tests, benchmarks and logs.
const char* PrefillKernelName(const PrefillWork& work);
// The checks the two run functions make before they launch anything (see cuda_launch.h).
absl::Status CheckPagedPrefill(const PrefillWork& work, const PagedAttentionParams& params);
absl::Status CheckRaggedPrefill(const PrefillWork& work, const RaggedAttentionParams& params);

}  // namespace attnd::kernels::cuda
