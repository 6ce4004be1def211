// The tensor-core decode kernel's math on a warp's 16 tokens of a stage: S = Q K^T for the 16 rows
// (query heads) x 16 tokens (two n8 tiles). K fragments: kb[0], kb[1] are b0, b1 of n-tile 0
// (token wtok + gr; dims 16 ks + 2 gc (+1) and 16 ks + 8 + 2 gc (+1)), kb[2], kb[3] the same of
// n-tile 1 (token wtok + 8 + gr). kRope: the K fragments are rotated in registers and split into
// hi + lo; S = Qhi Khi + Qlo Khi + Qhi Klo.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/kv_convert.cuh"
#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "decode/decode_tc_config.cuh"

namespace attnd::kernels::cuda::internal {

// s: [2][4] C fragments (this thread's logits, raw); qa: the q fragments held in registers
// (without RoPE); sk: the stage's K tile [TPS][D]; wtok: the warp's first token in the stage;
// position0: the RoPE position of that token (offset included).
template <typename T, int D, bool kRope>
__device__ __forceinline__ void TcWarpScores(float (&s)[2][4],
                                             const uint32_t (&qa)[kRope ? 1 : D / 16][4],
                                             const T* q_smem, const T* q_lo_smem,
                                             const RopeFreq* freq_smem, const T* sk, int wtok,
                                             int position0, int lane) {
  constexpr int KSTEPS = D / 16;
#pragma unroll
  for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
  const int k_frag_tok = wtok + (lane % 8) + (lane / 16) * 8;
  if constexpr (!kRope) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      uint32_t kb[4];
      LdMatrixX4(kb, sk + Swz<D>(k_frag_tok, ks * 2 + (lane / 8) % 2));
      Mma16816<T>(s[0], qa[ks], kb[0], kb[1]);
      Mma16816<T>(s[1], qa[ks], kb[2], kb[3]);
    }
  } else {
    constexpr int HK = KSTEPS / 2;  // k-steps of the first half of the dims
    const int gr = lane / 4;
    const int gc = lane % 4;
    const int q_frag_row = (lane % 8) + ((lane / 8) % 2) * 8;
#pragma unroll
    for (int ks = 0; ks < HK; ++ks) {
      // Dims 16 ks + .. (first half) and their RoPE partners + D/2 (k-step ks + HK).
      uint32_t kx[4], ky[4];
      LdMatrixX4(kx, sk + Swz<D>(k_frag_tok, ks * 2 + (lane / 8) % 2));
      LdMatrixX4(ky, sk + Swz<D>(k_frag_tok, (ks + HK) * 2 + (lane / 8) % 2));
      uint32_t x_hi[4], x_lo[4], y_hi[4], y_lo[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int position = position0 + gr + (r >= 2 ? 8 : 0);
        const int i0 = ks * 16 + (r & 1) * 8 + 2 * gc;
        const float2 x = Unpack2<T>(kx[r]);
        const float2 y = Unpack2<T>(ky[r]);
        float c0, s0, c1, s1;
        RopeCosSin(position, freq_smem[i0], &c0, &s0);
        RopeCosSin(position, freq_smem[i0 + 1], &c1, &s1);
        SplitHiLo2<T>(x.x * c0 - y.x * s0, x.y * c1 - y.y * s1, &x_hi[r], &x_lo[r]);
        SplitHiLo2<T>(y.x * c0 + x.x * s0, y.y * c1 + x.y * s1, &y_hi[r], &y_lo[r]);
      }
      uint32_t q_hi[4], q_lo[4];
      LdMatrixX4(q_hi, q_smem + Swz<D>(q_frag_row, ks * 2 + lane / 16));
      LdMatrixX4(q_lo, q_lo_smem + Swz<D>(q_frag_row, ks * 2 + lane / 16));
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        Mma16816<T>(s[n], q_hi, x_hi[2 * n], x_hi[2 * n + 1]);
        Mma16816<T>(s[n], q_lo, x_hi[2 * n], x_hi[2 * n + 1]);
        Mma16816<T>(s[n], q_hi, x_lo[2 * n], x_lo[2 * n + 1]);
      }
      LdMatrixX4(q_hi, q_smem + Swz<D>(q_frag_row, (ks + HK) * 2 + lane / 16));
      LdMatrixX4(q_lo, q_lo_smem + Swz<D>(q_frag_row, (ks + HK) * 2 + lane / 16));
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        Mma16816<T>(s[n], q_hi, y_hi[2 * n], y_hi[2 * n + 1]);
        Mma16816<T>(s[n], q_lo, y_hi[2 * n], y_hi[2 * n + 1]);
        Mma16816<T>(s[n], q_hi, y_lo[2 * n], y_lo[2 * n + 1]);
      }
    }
  }
}

