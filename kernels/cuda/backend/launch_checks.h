// The launch preconditions of every attnd CUDA kernel, in one place. Every launcher (decode,
// prefill, append_kv, merge_states and the plans of decode and prefill) calls the check of its
// kernel before it issues any device work, so that no parameter a caller of the kernels library
// can pass (a misaligned buffer slice, strides that break the 16-byte vector accesses, a head_dim
// that is not compiled, a null page table) reaches a kernel: a misaligned or out-of-bounds access
// on the device breaks the whole CUDA context (sticky error), for every client of the daemon.
//
// What the kernels need (and what is checked here):
//  - tensors read or written with 16-byte vectors (q, o, new k/v, kv data, merge v_in/v_out):
//    16-byte aligned pointers, and every stride, in bytes, a multiple of 16;
//  - float32 rows written or read one element at a time (lse, merge s_in/s_out): 4-byte aligned;
//  - int32 arrays (page tables, qo_indptr, rope offsets): non-null where used, 4-byte aligned;
//  - dtypes, head dims, head counts and grid sizes the instantiations support.
// Errors: INVALID_ARGUMENT (a field with a bad value; the message names the field and the value,
// e.g. "prefill: q=0x7f0000000002 is not 16-byte aligned") or UNIMPLEMENTED (a supported kind of
// value the build does not have: a dtype or head_dim without kernels).
// Host code only (absl); compiled by the host compiler and by nvcc (prefill/prefill.cu).
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda::checks {

// Byte alignment of the tensors the kernels access with 16-byte vectors.
inline constexpr uint32_t kVectorBytes = 16;

// True when kernels for head_dim were compiled (ATTND_CUDA_HEAD_DIMS).
bool HeadDimBuilt(int32_t head_dim);
// True when the tensor-core decode kernel was compiled for head_dim (64 and 128 when built).
bool TcDecodeBuilt(int32_t head_dim);

// The shape a decode or prefill plan was made for (a run must match it).
struct PlanShape {
  int32_t batch_size = 0;
  int32_t num_qo_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

// PrepareDecode: kv_len[b] >= 1, head counts, head_dim built, page_size >= 1; the tensor-core
// kernel exists for head_dim 64 and 128 only (tensor_cores_forced).
absl::Status DecodePlan(std::span<const int32_t> kv_len, int32_t num_qo_heads, int32_t num_kv_heads,
                        int32_t head_dim, int32_t page_size, bool tensor_cores_forced);
// PreparePrefill: qo_indptr monotone from 0, kv_len >= 0, head counts, head_dim built.
absl::Status PrefillPlan(std::span<const int32_t> qo_indptr, std::span<const int32_t> kv_len,
                         int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim);

// One run of a plan (q, o, lse, the paged cache or ragged K/V, options).
absl::Status DecodeRun(const PlanShape& plan, const PagedAttentionParams& params);
absl::Status PagedPrefillRun(const PlanShape& plan, const PagedAttentionParams& params);
absl::Status RaggedPrefillRun(const PlanShape& plan, const RaggedAttentionParams& params);

absl::Status AppendKv(const AppendKvParams& params);
absl::Status MergeStates(const MergeStatesParams& params);

}  // namespace attnd::kernels::cuda::checks
