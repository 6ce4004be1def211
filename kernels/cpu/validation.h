// Parameter checks of the CPU reference entry points. Every check returns INVALID_ARGUMENT with
// the field and the offending value; the kernels run only on parameters that passed.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels::cpu {

// kv_len of request b of a validated paged view: 0 without pages, else
// (n_pages - 1) * page_size + last_page_len[b].
int64_t PagedKvLen(const PagedKV& kv, int32_t b);

// Geometry, strides, dtype and the CSR page table (indptr monotone from >= 0, page ids in
// [0, num_pages), last_page_len in 1..page_size for requests with pages).
absl::Status ValidatePagedKV(const PagedKV& kv);
absl::Status ValidateRaggedKV(const RaggedKV& kv);
// q/o pointers, q dtype, head counts (num_qo_heads a multiple of num_kv_heads), batch size equal
// to the KV side's, qo_indptr monotone when present.
absl::Status ValidateQueryOutput(const QueryOutput& qo, int32_t kv_batch_size,
                                 int32_t num_kv_heads);
// Finite scales, rope_theta/rope_scale > 0 with RoPE (and an even head_dim), cap >= 0,
// window_left >= -1.
absl::Status ValidateOptions(const AttentionOptions& options, int32_t head_dim);

// Everything AppendKv, PagedAttention and RaggedAttention check before they write anything.
absl::Status ValidateAppendKv(const AppendKvParams& params);
absl::Status ValidatePagedAttention(const PagedAttentionParams& params);
absl::Status ValidateRaggedAttention(const RaggedAttentionParams& params);

}  // namespace attnd::kernels::cpu
