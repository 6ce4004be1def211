// The tensor-core decode kernel's q tile: the group's query heads as the rows of a [16][D] tile in
// shared memory (swizzled; rows past the group are zero). kRope: rotated in fp32 and split into a
// hi tile (q_smem) and a lo tile (q_lo_smem); the RoPE frequencies are copied to freq_smem
// ([D/2]) for the K rotation in registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/vec.cuh"
#include "decode/decode_params.h"
#include "decode/decode_tc_config.cuh"

namespace attnd::kernels::cuda::internal {

// head0: the first query head of the tile (kv_head * group + row_base); rows_valid of its 16 rows
// are heads; q_position: the query's RoPE position (offset included).
template <typename T, int D, bool kRope>
__device__ __forceinline__ void LoadTcQTile(const DecodeKernelParams& p, int b, int head0,
                                            int rows_valid, int q_position, T* q_smem, T* q_lo_smem,
                                            RopeFreq* freq_smem, int tid) {
  using Tr = TcDecodeTraits<D, kRope>;
  constexpr int NT = Tr::kThreads;
  constexpr int HALF_CH = Tr::kChunks / 2;
  for (int i = tid; i < Tr::kRows * HALF_CH; i += NT) {
    const int r = i / HALF_CH;
    const int c = i % HALF_CH;
    uint4 rlo = make_uint4(0, 0, 0, 0), rhi = make_uint4(0, 0, 0, 0);
    if (r < rows_valid) {
      const T* q_row =
          static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.num_qo_heads + head0 + r) * D;
      rlo = *reinterpret_cast<const uint4*>(q_row + c * 8);
      rhi = *reinterpret_cast<const uint4*>(q_row + D / 2 + c * 8);
    }
    if constexpr (kRope) {
      float lo[8], hi[8];
      Vec8<T>::ToFloat(rlo, lo);
      Vec8<T>::ToFloat(rhi, hi);
      RotateHalfPairs8(lo, hi, q_position, p.variant.rope_freq + c * 8);
      uint4 lo_lo, hi_lo;
      SplitHiLo8<T>(lo, &rlo, &lo_lo);
      SplitHiLo8<T>(hi, &rhi, &hi_lo);
      *reinterpret_cast<uint4*>(q_lo_smem + Swz<D>(r, c)) = lo_lo;
      *reinterpret_cast<uint4*>(q_lo_smem + Swz<D>(r, c + HALF_CH)) = hi_lo;
    }
    *reinterpret_cast<uint4*>(q_smem + Swz<D>(r, c)) = rlo;
    *reinterpret_cast<uint4*>(q_smem + Swz<D>(r, c + HALF_CH)) = rhi;
  }
  if constexpr (kRope) {
    for (int i = tid; i < D / 2; i += NT) freq_smem[i] = p.variant.rope_freq[i];
  }
}

// The q tile of the fp8 register path (decode_tc_mainloop.cuh): dims permuted within each
// 16-dim block as the K fragments are, i.e. 32-bit words (pairs of dims) 0, 2, 4, 6 of the
// block's 8 form its first 16-byte chunk and 1, 3, 5, 7 its second. No RoPE.
template <typename T, int D>
__device__ __forceinline__ void LoadTcQTilePermuted(const DecodeKernelParams& p, int b, int head0,
                                                    int rows_valid, T* q_smem, int tid) {
  using Tr = TcDecodeTraits<D>;
  constexpr int kBlocks = D / 16;
  for (int i = tid; i < Tr::kRows * kBlocks; i += Tr::kThreads) {
    const int r = i / kBlocks;
    const int blk = i % kBlocks;
    uint4 a = make_uint4(0, 0, 0, 0), c = make_uint4(0, 0, 0, 0);
    if (r < rows_valid) {
      const T* q_row =
          static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.num_qo_heads + head0 + r) * D;
      a = *reinterpret_cast<const uint4*>(q_row + blk * 16);
      c = *reinterpret_cast<const uint4*>(q_row + blk * 16 + 8);
    }
    *reinterpret_cast<uint4*>(q_smem + Swz<D>(r, 2 * blk)) = make_uint4(a.x, a.z, c.x, c.z);
    *reinterpret_cast<uint4*>(q_smem + Swz<D>(r, 2 * blk + 1)) = make_uint4(a.y, a.w, c.y, c.w);
  }
}

}  // namespace attnd::kernels::cuda::internal
