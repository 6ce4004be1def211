// Batch prefill / append attention for Hopper (sm_90a): warpgroup MMAs (wgmma) from shared memory,
// a warp-specialized pipeline (one producer warpgroup loads, two consumer warpgroups compute),
// mbarrier handshakes and persistent CTAs, FA3's shape. Same plan (work items, split-KV chunks),
// same parameter block and same results as the FA2-class kernel (prefill_kernel.cuh), which stays
// the fallback for what this one does not cover (RoPE on the fly, head_dim 256, devices other
// than sm_90).
//
// CTA: 384 threads = warpgroup 0 (producer) + warpgroups 1, 2 (consumers), one CTA per SM, each
// looping over work units (planned item x KV head, the planner's longest-first order)
// blockIdx.x, + gridDim.x, ...: the producer loads the next unit's first tiles while the consumers
// finish the current one. A unit: kCtaRows = 128 packed query rows (GQA: the query heads of one KV
// head packed into M, as planning/prefill_tiling.h) x one KV head; consumer warpgroup c owns rows
// 64 c .. 64 c + 63, its warp w rows 16 w .. +15 (the accumulator layout of blocks/wgmma.cuh).
//
// Shared memory (SW128 tiles, blocks/wgmma.cuh; every tile 1024-byte aligned):
//   q        [2][128][D]                 two units' Q tiles (the next one lands during this one;
//                                        a unit's epilogue stages O in its own Q buffer)
//   k, v     [kStages][kTileKv][D] each  the K/V pipeline
//   table    [kStages][kTileKv] pointers paged: the K row addresses of a stage's tile
//   barriers q_full[2], q_empty[2], k_full[S], v_full[S], k_empty[S], v_empty[S] (mbarriers)
//
// Producer, per K/V tile (a running count over the CTA's units: stage % S, phase (count / S) & 1):
// the rows' addresses (page table applied once per row, one row per thread, the page id read
// one tile ahead), wait k_empty, cp.async K (zero-filled past kv_end) -> k_full when landed; at a
// unit's first tile also wait q_empty of its Q buffer, Q -> q_full; wait v_empty, V -> v_full (zero
// past kv_end: those rows weigh p = 0, and 0 * garbage could be NaN). Consumers, FA3's
// intra-warpgroup overlap: iteration j issues S_j = Q K_j^T (D / 16 wgmma m64n128k16, both operands
// from shared memory), then O += P_{j-1} V_{j-1} (kTileKv / 16 wgmma m64nDk16, A = P from
// registers, V MN-major), waits for S_j only and runs the variant and the online softmax on it
// (ApplyVariant, MmaRowsSoftmax: shared with the FA2 kernel) while the tensor cores do P_{j-1}
// V_{j-1}; then waits for that, frees V_{j-1}, rescales O and packs P_j. K_j is freed as soon as
// S_j is done, so the producer refills K stages a tile ahead of V's. Causal: a consumer warpgroup
// skips the MMAs of tiles past its last row (it still waits for each tile and frees it, so the
// barriers' phases stay in step).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "blocks/paged_kv.cuh"
#include "blocks/ptx.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/wgmma.cuh"
#include "prefill/prefill_epilogue.cuh"
#include "prefill/prefill_mainloop.cuh"
#include "prefill/prefill_params.h"
#include "prefill/prefill_tile.cuh"

namespace attnd::kernels::cuda::internal {

template <int kHeadDim_, typename T_>
struct PrefillSm90Config {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "the sm90 kernel's head dims");
  static constexpr int kConsumers = 2;  // consumer warpgroups
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerThreads = 128 * kConsumers;
  static constexpr int kCtaRows = CtaRows(kHeadDim, TileVariant::kHopper);
  static constexpr int kTileKv = TileKv(kHeadDim, TileVariant::kHopper);
  static_assert(kCtaRows == 64 * kConsumers && kTileKv == 128);
  static constexpr int kStages = 2;
  // What the shared parts (ResolvePrefillTile, ApplyVariant, StorePrefillOutput) read: a warp
  // holds one m16 row block.
  static constexpr int kMmaQ = 1;
  static constexpr int kWarpRows = 16;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr bool kRope = false;
  // Register budgets (setmaxnreg): 128 x 72 + 256 x 216 = 64,512 of the SM's 65,536 (the
  // producer spilled at 56 in the ragged kernel; 40 / 232 spills both).
  static constexpr int kProducerRegs = 72;
  static constexpr int kConsumerRegs = 216;

