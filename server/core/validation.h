// Pure validation of every request field, done BEFORE anything touches backend memory.
//
// Every error names the offending field and its value, e.g.
//   INVALID_ARGUMENT "q.shape=[4,32,64], expected [4,32,128]"
//   OUT_OF_RANGE     "kv_indices[5]=17 is outside 0..15 (pool 'p' has 16 pages)"
//   PERMISSION_DENIED "kv_indices[5]=17: page 17 of pool 'p' is not held by this session"
// Arithmetic on client-supplied sizes is done in 64 bits with explicit overflow checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/types.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/page_allocator.h"

namespace attnd::server {

// Limits that keep one request from asking for absurd amounts of work or memory.
inline constexpr int32_t kMaxBatchSize = 1 << 16;
inline constexpr int32_t kMaxPageSize = 1 << 16;
inline constexpr int32_t kMaxLayers = 1 << 12;
inline constexpr int32_t kMaxKvHeads = 1 << 12;
inline constexpr size_t kCudaIpcHandleBytes = 64;

// The shape of a pool, derived from a validated CreatePoolRequest.
struct PoolGeometry {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 0;
  kernels::DType kv_dtype = kernels::DType::kFloat16;
  int32_t num_pages = 0;
  uint64_t page_bytes = 0;  // one page of one layer: 2 * page_size * num_kv_heads * head_dim * elem
  uint64_t layer_bytes = 0;  // num_pages * page_bytes
  uint64_t total_bytes = 0;  // num_layers * layer_bytes
  // FP8 pools: CreatePoolRequest.k_scale / v_scale expanded to [num_layers * num_kv_heads]
  // (layer-major), or empty (every scale 1).
  std::vector<float> k_scale, v_scale;
};

// A client-supplied value as error messages echo it: at most `max_bytes` bytes, control and
// non-ASCII bytes escaped (\xNN), and "...(N bytes)" when cut, so that no message (and no log
// line made from one) grows with the request or forges lines.
std::string Echo(absl::string_view value, size_t max_bytes = 64);

// NOT_FOUND for an id this session does not own: "<field>='<id>'<tail>" (the id Echo'ed), e.g.
// "plan_id='x' is not a plan of this session". Ids of other sessions get the same answer.
absl::Status NotOwnedError(absl::string_view field, absl::string_view id, absl::string_view tail);
inline constexpr absl::string_view kNoSuchEvent = ": no such event in this session";

// x * y, or nullopt-like false on overflow (unsigned 64-bit).
bool CheckedMul(uint64_t x, uint64_t y, uint64_t* out);

// Pool names: [A-Za-z0-9_.-]{1,64}. INVALID_ARGUMENT naming `field`.
absl::Status ValidatePoolName(absl::string_view name, absl::string_view field = "name");

// Checks the geometry against the backend's capabilities and computes the pool size (from
// num_pages or memory_budget_bytes, exactly one of which must be set).
absl::StatusOr<PoolGeometry> ValidateCreatePool(const v1::CreatePoolRequest& request,
                                                const kernels::BackendInfo& backend);

// AllocatePages.count: >= 1.
absl::Status ValidatePageCount(int32_t count);

// Every id in [0, num_pages): OUT_OF_RANGE "page_ids[2]=40 is outside 0..15 (pool 'p' has 16
// pages)".
absl::Status ValidatePageIds(absl::Span<const int32_t> ids, absl::string_view field,
                             int32_t num_pages, absl::string_view pool_name);

// Every listed page has at least one reference in `held`: PERMISSION_DENIED
// "page_ids[1]=7: page 7 of pool 'p' is not held by this session".
absl::Status CheckPagesHeld(absl::Span<const int32_t> ids, absl::string_view field,
                            const PageLedger& held, absl::string_view pool_name);
// That error for one page, `name` the field with its index ("deltas[0].join.kv_indices[3]").
absl::Status PageNotHeldError(absl::string_view name, int32_t page, absl::string_view pool_name);

// How ValidatePageTable's messages name the table: `prefix` goes before each field ("" for the
// plan's own, "cascade_levels[1]." for a level), `unit` names an entry ("request", "group"),
// `count` the number of entries ("batch_size", "num_groups").
struct PageTableNames {
  absl::string_view prefix, unit, count;
};
// A CSR page table of up to max_entries entries against the pool: kv_indptr [n + 1] from 0,
// strictly increasing (every entry has >= 1 page), ending at len(kv_indices); page ids in
// 0..num_pages-1 (OUT_OF_RANGE); kv_last_page_len [n] in 1..page_size. Returns each entry's
// kv_len. INVALID_ARGUMENT naming the field and value, e.g. "kv_last_page_len[3]=17 is outside
// 1..page_size (16)".
absl::StatusOr<std::vector<int64_t>> ValidatePageTable(
    const PageTableNames& names, absl::Span<const int32_t> kv_indptr,
    absl::Span<const int32_t> kv_indices, absl::Span<const int32_t> last_len,
    const PoolGeometry& pool, absl::string_view pool_name, int32_t max_entries);

// The positions in a request's page list of the pages its appends write: those holding its last
// qo_len of kv_len tokens (first > last when qo_len is 0).
struct SlotRange {
  int64_t first = 0;
  int64_t last = -1;
};
inline SlotRange WrittenSlots(int64_t kv_len, int64_t qo_len, int32_t page_size) {
  if (qo_len <= 0) return {};
  return {(kv_len - qo_len) / page_size, (kv_len - 1) / page_size};
}

// A plan request checked against the pool's geometry (not yet against page ownership).
struct ValidatedPlan {
  kernels::PlanSpec spec;               // qo_indptr always filled (decode: 0, 1, ..., B)
  std::vector<int32_t> distinct_pages;  // every page the plan reads, sorted, once each
  std::vector<int32_t> written_pages;   // pages holding the last qo_len tokens of some request
  int64_t kv_tokens = 0;                // sum of kv_len (of the last level on a cascade plan)
};
absl::StatusOr<ValidatedPlan> ValidatePlan(const v1::CreatePlanRequest& request,
                                           const PoolGeometry& pool, absl::string_view pool_name,
                                           int32_t max_batch_size = kMaxBatchSize);

// Pages that appends will write must not be referenced by anyone but this session: its client
// references (`held`) plus its plans' pins (`pinned`) must account for the whole refcount.
// FAILED_PRECONDITION "page 9 is shared with another session; appends need an unshared page".
absl::Status CheckPagesUnshared(absl::Span<const int32_t> written_pages,
                                const PageAllocator& allocator, const PageLedger& held,
                                const PageLedger& pinned);

// layer in [0, num_layers): OUT_OF_RANGE "layer=40 is outside 0..31".
absl::Status ValidateLayer(int32_t layer, int32_t num_layers);

// Checks a tensor's dtype, shape and (inline) byte size; returns the byte size
// product(shape) * sizeof(dtype). `name` prefixes every message ("q", "k", ...).
// INVALID_ARGUMENT for a tensor without data, a wrong dtype or shape, or a wrong inline size.
absl::StatusOr<uint64_t> ValidateTensor(const v1::Tensor& tensor, absl::string_view name,
                                        kernels::DType expected_dtype,
                                        absl::Span<const int64_t> expected_shape);

// q's dtype must be one the backend runs: INVALID_ARGUMENT "q.dtype=DTYPE_FLOAT8_E4M3 is not
// supported for queries (supported: ...)". Returns the kernels dtype.
absl::StatusOr<kernels::DType> ValidateQueryDType(const v1::Tensor& q,
                                                  const kernels::BackendInfo& backend);

// A slice [offset, offset + bytes) of a registered buffer mapped at `base`, `buffer_size` bytes:
// INVALID_ARGUMENT when offset is not a multiple of the element size or base + offset is not
// aligned to `alignment` bytes (the backend's tensor_alignment_bytes; 0 = none), OUT_OF_RANGE
// when the slice does not fit.
absl::Status ValidateSlice(absl::string_view name, const v1::BufferSlice& slice, uint64_t bytes,
                           uint64_t elem_size, uint32_t alignment, const void* base,
                           uint64_t buffer_size);

// Attention options: defaults filled in (rope_theta 0 -> 1e4, rope_scale 0 -> 1), ranges checked
// (finite, non-negative soft cap, window_left >= -1 when set (-1 = no window), rope_offsets
// empty or batch_size long). The returned options carry no rope_offsets pointer; the caller passes
// them separately.
absl::StatusOr<kernels::AttentionOptions> ValidateOptions(const v1::AttentionOptions& options,
                                                          int32_t batch_size);

// The shape of a MergeState / MergeStates, as its first v tensor gives it.
inline constexpr int64_t kMaxMergeHeads = 1 << 16;
inline constexpr int64_t kMaxMergeHeadDim = 1024;
inline constexpr int64_t kMaxMergeStateRows = (int64_t{1} << 31) - 1;  // seq_len * num_states
struct MergeShape {
  kernels::DType dtype = kernels::DType::kFloat16;
  int64_t seq_len = 0;
  int64_t num_states = 2;  // MergeState: 2 (v_a and v_b)
  int64_t num_heads = 0;
  int64_t head_dim = 0;
};
// The dtype (float16, bfloat16 or float32) and shape of the v a merge starts from: `name` is
// [seq_len, num_heads, head_dim] (MergeState, with_states false) or [seq_len, num_states,
// num_heads, head_dim] (MergeStates), with seq_len >= 0, num_states >= 0, seq_len (MergeStates:
// seq_len * num_states) at most kMaxMergeStateRows, num_heads in 1..kMaxMergeHeads and head_dim a
// multiple of 4 in 4..kMaxMergeHeadDim. INVALID_ARGUMENT naming the field and its value otherwise,
// e.g. "v_a.shape=[4,8,66]: head_dim=66 must be a multiple of 4 in 4..1024".
absl::StatusOr<MergeShape> ValidateMergeInput(const v1::Tensor& v, absl::string_view name,
                                              bool with_states);

// The shape of a RunRagged, as its q and k give it.
inline constexpr int64_t kMaxRaggedQoHeads = 1 << 16;
inline constexpr int64_t kMaxRaggedTokens = (int64_t{1} << 31) - 1;
struct RaggedShape {
  kernels::DType dtype = kernels::DType::kFloat16;
  int64_t qo_tokens = 0;
  int64_t num_qo_heads = 0;
  int64_t head_dim = 0;
  int64_t kv_tokens = 0;
  int64_t num_kv_heads = 0;
};
// q [qo_tokens, num_qo_heads, head_dim] in one of the backend's q dtypes, head_dim one of its
// head_dims; k [kv_tokens, num_kv_heads, head_dim] in q's dtype, num_kv_heads in
// 1..kMaxKvHeads and dividing num_qo_heads (at most kMaxRaggedQoHeads); token counts at most
// kMaxRaggedTokens. (v is k's shape: the caller binds it with k's.) INVALID_ARGUMENT naming the
// field, e.g. "k.shape=[9,3,64]: num_kv_heads=3 does not divide num_qo_heads=8 (q.shape)".
absl::StatusOr<RaggedShape> ValidateRaggedShape(const v1::Tensor& q, const v1::Tensor& k,
                                                const kernels::BackendInfo& backend);
// A ragged run's qo_indptr and kv_indptr: batch_size + 1 entries each, batch_size in
// 1..kMaxBatchSize, from 0, never decreasing, ending at qo_tokens >= 1 (q.shape[0]) and at
// kv_tokens (k.shape[0]).
absl::Status ValidateRaggedIndptrs(absl::Span<const int32_t> qo_indptr,
                                   absl::Span<const int32_t> kv_indptr, const RaggedShape& shape);

// RegisterBuffer: exactly one source, size_bytes >= 1, a shared_memory_fd token or a 64-byte CUDA
// IPC handle; shared memory by name is refused (FAILED_PRECONDITION).
absl::Status ValidateRegisterBuffer(const v1::RegisterBufferRequest& request);

// "[4,32,128]"; at most 8 dimensions are shown ("[1,2,...] (4000000 dims)").
std::string ShapeString(absl::Span<const int64_t> shape);

}  // namespace attnd::server