// ---- fp8 K/V in registers (TcDecodeTraits::kFp8Registers) ---------------------------------------
// The fp8 stage is [TPS][D] bytes, chunks swizzled by SwzFp8. ldmatrix (b16) of an 8-row x 16-byte
// matrix hands lane (g, c) = (lane / 4, lane % 4) the 4 bytes 4c .. 4c + 3 of row g (non-trans),
// or the bytes (2g, 2g + 1) of rows 2c and 2c + 1 (trans). Both are turned into mma operands
// without a trip through shared memory, by permuting the dimension that the MMA sums over
// (K's) or that it outputs (V's):
//  - S = Q K^T: within each 16-dim block, logical k 2c, 2c+1 / 2c+8, 2c+9 (b0 / b1 of the B
//    fragment) are taken to be dims 4c, 4c+1 / 4c+2, 4c+3, so bytes (0, 1) of the register are
//    b0 and (2, 3) are b1; the q tile is stored with the same permutation (LoadTcQTile's
//    kPermuted), so the sum is the same dot product.
//  - O += P V: a trans register holds V at tokens (2c, 2c+1) for dims 2g and 2g+1 of the block:
//    bytes (0, 2) are b0 of an n-tile whose column g is dim 2g ("even" tile), bytes (1, 3) of
//    the "odd" tile (dim 2g + 1); O's n-tiles 2 * block and 2 * block + 1 are those tiles, so
//    accumulator element e of n-tile n holds dim TcFp8OutputDim(n, c, e) (the epilogue's).
// Lane addresses of both x4 loads: matrix m = lane / 8 is tokens (m % 2) * 8 .. + 7 of the warp's
// 16, chunk 2 * kk + m / 2.

// Output dim of accumulator element e (0..3: rows g / g + 8 alternate with e / 2) of n-tile n for
// lane column c = lane % 4, in the fp8 register path.
__device__ __forceinline__ int TcFp8OutputDim(int n, int c, int e) {
  return (n / 2) * 16 + 4 * c + 2 * (e & 1) + (n & 1);
}

template <typename T, typename Tkv, int D>
__device__ __forceinline__ void TcWarpScoresFp8(float (&s)[2][4], const uint32_t (&qa)[D / 16][4],
                                                const Tkv* sk, int wtok, int lane) {
#pragma unroll
  for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
  const int tok = wtok + (lane % 8) + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 32; ++kk) {
    uint32_t kb[4];  // tokens 0-7 / 8-15 of k-step 2 kk, then of 2 kk + 1
    LdMatrixX4(kb, sk + SwzFp8<D>(tok, 2 * kk + lane / 16));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t b00, b01, b10, b11;
      Fp8x4ToPairs<T, Tkv>(kb[2 * h], &b00, &b01);
      Fp8x4ToPairs<T, Tkv>(kb[2 * h + 1], &b10, &b11);
      Mma16816<T>(s[0], qa[2 * kk + h], b00, b01);
      Mma16816<T>(s[1], qa[2 * kk + h], b10, b11);
    }
  }
}

// O += P V for the warp's 16 tokens from the fp8 V stage sv; pa: P as the A fragments.
template <typename T, typename Tkv, int D>
__device__ __forceinline__ void TcWarpPvFp8(float (&o)[D / 8][4], const uint32_t (&pa)[4],
                                            const Tkv* sv, int wtok, int lane) {
  const int tok = wtok + (lane % 8) + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int dp = 0; dp < D / 32; ++dp) {
    uint32_t vb[4];  // tokens 0-7 / 8-15 of block 2 dp, then of 2 dp + 1
    LdMatrixX4Trans(vb, sv + SwzFp8<D>(tok, 2 * dp + lane / 16));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int blk = 2 * dp + h;
      uint32_t even0, odd0, even1, odd1;  // bytes [b0, b2, b1, b3]: (even pair, odd pair)
      Fp8x4ToPairs<T, Tkv>(__byte_perm(vb[2 * h], 0u, 0x3120), &even0, &odd0);
      Fp8x4ToPairs<T, Tkv>(__byte_perm(vb[2 * h + 1], 0u, 0x3120), &even1, &odd1);
      Mma16816<T>(o[2 * blk], pa, even0, even1);
      Mma16816<T>(o[2 * blk + 1], pa, odd0, odd1);
    }
  }
}

}  // namespace attnd::kernels::cuda::internal