  static constexpr int kQBytes = kCtaRows * kHeadDim * 2;
  static constexpr int kKvTileBytes = kTileKv * kHeadDim * 2;
  static constexpr int kQBuffers = 2;  // the next unit's Q lands during this one
  static constexpr int kKOffset = kQBuffers * kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvTileBytes;
  static constexpr int kTableOffset = kVOffset + kStages * kKvTileBytes;
  static constexpr int kBarrierOffset = kTableOffset + kStages * kTileKv * 8;
  static constexpr int kNumBarriers = 2 * kQBuffers + 4 * kStages;
  // + 1024: the dynamic shared memory is aligned up to 1024 bytes in the kernel.
  static constexpr int kSmemBytes = kBarrierOffset + kNumBarriers * 8 + 1024;
  static_assert(kQBytes % 1024 == 0 && kKvTileBytes % 1024 == 0);
  static_assert(kSmemBytes <= 227 * 1024, "one CTA per SM");
  // Element offset of (row, 16-byte chunk) in a Q buffer (SW128): the epilogue stages O in the
  // unit's own Q buffer, each warp in its own rows' bytes.
  static __device__ __forceinline__ int StagingOffset(int row, int chunk) {
    return static_cast<int>(Sw128Offset<kCtaRows>(row, chunk) / 2);
  }
};

