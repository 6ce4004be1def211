// Planning of batch decode (CPU only, no CUDA calls): which kernel runs, how many query heads a
// CTA takes, the split-KV schedule (which request is cut into how many chunks so that the grid
// fills the GPU) and the layout of the plan's device workspace. decode.cc resolves the device
// facts (SM count, occupancy) and uploads; tests/unit/kernels/planning tests this on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/kernels/schedule_options.h"
#include "planning/split_kv.h"
#include "planning/work_items.h"

namespace attnd::kernels::cuda::internal {

// Query heads per CTA of the CUDA-core kernel (it is instantiated for tiles 1, 2, 4, 8): the
// smallest tile >= group, 8 for larger groups (several CTAs per KV head).
int DecodeHeadTile(int group);
// Query heads per CTA of the tensor-core kernel (the 16 rows of an mma.m16n8k16 A tile).
inline constexpr int kTcHeadTile = 16;

// Whether the tensor-core kernel runs: forced by options, or (kAuto) for GQA groups >= 4 when it
// is compiled for the head dim (tc_built: head_dim 64 or 128 in ATTND_CUDA_HEAD_DIMS).
bool UseTensorCoreDecode(DecodeScheduleOptions::Kernel kernel, int32_t group, bool tc_built);

// The device facts the split-KV schedule needs (split_kv.h); only read when the schedule may
// split automatically (NeedsDeviceFill).
bool NeedsDeviceFill(const DecodeScheduleOptions& options);

struct DecodeSchedule {
  int32_t chunk_tokens = 0;           // 0: no request was split
  bool split = false;                 // some request has more than one chunk (the merge pass runs)
  bool balanced = false;              // the balancing rule cut the batch (see below)
  std::vector<DecodeWorkItem> items;  // [num_items] in launch order
  // [batch + 1]: request b's partial-state rows are [indptr[b], indptr[b + 1]) (one row per item;
  // a request with one chunk keeps its row unused, its item's state_row is -1).
  std::vector<int32_t> chunk_indptr;
};

// kv_len: [batch] (each >= 1, checked by checks::DecodePlan). head_ctas: CTAs per chunk along the
// head axis (num_kv_heads * head tiles). Chunks are multiples of max(16, page_size) tokens, at
// least options.min_chunk_tokens. Automatic chunks (options.fixed_chunk_tokens 0):
//   - an under-filled batch (batch * head_ctas < options.waves waves of resident CTAs): the
//     smallest chunk whose grid still fits the waves (every CTA resident at once);
//   - else, with options.balance: the smallest chunk c with c + overhead >= the even share of
//     the work, sum over CTAs of (tokens + overhead) / resident CTAs (an LPT makespan bound:
//     no CTA runs longer than the share), taken only when it shortens the estimated makespan
//     max(longest CTA, share) by more than kMinBalanceGain; items are ordered longest first.
//   - else no split.
// max_items > 0 (graph-safe works, whose device arrays have a fixed capacity; >= batch): the
// chunk is doubled until the items fit (a request is never cut below it, so it terminates).
absl::StatusOr<DecodeSchedule> PlanDecodeSchedule(std::span<const int32_t> kv_len,
                                                  int64_t head_ctas, int32_t page_size,
                                                  const DecodeScheduleOptions& options,
                                                  const DeviceFill& fill, int64_t max_items = 0);

// The item capacity of a graph-safe work of at most max_batch requests: every automatic schedule
// of up to max_batch requests fits it without coarsening in the common cases (the under-filled
// rule keeps items x head_ctas within the target; a balanced cut adds about target / head_ctas
// chunks), and PlanDecodeSchedule coarsens the rest.
int64_t GraphItemCapacity(int64_t max_batch, int64_t head_ctas,
                          const DecodeScheduleOptions& options, const DeviceFill& fill);
// A balanced split must shorten the estimated makespan by this factor (its merge pass and
// partial-state traffic are not in the estimate).
inline constexpr double kMinBalanceGain = 1.15;

// The plan's one device allocation: items | chunk_indptr | live counts | partial_lse |
// partial_o, each section 256-byte aligned, for `items` work items and `batch` requests (a
// graph-safe work: its capacities). live counts: [2] int32, the valid items and requests of a
// graph-safe work. partial_lse: [items, num_qo_heads] fp32, partial_o: [items, num_qo_heads,
// head_dim] fp32 (rows by state_row), both empty unless `partial_states` (the schedule splits).
// The first three sections are what a schedule upload writes (upload_bytes).
struct DecodeWorkspaceLayout {
  size_t items = 0;  // byte offsets
  size_t chunk_indptr = 0;
  size_t live_counts = 0;
  size_t partial_lse = 0;
  size_t partial_o = 0;
  size_t upload_bytes = 0;
  size_t total_bytes = 0;
};
DecodeWorkspaceLayout LayoutDecodeWorkspace(size_t items, size_t batch, bool partial_states,
                                            int32_t num_qo_heads, int32_t head_dim);

}  // namespace attnd::kernels::cuda::internal
