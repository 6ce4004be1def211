// Batch prefill / append attention on tensor cores (mma.sync m16n8k16, fp32 accumulate), FA2
// style: one CTA = one tile of packed query rows x one KV head, looping over the KV sequence in
// tiles of kTileKv keys with an online softmax in fp32 registers.
//
// Shared memory (element type T, all tiles row-major [rows][D] with an XOR swizzle of the 16-byte
// chunks: chunk c of row r is stored at chunk c ^ (r & 7), so the 8 row addresses of every
// ldmatrix phase and every 16-byte cp.async store of a warp hit distinct bank groups):
//   q_smem  [kCtaRows][D]                          (reused to stage O before the global store)
//   kv_smem [kStages][2][kTileKv][D]               (index 0 = K, 1 = V)
//   row_ptr [kStages][kTileKv] 64-bit addresses    (paged: K row starts of upcoming tiles)
//
// MMA fragment layouts (PTX ISA, mma.m16n8k16 .row.col; lane = 4 * g + t, g = lane / 4,
// t = lane % 4; each 32-bit A/B register holds 2 consecutive-k elements):
//   A (16x16, rows m, cols k):  a0 = (m=g,   k=2t..2t+1)   a1 = (m=g+8, k=2t..2t+1)
//                               a2 = (m=g,   k=2t+8..+9)   a3 = (m=g+8, k=2t+8..+9)
//   B (16x8, rows k, cols n):   b0 = (k=2t..2t+1, n=g)     b1 = (k=2t+8..+9, n=g)
//   C (16x8 fp32):              c0,c1 = (m=g, n=2t,2t+1)   c2,c3 = (m=g+8, n=2t,2t+1)
// S = Q K^T: A = Q rows (ldmatrix.x4 of Q smem), B[k=d][n=kv] = K[kv][d], i.e. the K rows as
// stored (ldmatrix.x4, no transpose). O += P V: A = P, built in registers from the S
// accumulators (the C layout of two adjacent n8 fragments is exactly the A layout of one k16
// step), B[k=kv][n=d] = V[kv][d] (ldmatrix.x4.trans).
//
// RoPE (kRope, always the kDefault tile): Q is rotated in fp32 on its way into shared memory and
// every K tile in place once it has landed; both are kept as a hi part (in the tiles above) and a
// lo part (q_lo [kCtaRows][D], k_lo [kTileKv][D] for the current tile), x = hi + lo, and
// S = Qhi Khi + Qlo Khi + Qhi Klo: no rotated value is rounded to the 16-bit type (NUMERICS.md).
// A plan made for a wider tile runs here with kSubItems CTAs per planned item.
//
// The kernel's parts, one file each: the shape (prefill_config.cuh), the CTA's tile
// (prefill_tile.cuh), the loads (prefill_loads.cuh), the per-tile math (prefill_mainloop.cuh)
// and the epilogue (prefill_epilogue.cuh); this file holds the pipeline that runs them. Building
// blocks: cp.async, ldmatrix, mma and the swizzle (blocks/ptx.cuh), the softmax state
// (softmax_state.cuh: MmaRowsSoftmax), logits, soft cap and window (variant.cuh), RoPE and the
// hi/lo split (rope.cuh), paged rows
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/softmax_state.cuh"
#include "prefill/prefill_config.cuh"
#include "prefill/prefill_epilogue.cuh"
#include "prefill/prefill_loads.cuh"
#include "prefill/prefill_mainloop.cuh"
#include "prefill/prefill_params.h"
#include "prefill/prefill_tile.cuh"

namespace attnd::kernels::cuda::internal {

// ---- the kernel -----------------------------------------------------------------------------

template <class Cfg, bool kPaged>
__global__ void __launch_bounds__(Cfg::kThreads)
    PrefillKernel(const __grid_constant__ PrefillParams p) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int MQ = Cfg::kMmaQ;
  constexpr int CTA_M = Cfg::kCtaRows;
  constexpr int HALF_CPR = Cfg::kChunks / 2;  // 16-byte chunks in half a row (RoPE pairs)
  constexpr bool kRope = Cfg::kRope;
  constexpr int S = Cfg::kStages;

  extern __shared__ __align__(128) uint8_t smem_raw[];
  T* q_smem = reinterpret_cast<T*>(smem_raw);
  T* kv_smem = q_smem + CTA_M * D;
  T* q_lo_smem = q_smem + Cfg::kQLoOffset;                                    // kRope
  T* k_lo_smem = q_smem + Cfg::kKLoOffset;                                    // kRope
  const T** row_ptr = reinterpret_cast<const T**>(q_smem + Cfg::kSmemElems);  // paged

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;   // MMA group id: row within an 8-row half
  const int t4 = lane % 4;  // thread in group: column pair

