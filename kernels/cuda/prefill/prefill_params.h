// Internal interface between the prefill host code (prefill.cu: plan and run) and the prefill
// kernels (prefill_kernel.cuh, the FA2-class kernel, and prefill_sm90_kernel.cuh, the sm_90a one;
// instantiated per (head_dim, dtype, tile) in generated/prefill_*.cu):
// the kernel's parameter block and the launcher declarations. Tile shapes and work items: the
// planning layer (planning/prefill_tiling.h, planning/work_items.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/variant.h"
#include "planning/prefill_tiling.h"
#include "planning/work_items.h"

namespace attnd::kernels::cuda::internal {

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

  VariantParams variant;  // soft cap, causal, window, RoPE (ResolveVariant)

  // Split-KV (items with state_base >= 0, PrefillItem): the partial states, state row s of query
  // head h at partial_lse[s * num_qo_heads + h] (fp32) and partial_o[(s * num_qo_heads + h) *
  // head_dim] (o normalised, in o's 16-bit type). Null when the plan does not split.
  void* partial_o = nullptr;
  float* partial_lse = nullptr;
};

// Launchers, explicitly instantiated in generated/prefill_hd<D>_<dtype>*.cu.
// T is __half or __nv_bfloat16; kPaged selects the K/V addressing above; kRope the kernel that
// rotates q and k (the default tile only).
template <int kHeadDim, typename T, bool kPaged, TileVariant kVariant = TileVariant::kDefault,
          bool kRope = false>
cudaError_t LaunchPrefill(const PrefillParams& params, cudaStream_t stream);

// The sm_90a kernel (prefill_sm90_kernel.cuh, TileVariant::kHopper: head_dim 64 and 128, no
// RoPE), explicitly instantiated in generated/prefill_hd<D>_<dtype>_sm90.cu; kMask: the build
// that applies the variant's custom mask (paged only).
template <int kHeadDim, typename T, bool kPaged, bool kMask = false>
cudaError_t LaunchPrefillSm90(const PrefillParams& params, cudaStream_t stream);

}  // namespace attnd::kernels::cuda::internal
