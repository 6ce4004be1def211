// The compile-time shape of the tensor-core decode kernel (decode_tc_kernel.cuh): warps, tokens
// per stage, pipeline stages and the shared-memory layout, shared by the kernel's parts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/rope.cuh"

namespace attnd::kernels::cuda::internal {

template <int D, bool kRope = false>
struct TcDecodeTraits {
  static_assert(D == 64 || D == 128, "tensor-core decode: head_dim 64 or 128");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16;  // query heads per CTA
  static constexpr int kTokensPerWarp = 16;
  static constexpr int kTPS = kWarps * kTokensPerWarp;  // tokens per stage
  static constexpr int kStages = 3;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kStageElems = 2 * kTPS * D;
  // kRope: the q tile is a hi and a lo tile, and the RoPE frequencies follow ([D/2] RopeFreq).
  static constexpr int kQTiles = kRope ? 2 : 1;
  static constexpr int kFreqOffsetBytes = (kStages * kStageElems + kQTiles * kRows * D) * 2;
  static constexpr int kSmemBytes =
      kFreqOffsetBytes + (kRope ? D / 2 * static_cast<int>(sizeof(RopeFreq)) : 0);
  // merge scratch (fp32): O [warps][16][D], m and d [warps][16]
  static_assert((kWarps * kRows * (D + 2)) * 4 <= kSmemBytes, "merge scratch fits");
};

}  // namespace attnd::kernels::cuda::internal
