// The compile-time shape of one prefill kernel instantiation (head dim, element type, tile
// variant, RoPE): tile sizes, warps, pipeline stages and the shared-memory layout, shared by the
// kernel's parts (prefill_tile, prefill_loads, prefill_mainloop, prefill_epilogue). Tile sizes
// come from the planning layer (planning/prefill_tiling.h), so host and device agree.
#pragma once

#include "blocks/ptx.cuh"
#include "prefill/prefill_params.h"

namespace attnd::kernels::cuda::internal {

template <int kHeadDim_, typename T_, TileVariant kVariant = TileVariant::kDefault,
          bool kRope_ = false>
struct PrefillConfig {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kPrefillWarps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMmaQ = MmaQ(kHeadDim, kVariant);
  static constexpr int kWarpRows = 16 * kMmaQ;
  static constexpr int kCtaRows = CtaRows(kHeadDim, kVariant);
  static constexpr int kTileKv = TileKv(kHeadDim, kVariant);
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kStages = Stages(kHeadDim_, kVariant);
  static constexpr bool kRope = kRope_;
  // Applies a custom mask (runtime: free in registers here, ptxas 2026-12-02); the wide tiles'
  // kernels, at their register limit, do not, and masked plans never take them.
  static constexpr bool kAppliesMask = !IsWide(kHeadDim_, kVariant);
  static_assert(!kRope || kVariant == TileVariant::kDefault, "RoPE runs on the default tile");
  static constexpr int kTilesElems = kCtaRows * kHeadDim + kStages * 2 * kTileKv * kHeadDim;
  // kRope: the lo parts of the rotated Q tile and of the current K tile, after the tiles.
  static constexpr int kQLoOffset = kTilesElems;
  static constexpr int kKLoOffset = kQLoOffset + kCtaRows * kHeadDim;
  static constexpr int kSmemElems = kRope ? kKLoOffset + kTileKv * kHeadDim : kTilesElems;
  // Paged only: the K row addresses (page table applied) of the upcoming K/V tiles,
  // [kStages][kTileKv], after the tiles.
  static constexpr int kTableBytes = kStages * kTileKv * static_cast<int>(sizeof(void*));
  static constexpr int kSmemBytes = kSmemElems * static_cast<int>(sizeof(T)) + kTableBytes;
  // Element offset of (row, 16-byte chunk) in the Q tile (the epilogue's staging).
  static __device__ __forceinline__ int StagingOffset(int row, int chunk) {
    return Swz<kHeadDim>(row, chunk);
  }
  // kRope: the RoPE pairs a thread rotates are the same for all of its (row, pair) items.
  static_assert(kThreads % (kChunks / 2) == 0, "fixed RoPE pair chunk per thread");
  static_assert(kHeadDim % 64 == 0, "the swizzle needs at least 8 chunks per row");
  static_assert(kTileKv % 16 == 0);
  static_assert(kThreads % kChunks == 0 && kTileKv % (kThreads / kChunks) == 0);
};

}  // namespace attnd::kernels::cuda::internal