// The kernel's mbarriers (shared-memory addresses), after the tiles.
template <class Cfg>
struct Sm90Barriers {
  static constexpr int kQ = 2 * Cfg::kQBuffers;  // q_full[kQBuffers], q_empty[kQBuffers]
  uint32_t base;
  __device__ __forceinline__ uint32_t q_full(int b) const { return base + 8 * b; }
  __device__ __forceinline__ uint32_t q_empty(int b) const {
    return base + 8 * (Cfg::kQBuffers + b);
  }
  __device__ __forceinline__ uint32_t k_full(int s) const { return base + 8 * (kQ + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const {
    return base + 8 * (kQ + Cfg::kStages + s);
  }
  __device__ __forceinline__ uint32_t k_empty(int s) const {
    return base + 8 * (kQ + 2 * Cfg::kStages + s);
  }
  __device__ __forceinline__ uint32_t v_empty(int s) const {
    return base + 8 * (kQ + 3 * Cfg::kStages + s);
  }
};

// The producer warpgroup's part of one work unit: its K/V tiles (and Q) into the pipeline.
// tile_count: the CTA's running K/V tile count (stages and phases), q_count: its units so far
// (Q's buffers and phases).
template <class Cfg, bool kPaged>
__device__ __forceinline__ void PrefillSm90ProduceUnit(const PrefillParams& p, const PrefillTile& t,
                                                       uint32_t smem, const void** table, int ptid,
                                                       int num_tiles, int& tile_count,
                                                       int q_count) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int CPR = Cfg::kChunks;
  constexpr int S = Cfg::kStages;
  constexpr int kRowsPerPass = 128 / CPR;
  constexpr int kPasses = N / kRowsPerPass;
  const Sm90Barriers<Cfg> bar{smem + Cfg::kBarrierOffset};

  const T* k_g = static_cast<const T*>(p.k_base);
  const int64_t v_minus_k = static_cast<const T*>(p.v_base) - k_g;
  const int chunk = ptid % CPR;
  const int row0 = ptid / CPR;
  const int64_t head_off = static_cast<int64_t>(t.kv_head) * p.head_stride;
  // Paged: thread ptid resolves row ptid of every tile (N == 128 rows, one per thread); the page
  // id of the next tile is loaded while the current one is issued.
  auto fetch_page = [&](int t0) {
    const int pos = t0 + ptid;
    if (pos >= t.kv_end) return 0;
    const int page_idx = p.page_shift >= 0 ? (pos >> p.page_shift) : pos / p.page_size;
    return __ldg(p.kv_indices + t.kv_row_begin + page_idx);
  };
  int page = 0;
  if constexpr (kPaged) page = fetch_page(t.kv_begin);

  // Q into buffer q_count % kQBuffers, once the consumers are done with the unit before last
  // (its mainloop and its epilogue's staging): packed row r = (query row r / group, head
  // kv_head * group + r % group); rows past the tile's end are zero. Every unit has its Q buffer,
  // one without K/V tiles too (its epilogue stages O there); issued after the unit's first K tile.
  auto load_q = [&] {
    const int qb = q_count % Cfg::kQBuffers;
    MbarrierWait(bar.q_empty(qb), ((q_count / Cfg::kQBuffers) & 1) ^ 1);
    const uint32_t q_smem = smem + qb * Cfg::kQBytes;
    const int group = p.group;
    const T* q_g = static_cast<const T*>(p.q);
    for (int idx = ptid; idx < Cfg::kCtaRows * CPR; idx += 128) {
      const int r = idx / CPR;
      const int c = idx % CPR;
      const int pk = t.packed_start + r;
      const bool valid = pk < t.packed_end;
      const int qi = valid ? pk / group : 0;
      const int h = t.kv_head * group + (valid ? pk % group : 0);
      const T* src =
          q_g + ((static_cast<int64_t>(t.qo_begin + qi) * p.num_qo_heads + h) * D + c * 8);
      CpAsync16(q_smem + Sw128Offset<Cfg::kCtaRows>(r, c), src, valid);
    }
    CpAsyncMbarrierArrive(bar.q_full(qb));
  };

  for (int j = 0; j < num_tiles; ++j, ++tile_count) {
    const int s = tile_count % S;
    const uint32_t empty_parity = ((tile_count / S) & 1) ^ 1;
    const int t0 = t.kv_begin + j * N;
    const void** slot_table = table + s * N;
    if constexpr (kPaged) {
      const int pos = t0 + ptid;
      const int slot =
          p.page_shift >= 0 ? (pos & (p.page_size - 1)) : pos - (pos / p.page_size) * p.page_size;
      slot_table[ptid] =
          pos < t.kv_end
              ? k_g + PagedRowOffset(page, slot, p.page_stride, p.token_stride) + head_off
              : k_g;
      if (j + 1 < num_tiles) page = fetch_page(t0 + N);
      NamedBarrierSync<128>(2);  // the table of this tile, written by all producer threads
    }
    auto row_src = [&](int row) -> const T* {
      if constexpr (kPaged) {
        return static_cast<const T*>(slot_table[row]);
      } else {
        return k_g + static_cast<int64_t>(t.kv_row_begin + t0 + row) * p.token_stride + head_off;
      }
    };
    MbarrierWait(bar.k_empty(s), empty_parity);
    const uint32_t ks = smem + Cfg::kKOffset + s * Cfg::kKvTileBytes;
#pragma unroll
    for (int ps = 0; ps < kPasses; ++ps) {
      const int row = row0 + ps * kRowsPerPass;
      const bool valid = t0 + row < t.kv_end;
      CpAsync16(ks + Sw128Offset<N>(row, chunk), valid ? row_src(row) + chunk * 8 : k_g, valid);
    }
    CpAsyncMbarrierArrive(bar.k_full(s));

    if (j == 0) load_q();

    MbarrierWait(bar.v_empty(s), empty_parity);
    const uint32_t vs = smem + Cfg::kVOffset + s * Cfg::kKvTileBytes;
#pragma unroll
    for (int ps = 0; ps < kPasses; ++ps) {
      const int row = row0 + ps * kRowsPerPass;
      const bool valid = t0 + row < t.kv_end;
      CpAsync16(vs + Sw128Offset<N>(row, chunk), valid ? row_src(row) + chunk * 8 + v_minus_k : k_g,
                valid);
    }
    CpAsyncMbarrierArrive(bar.v_full(s));
  }
  if (num_tiles == 0) load_q();
}

// S = Q K^T of this warpgroup's 64 rows and a K tile: D / 16 k steps (32 bytes within a row, the
// next 64-element column block every 4 steps), issued and committed, not waited for.
template <class Cfg>
__device__ __forceinline__ void IssueScores(float (&sacc)[Cfg::kTileKv / 8][4], uint32_t q_rows,
                                            uint32_t ks) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t k_off = (kk % 4) * 32;
    const uint64_t a = KMajorDescriptor(q_rows + (kk / 4) * (Cfg::kCtaRows * 128) + k_off);
    const uint64_t b = KMajorDescriptor(ks + (kk / 4) * (N * 128) + k_off);
    WgmmaSS<N, T>(sacc, a, b, kk > 0 ? 1 : 0);
  }
  WgmmaCommit();
}

