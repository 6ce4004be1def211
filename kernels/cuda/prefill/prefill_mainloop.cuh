// The prefill kernel's per-warp math on one K/V tile (the mainloop body): S = Q K^T on tensor
// cores, the variant on the logits (soft cap, causal / window / end mask), and O += P V. The
// online softmax between them is the building block MmaRowsSoftmax (blocks/softmax_state.cuh).
// Fragment layouts: prefill_kernel.cuh. A warp holds kMmaQ m16 row blocks; this thread's rows
// are warp * kWarpRows + mq * 16 + g (+ 8).
#pragma once

#include <climits>
#include <cstdint>

#include "blocks/ptx.cuh"
#include "blocks/variant.cuh"
#include "prefill/prefill_config.cuh"

namespace attnd::kernels::cuda::internal {

// s[mq][j] (C fragments, [kMmaQ][N / 8][4]) = Q K^T of this warp's rows and the tile's N keys,
// from the Q tile at q_base and the K tile at ks_addr (shared-memory addresses). kRope: plus
// Qlo Khi + Qhi Klo from the lo parts at q_lo_base and k_lo_addr.
template <class Cfg>
__device__ __forceinline__ void WarpScores(float (&s)[Cfg::kMmaQ][Cfg::kTileKv / 8][4],
                                           uint32_t q_base, uint32_t q_lo_base, uint32_t ks_addr,
                                           uint32_t k_lo_addr, int warp, int lane) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int MQ = Cfg::kMmaQ;
  constexpr bool kRope = Cfg::kRope;
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
    for (int j = 0; j < N / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mq][j][e] = 0.f;
  // D = 128 with 32 rows per warp sits at the 255-register cap: a k loop unrolled only by 2
  // keeps ptxas from hoisting every Q/K fragment (spills 144 -> 16 bytes for wide64).
  constexpr int kKkUnroll = (D == 128 && MQ == 2) ? 2 : D / 16;
#pragma unroll kKkUnroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[MQ][4];
    uint32_t a_lo[kRope ? MQ : 1][4];  // kRope: the lo part of Q
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) {
      // lanes 0-15 -> rows 0-15 at chunk 2kk; lanes 16-31 -> rows 0-15 at chunk 2kk+1
      const int r = warp * Cfg::kWarpRows + mq * 16 + (lane % 16);
      LdMatrixX4(a[mq], q_base + 2 * Swz<D>(r, 2 * kk + lane / 16));
      if constexpr (kRope) LdMatrixX4(a_lo[mq], q_lo_base + 2 * Swz<D>(r, 2 * kk + lane / 16));
    }
#pragma unroll
    for (int nn = 0; nn < N / 16; ++nn) {
      // matrices: (rows n0..+7, chunk 2kk), (n0..+7, 2kk+1), (n0+8.., 2kk), (n0+8.., 2kk+1)
      // = b0, b1 of n-fragment 2nn, then b0, b1 of n-fragment 2nn+1
      uint32_t bk[4];
      const int r = nn * 16 + (lane % 8) + (lane / 16) * 8;
      LdMatrixX4(bk, ks_addr + 2 * Swz<D>(r, 2 * kk + (lane / 8) % 2));
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
        Mma16816<T>(s[mq][2 * nn], a[mq], bk[0], bk[1]);
        Mma16816<T>(s[mq][2 * nn + 1], a[mq], bk[2], bk[3]);
      }
      if constexpr (kRope) {  // + Qlo Khi + Qhi Klo
        uint32_t bk_lo[4];
        LdMatrixX4(bk_lo, k_lo_addr + 2 * Swz<D>(r, 2 * kk + (lane / 8) % 2));
#pragma unroll
        for (int mq = 0; mq < MQ; ++mq) {
          Mma16816<T>(s[mq][2 * nn], a_lo[mq], bk[0], bk[1]);
          Mma16816<T>(s[mq][2 * nn + 1], a_lo[mq], bk[2], bk[3]);
          Mma16816<T>(s[mq][2 * nn], a[mq], bk_lo[0], bk_lo[1]);
          Mma16816<T>(s[mq][2 * nn + 1], a[mq], bk_lo[2], bk_lo[3]);
        }
      }
    }
  }
}