  PrefillTile t;
  if (!ResolvePrefillTile<Cfg, kPaged>(p, t)) return;
  const int kv_begin = t.kv_begin;
  const int kv_end = t.kv_end;
  // kRope: the frequencies of the 8 pairs of the chunk this thread rotates (tid % HALF_CPR, the
  // same for every (row, chunk) item of the thread: THREADS % HALF_CPR == 0).
  RopeFreq kfreq[kRope ? 8 : 1];
  if constexpr (kRope) {
#pragma unroll
    for (int k = 0; k < 8; ++k) kfreq[k] = p.variant.rope_freq[(tid % HALF_CPR) * 8 + k];
  }

  LoadQTile<Cfg>(p, t, q_smem, q_lo_smem, kfreq, tid);
  CpAsyncCommit();

  PrefillKvLoader<Cfg, kPaged> loader(p, t, kv_smem, row_ptr, tid);

  // This thread's rows: r(mq, h) = warp * 16*MQ + mq * 16 + g + 8 h (packed row
  // packed_start + r; rows past packed_end are computed on zeros and never stored).
  const int my_packed0 = t.packed_start + warp * Cfg::kWarpRows + g;
  float o_acc[MQ][D / 8][4];
  MmaRowsSoftmax rows[MQ];  // running max (base 2, scaled logits) and sums
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mq][j][e] = 0.f;
    }
  }

  // Pipeline (S = kStages stages, one barrier per tile): the prologue issues tiles 0..S-2 (one
  // commit group each, Q in the first). Iteration j waits for tile j (all but the newest S-2
  // groups), then (barrier) issues the copies of tile j + S - 1 into stage (j - 1) % S (free:
  // every warp has finished tile j - 1), writes the paged offsets of tile j + S into table slot
  // j % S (tile j's, read when tile j was issued), reads the page ids of tile j + S + 1, and
  // computes tile j while the next S - 1 tiles are in flight.
  const int num_tiles = kv_end > kv_begin ? (kv_end - kv_begin + N - 1) / N : 0;
  if constexpr (kPaged) {
    // Tiles 0..S-1: the page-id loads are independent (one round trip), then the offsets.
    int first_pages[S];
#pragma unroll
    for (int i = 0; i < S; ++i) {
      loader.next_page = 0;
      if (i < num_tiles) loader.FetchPage(kv_begin + i * N);
      first_pages[i] = loader.next_page;
    }
#pragma unroll
    for (int i = 0; i < S; ++i) {
      loader.next_page = first_pages[i];
      if (i < num_tiles) loader.WriteOffsets(i, kv_begin + i * N);
    }
    if (S < num_tiles) loader.FetchPage(kv_begin + S * N);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < num_tiles) loader.LoadTile(i, i, kv_begin + i * N);
    CpAsyncCommit();
  }

  const int qpos_lo = t.delta + t.q_lo;
  const int qpos_hi = t.delta + t.q_hi;
  // Causal: a K/V tile past this warp's last query position contributes exactly nothing to
  // its rows (p = 0, the max and the sums unchanged), so the warp skips its MMAs and softmax
  // there and only takes part in the loads and barriers. Matters on the diagonal: with 128-row
  // tiles and 64 keys per step, half of the last tile's warp work of every causal item.
  // warp_tiles: the tiles this warp computes (one register; the loop's other state is at the
  // register cap). Paged kernels only: in the ragged ones the split loop measured 5-10% slower
  // (H200 run c, NOTES.md), so they keep one loop over all tiles.
  int warp_tiles = num_tiles;
  if (kPaged && p.variant.causal) {
    const int warp_pk_hi = min(t.packed_start + (warp + 1) * Cfg::kWarpRows, t.packed_end) - 1;
    const int warp_qpos_hi = t.delta + warp_pk_hi / p.group;
    warp_tiles = warp_qpos_hi < kv_begin ? 0 : min(num_tiles, (warp_qpos_hi - kv_begin) / N + 1);
  }
  const uint32_t q_base = SmemAddr(q_smem);
  const uint32_t q_lo_base = SmemAddr(q_lo_smem);  // kRope
  const uint32_t k_lo_addr = SmemAddr(k_lo_smem);  // kRope

  int stage = 0;  // tile % S
  // The part of an iteration every warp runs (copies, table, barriers, RoPE of K): the main
  // loop below for the tiles this warp computes, then (paged) the tail loop for the rest. (Two
  // loops, not a branch around the compute: the branch cost ptxas 60-90 bytes of spills.)
  // The barrier: with the tail loop, warps reach it at different instructions.
  auto barrier = [] {
    if constexpr (kPaged)
      CtaBarrierDivergent();
    else
      __syncthreads();
  };
  auto begin_tile = [&](int tile, int t0) {
    CpAsyncWait<S - 2>();  // Q and tile `tile` (this thread's copies)
    barrier();             // everyone's copies; stage (tile - 1) % S, table slot `stage` free
    const int ahead = stage == 0 ? S - 1 : stage - 1;  // (tile + S - 1) % S
    if (tile + S - 1 < num_tiles) loader.LoadTile(ahead, ahead, t0 + (S - 1) * N);
    CpAsyncCommit();
    if constexpr (kPaged) {
      if (tile + S < num_tiles) {
        loader.WriteOffsets(stage, t0 + S * N);
        if (tile + S + 1 < num_tiles) loader.FetchPage(t0 + (S + 1) * N);
      }
    }
    if constexpr (kRope) {  // rotate the tile's K rows: hi in place, lo into k_lo
      RotateKTile<Cfg>(kv_smem + stage * 2 * N * D, k_lo_smem, t0, kv_end, t.rope_offset, kfreq,
                       tid);
      barrier();
    }
  };

  int tile = 0;
  for (; tile < warp_tiles; ++tile) {
    const int t0 = kv_begin + tile * N;
    begin_tile(tile, t0);
    T* ks = kv_smem + stage * 2 * N * D;
    T* vs = ks + N * D;
    float s[MQ][N / 8][4];  // S = Q K^T, per warp [16*MQ] x [N], then P
    WarpScores<Cfg>(s, q_base, q_lo_base, SmemAddr(ks), k_lo_addr, warp, lane);
    ApplyVariant<Cfg, Cfg::kAppliesMask>(s, p.variant, t0, kv_end, qpos_lo, qpos_hi, my_packed0,
                                         t.packed_end, t.delta, p.group, t4, t.b, t.kv_len);
    // Online softmax: logits to the base-2 domain (numerics.h) with the scale folded into the
    // exponent's FFMA (p = 2^(CapLogit(s) * post - m); m is kept scaled).
    float row_scale[MQ][2];
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) rows[mq].Update(s[mq], p.variant.logit.post, row_scale[mq]);
    // Rescale O only when the running max of some row of the warp moved (scale is exactly 1
    // otherwise: 2^0). Warp-uniform branch; on long causal rows most tiles keep the max, and the
    // rescale is MQ * D / 2 FMULs per thread per tile (~10% of the loop's issue slots, SASS).
    bool moved = false;
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) moved |= (row_scale[mq][0] != 1.f) | (row_scale[mq][1] != 1.f);
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) RescaleRows(o_acc[mq], row_scale[mq]);
    }
    AccumulatePV<Cfg>(o_acc, s, SmemAddr(vs), lane);
    stage = stage + 1 == S ? 0 : stage + 1;
  }
  if constexpr (kPaged) {
    for (; tile < num_tiles; ++tile) {  // tiles past this warp's rows (causal): copies only
      begin_tile(tile, kv_begin + tile * N);
      stage = stage + 1 == S ? 0 : stage + 1;
    }
  }
  CpAsyncWait<0>();
  __syncthreads();  // Q smem is reused below (also when no tile ran)

  StorePrefillOutput<Cfg>(p, t, o_acc, rows, q_smem, warp, lane, blockIdx.x);
}

// ---- launcher ---------------------------------------------------------------------------------

template <int kHeadDim, typename T, bool kPaged, TileVariant kVariant, bool kRope>
cudaError_t LaunchPrefill(const PrefillParams& params, cudaStream_t stream) {
  using Cfg = PrefillConfig<kHeadDim, T, kVariant, kRope>;
  if (params.num_items == 0 || params.num_kv_heads == 0) return cudaSuccess;
  if (params.item_rows != params.sub_items * Cfg::kCtaRows) return cudaErrorInvalidValue;
  auto kernel = PrefillKernel<Cfg, kPaged>;
  // Raise the dynamic shared-memory limit (> 48 KB needs it). Cheap; done every launch so that
  // it also holds on every device the process uses. The RoPE kernels (~113 KB at head_dim 128)
  // fit twice per SM only with the largest shared-memory carveout.
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  if constexpr (kRope) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
    if (err != cudaSuccess) return err;
  }
  const int64_t blocks =
      static_cast<int64_t>(params.num_items) * params.sub_items * params.num_kv_heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(blocks), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace attnd::kernels::cuda::internal
