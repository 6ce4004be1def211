// Planning of batch prefill/append (CPU only, no CUDA calls): the tile shapes per head dim and
// tile variant (shared with the kernel, which is instantiated per shape), the variant a plan uses,
// the tiling of every request's packed query rows into CTA work items, and split-KV for short
// query rows on long K/V.
//
// A CTA owns kWarps warps; each warp owns MmaQ 16-row MMA fragments of "packed" query rows, so
// a CTA tile holds CtaRows(D) packed rows. GQA fuses a KV head's query heads into M: packed row
// p of request b and KV head hk is (query row p / group, query head hk * group + p % group).
// The KV loop walks TileKv(D) keys per step.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/kernels/schedule_options.h"
#include "planning/split_kv.h"
#include "planning/work_items.h"

namespace attnd::kernels::cuda::internal {

inline constexpr int kPrefillWarps = 4;
// Tile variants. kDefault: 16 rows per warp (MmaQ 1) for D >= 128, no register spills.
// kWide (D = 128 only; other head dims fall back to kDefault): 32 rows per warp and 32 keys per
// step, halving the shared-memory reads per MMA; kWide3: the same with a 3-stage K/V pipeline.
// kWide64 (D = 128 only): 32 rows per warp and 64 keys per step (the FA2 shape: 128-row CTA,
// 128 x 64 tiles). Chosen per plan by ResolvePrefillTile (PrefillScheduleOptions::tile).
// kHopper (head_dim 64 and 128, sm_90 devices): the warp-specialized wgmma kernel
// (prefill/prefill_sm90_kernel.cuh): 128-row CTAs (two consumer warpgroups of 64 rows), 128 keys
// per step. Its plans run RoPE on the default-tile FA2 kernel (CtaRows(kDefault) rows per CTA).
enum class TileVariant : int { kDefault = 0, kWide = 1, kWide64 = 2, kWide3 = 3, kHopper = 4 };
constexpr bool IsWide(int head_dim, TileVariant v) {
  return (v == TileVariant::kWide || v == TileVariant::kWide64 || v == TileVariant::kWide3) &&
         head_dim == 128;
}
constexpr bool IsHopper(int head_dim, TileVariant v) {
  return v == TileVariant::kHopper && (head_dim == 64 || head_dim == 128);
}
constexpr int MmaQ(int head_dim, TileVariant v = TileVariant::kDefault) {
  return IsWide(head_dim, v) ? 2 : (head_dim <= 64 ? 2 : 1);
}
constexpr int CtaRows(int head_dim, TileVariant v = TileVariant::kDefault) {
  return IsHopper(head_dim, v) ? 128 : kPrefillWarps * 16 * MmaQ(head_dim, v);
}
constexpr int TileKv(int head_dim, TileVariant v = TileVariant::kDefault) {
  if (IsHopper(head_dim, v)) return 128;
  return IsWide(head_dim, v) ? (v == TileVariant::kWide64 ? 64 : 32) : (head_dim <= 128 ? 64 : 16);
}
// K/V pipeline depth (cp.async stages).
constexpr int Stages(int head_dim, TileVariant v = TileVariant::kDefault) {
  return IsWide(head_dim, v) && v == TileVariant::kWide3 ? 3 : 2;
}
// The variant kAuto picks for head_dim 128 (H200, 2026-11-21, runs b and d of
// docs/prefill-notes.md: wide64 was the fastest or within noise on every bench row).
inline constexpr TileVariant kDefaultVariant128 = TileVariant::kWide64;

// The plan's tile variant: the option, kAuto resolved per head dim and device (sm90: the device
// runs the sm_90a kernels, compute capability 9.0); kAuto is kHopper on sm90 at head_dim 64 and
// 128, else kWide64 at 128 and kDefault elsewhere. A tile asked for where its kernel does not
// exist (wide at a head dim other than 128, kHopper off sm90 or at 256) resolves as kAuto does.
// custom_mask: the plan's runs have a custom mask, which the wide tiles' kernels do not apply:
// those resolve as kDefault.
TileVariant ResolvePrefillTile(int32_t head_dim, PrefillScheduleOptions::Tile tile, bool sm90,
                               bool custom_mask = false);

// Work items of CtaRows(head_dim, variant) = cta_rows packed rows each, longest first (the cost
// of a tile is the number of keys a causal tile scans, an upper bound of its work; the tail of
// the grid is then made of short tiles). qo_indptr: [batch + 1], kv_len: [batch] (checked by
// checks::PrefillPlan). INVALID_ARGUMENT when a packed row index does not fit in int32.
absl::StatusOr<std::vector<PrefillItem>> PlanPrefillItems(std::span<const int32_t> qo_indptr,
                                                          std::span<const int32_t> kv_len,
                                                          int32_t group, int32_t cta_rows);

// The whole schedule of a plan. Split-KV: when the unsplit grid (tiles x num_kv_heads CTAs) does
// not fill options.waves waves of resident CTAs (a few short queries on long K/V: qo 16 on kv
// 32768 runs on num_kv_heads CTAs), every request's K/V is cut into chunks of chunk_tokens keys
// (a multiple of the kernel's tile_kv, at least options.min_chunk_tokens: the smallest whose
// grid still fits the waves) and every tile runs once per chunk, writing partial states that the
// merge pass (merge/merge_states.cu over state_indptr) combines into o and lse. A request no
// longer than one chunk is not split (its tiles write o directly).
struct PrefillSchedule {
  std::vector<PrefillItem> items;  // [num_items]: tiles x chunks, longest first
  int32_t chunk_tokens = 0;        // 0: no request was split
  // Split only (else empty / 0): query row r (qo_indptr order) has the state rows
  // [state_indptr[r], state_indptr[r + 1]), one per chunk of its request; a row of an unsplit
  // request has one (never written: the merge skips rows with a single state). [qo_nnz + 1].
  std::vector<int32_t> state_indptr;
  int64_t num_states = 0;  // partial_o [num_states, num_qo_heads, D] fp32, lse [num_states, H]
};
bool PrefillNeedsDeviceFill(const PrefillScheduleOptions& options);
absl::StatusOr<PrefillSchedule> PlanPrefillSchedule(std::span<const int32_t> qo_indptr,
                                                    std::span<const int32_t> kv_len, int32_t group,
                                                    int32_t num_kv_heads, int32_t cta_rows,
                                                    int32_t tile_kv,
                                                    const PrefillScheduleOptions& options,
                                                    const DeviceFill& fill);

// The prefill plan's one device allocation: items | state_indptr | partial_lse | partial_o, each
// section 256-byte aligned (AlignWorkspace), the last three empty unless the schedule splits.
// partial_lse: [num_states, num_qo_heads] fp32; partial_o: [num_states, num_qo_heads, head_dim]
// in o's 16-bit type (fp16 or bf16, the only prefill outputs). The first upload_bytes (items and
// state_indptr) are uploaded from a host image with this layout; the partial states are written
// by the kernels.
struct PrefillWorkspaceLayout {
  size_t items = 0;  // byte offsets
  size_t state_indptr = 0;
  size_t partial_lse = 0;
  size_t partial_o = 0;
  size_t upload_bytes = 0;
  size_t total_bytes = 0;
};
PrefillWorkspaceLayout LayoutPrefillWorkspace(const PrefillSchedule& schedule, int32_t num_qo_heads,
                                              int32_t head_dim);

}  // namespace attnd::kernels::cuda::internal