// The variant on this warp's raw logits of the tile at kv position t0: the soft cap (CapLogit;
// the scale is applied with the exponent, MmaRowsSoftmax's `post`), then -inf where a key is not
// visible to the row (past kv_end, causal, sliding window, the custom mask), only in tiles that
// need it: the custom mask's bits are read only in tiles that reach past the request's
// dense_until (on a tree verification, the tiles of the tree, not of its shared prefix).
// my_packed0: the packed row of this thread's first row (g of m block 0); qpos_lo / qpos_hi: the
// kv positions of the CTA's first and last query rows; request / kv_len: the tile's request and
// its kv length (the custom mask's rows). kMask false: the build that applies no custom mask.
template <class Cfg, bool kMask>
__device__ __forceinline__ void ApplyVariant(float (&s)[Cfg::kMmaQ][Cfg::kTileKv / 8][4],
                                             const VariantParams& v, int t0, int kv_end,
                                             int qpos_lo, int qpos_hi, int my_packed0,
                                             int packed_end, int delta, int group, int t4,
                                             int request, int kv_len) {
  constexpr int N = Cfg::kTileKv;
  constexpr int MQ = Cfg::kMmaQ;
  static_assert(N % 32 == 0 || N < 32, "custom-mask bits are read 32 keys at a time");
  const bool custom =
      kMask && v.mask.words != nullptr && t0 + N > __ldg(v.mask.dense_until + request);
  const bool needs_mask = (t0 + N > kv_end) || (v.causal && t0 + N - 1 > qpos_lo) ||
                          (v.window_left >= 0 && t0 < qpos_hi - v.window_left) || custom;
  if (v.logit.soft_cap) {
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
      for (int j = 0; j < N / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mq][j][e] = CapLogit(s[mq][j][e], v.logit);
  }
  if (needs_mask) {
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int pk = min(my_packed0 + mq * 16 + 8 * h, packed_end - 1);
        const int qpos = delta + pk / group;
        // visible: pos in [lo, hi]
        const int lo = v.window_left >= 0 ? qpos - v.window_left : INT_MIN;
        const int hi = v.causal ? min(qpos, kv_end - 1) : kv_end - 1;
#pragma unroll
        for (int j = 0; j < N / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int pos = t0 + j * 8 + 2 * t4 + e;
            if (pos < lo || pos > hi) s[mq][j][2 * h + e] = -INFINITY;
          }
        }
        if (custom) {  // this row's bits, 32 keys (4 n-fragments) at a time
          const int row = CustomMaskRow(v.mask, request, kv_len, pk / group);
#pragma unroll
          for (int c = 0; c < (N + 31) / 32; ++c) {
            const uint32_t bits = CustomMaskBits32(v.mask, row, t0 + 32 * c) >> (2 * t4);
#pragma unroll
            for (int j = 4 * c; j < 4 * c + 4 && j < N / 8; ++j) {
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                if (((bits >> ((j - 4 * c) * 8 + e)) & 1u) == 0) s[mq][j][2 * h + e] = -INFINITY;
              }
            }
          }
        }
      }
    }
  }
}

// o_acc += P V: P (the probabilities in s) in the A layout (the C fragments of n-fragments 2nn,
// 2nn+1 form the k16 step nn), V from the tile at vs_addr (ldmatrix.trans).
template <class Cfg>
__device__ __forceinline__ void AccumulatePV(float (&o_acc)[Cfg::kMmaQ][Cfg::kHeadDim / 8][4],
                                             const float (&s)[Cfg::kMmaQ][Cfg::kTileKv / 8][4],
                                             uint32_t vs_addr, int lane) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int MQ = Cfg::kMmaQ;
#pragma unroll
  for (int nn = 0; nn < N / 16; ++nn) {
    uint32_t pa[MQ][1][4];
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) {
      pa[mq][0][0] = Pack2<T>(s[mq][2 * nn][0], s[mq][2 * nn][1]);
      pa[mq][0][1] = Pack2<T>(s[mq][2 * nn][2], s[mq][2 * nn][3]);
      pa[mq][0][2] = Pack2<T>(s[mq][2 * nn + 1][0], s[mq][2 * nn + 1][1]);
      pa[mq][0][3] = Pack2<T>(s[mq][2 * nn + 1][2], s[mq][2 * nn + 1][3]);
    }
#pragma unroll
    for (int dd = 0; dd < D / 16; ++dd) {
      // matrices (transposed): (kv rows n0..+7, chunk 2dd), (n0+8.., 2dd), (n0..+7, 2dd+1),
      // (n0+8.., 2dd+1) = b0, b1 of d-fragment 2dd, then b0, b1 of d-fragment 2dd+1
      uint32_t bv[4];
      const int r = nn * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
      LdMatrixX4Trans(bv, vs_addr + 2 * Swz<D>(r, 2 * dd + lane / 16));
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
        Mma16816<T>(o_acc[mq][2 * dd], pa[mq][0], bv[0], bv[1]);
        Mma16816<T>(o_acc[mq][2 * dd + 1], pa[mq][0], bv[2], bv[3]);
      }
    }
  }
}

}  // namespace attnd::kernels::cuda::internal