// O += P V of a V tile: kTileKv / 16 k steps of 16 rows (2048 bytes), n = D; issued and
// committed, not waited for.
template <class Cfg>
__device__ __forceinline__ void IssuePV(float (&o)[Cfg::kHeadDim / 8][4],
                                        const uint32_t (&pa)[Cfg::kTileKv / 16][4], uint32_t vs) {
  using T = typename Cfg::T;
  constexpr int N = Cfg::kTileKv;
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    WgmmaRS<Cfg::kHeadDim, T>(o, pa[kk], MnMajorDescriptor<N>(vs + kk * 16 * 128), 1);
  }
  WgmmaCommit();
}

// P in the A layout: the C fragments of n-blocks 2 kk, 2 kk + 1 are k step kk.
template <class Cfg>
__device__ __forceinline__ void PackProbabilities(uint32_t (&pa)[Cfg::kTileKv / 16][4],
                                                  const float (&sacc)[Cfg::kTileKv / 8][4]) {
  using T = typename Cfg::T;
#pragma unroll
  for (int kk = 0; kk < Cfg::kTileKv / 16; ++kk) {
    pa[kk][0] = Pack2<T>(sacc[2 * kk][0], sacc[2 * kk][1]);
    pa[kk][1] = Pack2<T>(sacc[2 * kk][2], sacc[2 * kk][3]);
    pa[kk][2] = Pack2<T>(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
    pa[kk][3] = Pack2<T>(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
  }
}

template <class Cfg, bool kPaged, bool kMask>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    PrefillSm90Kernel(const __grid_constant__ PrefillParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int S = Cfg::kStages;

  extern __shared__ uint8_t smem_raw[];
  // 1024-byte aligned base (the swizzle atoms; kSmemBytes has the slack).
  const uint32_t raw_addr = SmemAddr(smem_raw);
  const uint32_t pad = ((raw_addr + 1023u) & ~1023u) - raw_addr;
  uint8_t* smem_ptr = smem_raw + pad;
  const uint32_t smem = raw_addr + pad;
  const Sm90Barriers<Cfg> bar{smem + Cfg::kBarrierOffset};
  const int tid = threadIdx.x;
  const int num_units = p.num_items * p.num_kv_heads;

  if (tid == 0) {
    for (int b = 0; b < Cfg::kQBuffers; ++b) {
      MbarrierInit(bar.q_full(b), 128);
      MbarrierInit(bar.q_empty(b), Cfg::kConsumerThreads);
    }
    for (int s = 0; s < S; ++s) {
      MbarrierInit(bar.k_full(s), 128);
      MbarrierInit(bar.v_full(s), 128);
      MbarrierInit(bar.k_empty(s), Cfg::kConsumerThreads);
      MbarrierInit(bar.v_empty(s), Cfg::kConsumerThreads);
    }
  }
  __syncthreads();

  // Units in the plan's order (item-major, KV head fastest: the planner's longest-first order
  // over all heads). KV-head-major (CTAs running at one time sharing a head's K/V in L2) was
  // measured worse on the H200 (2026-12-01): equal at 32 KV heads, B1 L4096 with 8 KV heads
  // 345 -> 234 TFLOP/s from the imbalance of the static round robin.
  // Both roles walk the same units and count the same tiles (stages, phases) and Q loads.
  auto unit_tiles = [&](const PrefillTile& t) {
    return t.kv_end > t.kv_begin ? (t.kv_end - t.kv_begin + N - 1) / N : 0;
  };
  int tile_count = 0;
  int q_count = 0;
  // Values that steer wgmma code are broadcast from lane 0 (__shfl_sync): ptxas then knows them
  // warp-uniform; wgmma behind a branch it cannot prove uniform is serialized (C7520).
  const int warpgroup = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (warpgroup == 0) {
    WarpgroupRegistersDecrease<Cfg::kProducerRegs>();
    const void** table = reinterpret_cast<const void**>(smem_ptr + Cfg::kTableOffset);
    for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x) {
      PrefillTile t;
      if (!ResolvePrefillTile<Cfg, kPaged>(p, t, unit)) continue;
      const int num_tiles = unit_tiles(t);
      PrefillSm90ProduceUnit<Cfg, kPaged>(p, t, smem, table, tid, num_tiles, tile_count, q_count);
      ++q_count;
    }
    CpAsyncWait<0>();  // nothing of this thread in flight when it exits
    return;
  }
  WarpgroupRegistersIncrease<Cfg::kConsumerRegs>();

  const int ctid = tid - 128;    // consumer thread
  const int cw = ctid / 32;      // consumer warp 0..7: rows 16 cw .. +15
  const int cg = warpgroup - 1;  // consumer warpgroup: rows 64 cg .. +63
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t4 = lane % 4;

  for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x) {
    PrefillTile t;
    if (!__shfl_sync(0xffffffffu, ResolvePrefillTile<Cfg, kPaged>(p, t, unit), 0)) continue;
    const int num_tiles = __shfl_sync(0xffffffffu, unit_tiles(t), 0);
    const int my_packed0 = t.packed_start + cw * 16 + g;
    // Causal: the tiles this warpgroup computes (past its last row's position a tile adds
    // nothing).
    int wg_tiles = num_tiles;
    if (p.variant.causal) {
      const int wg_pk_hi = min(t.packed_start + (cg + 1) * 64, t.packed_end) - 1;
      const int wg_qpos_hi = t.delta + wg_pk_hi / p.group;
      wg_tiles = wg_pk_hi < t.packed_start || wg_qpos_hi < t.kv_begin
                     ? 0
                     : min(num_tiles, (wg_qpos_hi - t.kv_begin) / N + 1);
      wg_tiles = __shfl_sync(0xffffffffu, wg_tiles, 0);
    }
    const int qpos_lo = t.delta + t.q_lo;
    const int qpos_hi = t.delta + t.q_hi;

    float o[1][D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[0][j][e] = 0.f;
    MmaRowsSoftmax rows[1];

    // This unit's Q buffer; this warpgroup's 64 rows of it (K-major A operand): row 64 cg of
    // every column block.
    const int qb = q_count % Cfg::kQBuffers;
    const uint32_t q_rows = smem + qb * Cfg::kQBytes + cg * 64 * 128;
    MbarrierWait(bar.q_full(qb), (q_count / Cfg::kQBuffers) & 1);
    float sacc[1][N / 8][4];
    uint32_t pa[N / 16][4];
    // The variant and the softmax of tile j's scores (in sacc) -> P_j, the rows' rescale factors.
    auto softmax = [&](int j, float(&row_scale)[2]) {
      ApplyVariant<Cfg, kMask>(sacc, p.variant, t.kv_begin + j * N, t.kv_end, qpos_lo, qpos_hi,
                               my_packed0, t.packed_end, t.delta, p.group, t4, t.b, t.kv_len);
      rows[0].Update(sacc[0], p.variant.logit.post, row_scale);
    };
    // The first tile: S_0 alone (no P V yet). Peeled, as the last tile's P V below, so that no
    // wgmma sits behind a branch inside the loop.
    if (wg_tiles > 0) {
      const int s = tile_count % S;
      MbarrierWait(bar.k_full(s), (tile_count / S) & 1);
      FenceProxyAsync();
      WgmmaFence();
      IssueScores<Cfg>(sacc[0], q_rows, smem + Cfg::kKOffset + s * Cfg::kKvTileBytes);
      WgmmaWait<0>();
      FenceAccumulators(sacc[0]);
      MbarrierArrive(bar.k_empty(s));
      float row_scale[2];
      softmax(0, row_scale);
      PackProbabilities<Cfg>(pa, sacc[0]);
    }
    for (int j = 1; j < wg_tiles; ++j) {
      const int count = tile_count + j;
      const int s = count % S;
      const int sp = (count - 1) % S;  // tile j - 1's stage
      MbarrierWait(bar.k_full(s), (count / S) & 1);
      FenceProxyAsync();
      WgmmaFence();
      IssueScores<Cfg>(sacc[0], q_rows, smem + Cfg::kKOffset + s * Cfg::kKvTileBytes);
      // P_{j-1} V_{j-1} under the softmax of S_j.
      MbarrierWait(bar.v_full(sp), ((count - 1) / S) & 1);
      FenceProxyAsync();
      IssuePV<Cfg>(o[0], pa, smem + Cfg::kVOffset + sp * Cfg::kKvTileBytes);
      WgmmaWait<1>();  // S_j (committed first)
      FenceAccumulators(sacc[0]);
      MbarrierArrive(bar.k_empty(s));
      float row_scale[2];
      softmax(j, row_scale);
      WgmmaWait<0>();  // P_{j-1} V_{j-1}
      FenceAccumulators(o[0]);
      FenceOperands(pa);
      MbarrierArrive(bar.v_empty(sp));
      RescaleRows(o[0], row_scale);
      PackProbabilities<Cfg>(pa, sacc[0]);
    }
    if (wg_tiles > 0) {  // the last tile's P V
      const int count = tile_count + wg_tiles - 1;
      const int s = count % S;
      MbarrierWait(bar.v_full(s), (count / S) & 1);
      FenceProxyAsync();
      WgmmaFence();
      IssuePV<Cfg>(o[0], pa, smem + Cfg::kVOffset + s * Cfg::kKvTileBytes);
      WgmmaWait<0>();
      FenceAccumulators(o[0]);
      FenceOperands(pa);
      MbarrierArrive(bar.v_empty(s));
    }
    // Tiles past this warpgroup's rows: waited for (k_full implies the producer is past the
    // previous use of both of the stage's buffers) and freed.
    for (int j = wg_tiles; j < num_tiles; ++j) {
      const int count = tile_count + j;
      const int s = count % S;
      MbarrierWait(bar.k_full(s), (count / S) & 1);
      MbarrierArrive(bar.k_empty(s));
      MbarrierArrive(bar.v_empty(s));
    }
    tile_count += num_tiles;
    // O staged in this unit's Q buffer (every MMA reading it is complete; each warp uses only its
    // own rows), then the buffer is free for the unit after next.
    StorePrefillOutput<Cfg>(p, t, o, rows, reinterpret_cast<T*>(smem_ptr + qb * Cfg::kQBytes), cw,
                            lane, unit);
    MbarrierArrive(bar.q_empty(qb));
    ++q_count;
  }
#else
  __trap();  // built for sm_90a only; the launcher dispatches here only on compute capability 9.0
#endif
}

template <int kHeadDim, typename T, bool kPaged, bool kMask>
cudaError_t LaunchPrefillSm90(const PrefillParams& params, cudaStream_t stream) {
  using Cfg = PrefillSm90Config<kHeadDim, T>;
  if (params.num_items == 0 || params.num_kv_heads == 0) return cudaSuccess;
  if (params.item_rows != Cfg::kCtaRows || params.sub_items != 1) return cudaErrorInvalidValue;
  auto kernel = PrefillSm90Kernel<Cfg, kPaged, kMask>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  // Persistent: one CTA per SM (or per unit when there are fewer).
  int dev = 0, sms = 0;
  err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  const int64_t units = static_cast<int64_t>(params.num_items) * params.num_kv_heads;
  if (units > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(units, sms));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace attnd::kernels::cuda::internal
