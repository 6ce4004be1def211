// Internal to the CUDA prefill kernels: the kernel's parameter block, the tile shape per head
// dim (shared by the host-side planner and the kernels), and the launcher declarations that the
// generated per-(head_dim, dtype) .cu files instantiate.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "numerics.h"

namespace attnd::kernels::cuda::prefill {

// --- Tile shapes ---------------------------------------------------------------------------
// A CTA owns kWarps warps; each warp owns kMmaQ 16-row MMA fragments of "packed" query rows, so
// a CTA tile holds CtaRows(D) packed rows. GQA fuses a KV head's query heads into M: packed row
// p of request b and KV head hk is (query row p / group, query head hk * group + p % group).
// The KV loop walks TileKv(D) keys per step.
constexpr int kWarps = 4;
// Tile variants. kDefault: 16 rows per warp (MmaQ 1) for D >= 128, no register spills.
// kWide (D = 128 only; other head dims fall back to kDefault): 32 rows per warp and 32 keys per
// step, halving the shared-memory reads per MMA; kWide3: the same with a 3-stage K/V pipeline.
// kWide64 (D = 128 only): 32 rows per warp and 64 keys per step (the FA2 shape: 128-row CTA,
// 128 x 64 tiles). Chosen per plan by PreparePrefill (environment
// ATTND_PREFILL_TILE=default|wide|wide3|wide64 overrides kDefaultVariant128).
enum class TileVariant : int { kDefault = 0, kWide = 1, kWide64 = 2, kWide3 = 3 };
constexpr bool IsWide(int head_dim, TileVariant v) {
  return (v == TileVariant::kWide || v == TileVariant::kWide64 || v == TileVariant::kWide3) &&
         head_dim == 128;
}
constexpr int MmaQ(int head_dim, TileVariant v = TileVariant::kDefault) {
  return IsWide(head_dim, v) ? 2 : (head_dim <= 64 ? 2 : 1);
}
constexpr int CtaRows(int head_dim, TileVariant v = TileVariant::kDefault) {
  return kWarps * 16 * MmaQ(head_dim, v);
}
constexpr int TileKv(int head_dim, TileVariant v = TileVariant::kDefault) {
  return IsWide(head_dim, v) ? (v == TileVariant::kWide64 ? 64 : 32)
                             : (head_dim <= 128 ? 64 : 16);
}
// K/V pipeline depth (cp.async stages).
constexpr int Stages(int head_dim, TileVariant v = TileVariant::kDefault) {
  return IsWide(head_dim, v) && v == TileVariant::kWide3 ? 3 : 2;
}
// The variant PreparePrefill picks for head_dim 128 when ATTND_PREFILL_TILE is unset
// (H200, 2026-11-21, runs b and d of NOTES.md: wide64 was the fastest or within noise on
// every bench row).
constexpr TileVariant kDefaultVariant128 = TileVariant::kWide64;

// One work item: a request and the first packed row of its tile.
struct PrefillItem {
  int32_t request;
  int32_t packed_start;
};

// Everything a prefill kernel reads; passed by value as a __grid_constant__ parameter.
// All pointers are device pointers. q/o: [qo_nnz, num_qo_heads, head_dim] dense; lse:
// [qo_nnz, num_qo_heads] float32 or null.
struct PrefillParams {
  const void* q = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  const int32_t* qo_indptr = nullptr;  // [batch + 1]
  int32_t num_qo_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t group = 1;  // num_qo_heads / num_kv_heads

  // K/V rows. Row (kv position pos, kv head h) of request b starts at
  //   paged:  k_base + indices[indptr[b] + pos / page_size] * page_stride
  //                  + (pos % page_size) * token_stride + h * head_stride
  //   ragged: k_base + (indptr[b] + pos) * token_stride + h * head_stride
  // and the V row at the same offset from v_base (elements).
  const void* k_base = nullptr;
  const void* v_base = nullptr;
  int64_t page_stride = 0;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
  int32_t page_size = 1;
  int32_t page_shift = -1;                 // log2(page_size) if a power of two, else -1
  const int32_t* kv_indptr = nullptr;      // paged: page indptr; ragged: row indptr
  const int32_t* kv_indices = nullptr;     // paged only
  const int32_t* last_page_len = nullptr;  // paged only

  const PrefillItem* items = nullptr;  // [num_items]
  int32_t num_items = 0;
  // Rows of a planned item (CtaRows of the plan's variant) and the CTAs that share one: the
  // kernel's tile is item_rows / sub_items rows (sub_items > 1: a RoPE run of a wide-tile plan).
  int32_t item_rows = 0;
  int32_t sub_items = 1;

  // Variant options (already resolved on the host).
  internal::LogitScale logit;  // raw q.k -> base-2 logit (numerics.h)
  bool causal = false;
  int32_t window_left = -1;    // -1: no window
  bool rope = false;           // RoPE LLaMA: the kRope instantiation runs
  const int32_t* rope_offsets = nullptr;  // [batch] or null
  internal::RopeFreq rope_freq[internal::kMaxRopePairs];  // pairs 0 .. head_dim/2 - 1 (rope)
};

// Launchers, explicitly instantiated in prefill_hd<D>_<dtype>*.cu.
// T is __half or __nv_bfloat16; kPaged selects the K/V addressing above; kRope the kernel that
// rotates q and k (the default tile only).
template <int kHeadDim, typename T, bool kPaged, TileVariant kVariant = TileVariant::kDefault,
          bool kRope = false>
cudaError_t LaunchPrefill(const PrefillParams& params, cudaStream_t stream);

}  // namespace attnd::kernels::cuda::prefill
