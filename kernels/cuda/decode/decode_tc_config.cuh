// The compile-time shape of the tensor-core decode kernel (decode_tc_kernel.cuh): warps, tokens
// per stage, pipeline stages and the shared-memory layout, shared by the kernel's parts.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/rope.cuh"

namespace attnd::kernels::cuda::internal {

// kKvBytes: bytes of a stored K/V element. 2: the stages hold K/V as the 16-bit compute type
// (swizzled, read by ldmatrix). 1 (fp8; the halved bytes pay for more stages): without RoPE
// (kFp8Registers) the stages hold the stored bytes swizzled (SwzFp8) and the fp8 fragments are
// read by ldmatrix and converted in registers (decode_tc_mainloop.cuh); with RoPE (kConvert) the
// stages hold them linear and each warp converts its own 16 tokens of a stage into a 16-bit stage
// image (cvt, swizzled) that the 16-bit math reads.
template <int D, bool kRope = false, int kKvBytes = 2>
struct TcDecodeTraits {
  static_assert(D == 64 || D == 128, "tensor-core decode: head_dim 64 or 128");
  static_assert(kKvBytes == 1 || kKvBytes == 2, "16-bit or fp8 K/V");
  static constexpr bool kConvert = kKvBytes == 1 && kRope;
  static constexpr bool kFp8Registers = kKvBytes == 1 && !kRope;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16;  // query heads per CTA
  static constexpr int kTokensPerWarp = 16;
  static constexpr int kTPS = kWarps * kTokensPerWarp;  // tokens per stage
  // Bytes in flight per CTA: (stages - 1) x 16 KB in fp8 (5 x 16 KB: more than 16-bit's 2 x
  // 32 KB, in the same ~100 KB of shared memory); the RoPE path's stage image takes 32 KB.
  static constexpr int kStages = kFp8Registers ? 6 : kConvert ? 4 : 3;
  static constexpr int kChunks = D / 8;             // 16-byte chunks per 16-bit row
  static constexpr int kStageElems = 2 * kTPS * D;  // K then V
  static constexpr int kCvtOffsetBytes = kStages * kStageElems * kKvBytes;
  static constexpr int kQOffsetBytes = kCvtOffsetBytes + (kConvert ? kStageElems * 2 : 0);
  // kRope: the q tile is a hi and a lo tile, and the RoPE frequencies follow ([D/2] RopeFreq).
  static constexpr int kQTiles = kRope ? 2 : 1;
  static constexpr int kFreqOffsetBytes = kQOffsetBytes + kQTiles * kRows * D * 2;
  static constexpr int kSmemBytes =
      kFreqOffsetBytes + (kRope ? D / 2 * static_cast<int>(sizeof(RopeFreq)) : 0);
  // merge scratch (fp32): O [warps][16][D], m and d [warps][16]
  static_assert((kWarps * kRows * (D + 2)) * 4 <= kSmemBytes, "merge scratch fits");
};

}  // namespace attnd::kernels::cuda::internal
