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

}  // namespace attnd::kernels::cuda::internal
