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
// A plan made for a wider tile runs here with kSubItems CTAs per planned item. Building blocks:
// cp.async, ldmatrix, mma and the swizzle (blocks/ptx.cuh), the softmax state (softmax_state.cuh),
// logits, soft cap and window (variant.cuh), RoPE and the hi/lo split (rope.cuh), paged rows
// (paged_kv.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "blocks/paged_kv.cuh"
#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/variant.cuh"
#include "blocks/vec.cuh"
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
  // kRope: the RoPE pairs a thread rotates are the same for all of its (row, pair) items.
  static_assert(kThreads % (kChunks / 2) == 0, "fixed RoPE pair chunk per thread");
  static_assert(kHeadDim % 64 == 0, "the swizzle needs at least 8 chunks per row");
  static_assert(kTileKv % 16 == 0);
  static_assert(kThreads % kChunks == 0 && kTileKv % (kThreads / kChunks) == 0);
};

// ---- the kernel -----------------------------------------------------------------------------

template <class Cfg, bool kPaged>
__global__ void __launch_bounds__(Cfg::kThreads)
    PrefillKernel(const __grid_constant__ PrefillParams p) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int MQ = Cfg::kMmaQ;
  constexpr int CTA_M = Cfg::kCtaRows;
  constexpr int CPR = Cfg::kChunks;
  constexpr int THREADS = Cfg::kThreads;
  constexpr bool kRope = Cfg::kRope;
  constexpr int HALF_CPR = CPR / 2;  // 16-byte chunks in half a row (RoPE pairs)

  extern __shared__ __align__(128) uint8_t smem_raw[];
  T* q_smem = reinterpret_cast<T*>(smem_raw);
  T* kv_smem = q_smem + CTA_M * D;
  T* q_lo_smem = q_smem + Cfg::kQLoOffset;  // kRope
  T* k_lo_smem = q_smem + Cfg::kKLoOffset;  // kRope

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;  // MMA group id: row within an 8-row half
  const int t4 = lane % 4;  // thread in group: column pair

  // Grid: item-major, KV head fastest, so that the planner's longest-first order holds over
  // all heads (the grid's tail is made of the shortest tiles). KV-head-major (FA2's order, for
  // L2 reuse) was measured worse (H200, 2026-11-21): B1 L4096 lost ~10% to the tail, as a
  // list-scheduling simulation predicts (88% vs 99.5% efficiency with 64-row tiles).
  // kRope: p.sub_items CTAs of CTA_M rows share a planned item of p.item_rows rows (a plan made
  // for a wider tile); the other kernels have the plan's tile (one CTA per item and KV head).
  const int item_sub = blockIdx.x / p.num_kv_heads;
  const int kv_head = blockIdx.x - item_sub * p.num_kv_heads;
  const int item = kRope ? item_sub / p.sub_items : item_sub;
  const int sub = kRope ? item_sub - item * p.sub_items : 0;
  const PrefillItem it = p.items[item];
  const int b = it.request;
  const int group = p.group;

  const int qo_begin = p.qo_indptr[b];
  const int qo_len = p.qo_indptr[b + 1] - qo_begin;
  int kv_len;
  int kv_row_begin;  // paged: first page-table slot of b; ragged: first K/V row of b
  if constexpr (kPaged) {
    kv_row_begin = p.kv_indptr[b];
    const int num_pages = p.kv_indptr[b + 1] - kv_row_begin;
    kv_len = num_pages > 0 ? KvLengthOfPages(num_pages, p.page_size, p.last_page_len[b]) : 0;
  } else {
    kv_row_begin = p.kv_indptr[b];
    kv_len = p.kv_indptr[b + 1] - kv_row_begin;
  }

  const int packed_start = it.packed_start + sub * CTA_M;
  const int item_end = kRope ? min(it.packed_start + p.item_rows, qo_len * group) : qo_len * group;
  const int packed_end = min(packed_start + CTA_M, item_end);
  if (packed_start >= packed_end) return;  // the last sub-item of a short item
  const int q_lo = packed_start / group;
  const int q_hi = (packed_end - 1) / group;
  const int delta = kv_len - qo_len;  // query row i sits at kv position delta + i

  // KV range any row of this tile can see; tiles outside it are never loaded.
  const int kv_begin = FirstVisibleKv(p.variant, delta + q_lo, 0);
  int kv_end = kv_len;
  if (p.variant.causal) kv_end = min(kv_len, delta + q_hi + 1);
  const int rope_offset = (kRope && p.variant.rope_offsets != nullptr) ? p.variant.rope_offsets[b] : 0;
  // kRope: the frequencies of the 8 pairs of the chunk this thread rotates (tid % HALF_CPR, the
  // same for every (row, chunk) item of the thread: THREADS % HALF_CPR == 0).
  RopeFreq kfreq[kRope ? 8 : 1];
  if constexpr (kRope) {
#pragma unroll
    for (int k = 0; k < 8; ++k) kfreq[k] = p.variant.rope_freq[(tid % HALF_CPR) * 8 + k];
  }

  const T* q_g = static_cast<const T*>(p.q);

  // ---- Q tile -> smem (packed rows; rows past the end are zero) ----
  if constexpr (!kRope) {
    for (int idx = tid; idx < CTA_M * CPR; idx += THREADS) {
      const int r = idx / CPR;
      const int c = idx % CPR;
      const int pk = packed_start + r;
      const bool valid = pk < packed_end;
      const int qi = valid ? pk / group : 0;
      const int h = kv_head * group + (valid ? pk % group : 0);
      const T* src = q_g + ((static_cast<int64_t>(qo_begin + qi) * p.num_qo_heads + h) * D + c * 8);
      CpAsync16(SmemAddr(q_smem + Swz<D>(r, c)), src, valid);
    }
  } else {
    // Rotated on the way in (fp32, split into hi + lo): each thread owns a (dim chunk,
    // chunk + D/2) pair of one row.
    for (int idx = tid; idx < CTA_M * HALF_CPR; idx += THREADS) {
      const int r = idx / HALF_CPR;
      const int c = idx % HALF_CPR;
      const int pk = packed_start + r;
      float lo[8], hi[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) lo[k] = hi[k] = 0.f;
      if (pk < packed_end) {
        const int qi = pk / group;
        const int h = kv_head * group + pk % group;
        const T* row = q_g + (static_cast<int64_t>(qo_begin + qi) * p.num_qo_heads + h) * D;
        Vec8<T>::ToFloat(*reinterpret_cast<const uint4*>(row + c * 8), lo);
        Vec8<T>::ToFloat(*reinterpret_cast<const uint4*>(row + c * 8 + D / 2), hi);
        RotateHalfPairs8(lo, hi, delta + qi + rope_offset, kfreq);
      }
      uint4 lo_hi, lo_lo, hi_hi, hi_lo;
      SplitHiLo8<T>(lo, &lo_hi, &lo_lo);
      SplitHiLo8<T>(hi, &hi_hi, &hi_lo);
      *reinterpret_cast<uint4*>(q_smem + Swz<D>(r, c)) = lo_hi;
      *reinterpret_cast<uint4*>(q_smem + Swz<D>(r, c + HALF_CPR)) = hi_hi;
      *reinterpret_cast<uint4*>(q_lo_smem + Swz<D>(r, c)) = lo_lo;
      *reinterpret_cast<uint4*>(q_lo_smem + Swz<D>(r, c + HALF_CPR)) = hi_lo;
    }
  }
  CpAsyncCommit();

  // ---- K/V tile loader: thread -> (chunk, rows row0 + k * ROWS_PER_PASS) ----
  constexpr int ROWS_PER_PASS = THREADS / CPR;
  constexpr int PASSES = N / ROWS_PER_PASS;
  static_assert(N <= THREADS, "one thread per row of the paged offset table");
  const int ld_chunk = tid % CPR;
  const int ld_row0 = tid / CPR;
  const T* k_g = static_cast<const T*>(p.k_base);
  const T* v_g = static_cast<const T*>(p.v_base);
  const int64_t head_off = static_cast<int64_t>(kv_head) * p.head_stride + ld_chunk * 8;
  // Paged: the page table is applied once per row, not once per (row, thread): thread r < N
  // turns row r of a tile into the global address of its K row for this CTA's KV head
  // (k_base + page * page_stride + slot * token_stride + kv_head * head_stride) in the smem
  // table row_ptr[tile % S][r] one iteration before the tile's copies are issued, from a page
  // id it read from global memory one iteration before that (so neither the dependent
  // page-table load nor its arithmetic stalls the copy issue). All threads then read their
  // rows' addresses from the table (a broadcast LDS.64 per row) and add only their chunk; the
  // V row is at a fixed distance (v_base - k_base). Rows past kv_end get k_base (never read:
  // their copies are zero-fills).
  constexpr int S = Cfg::kStages;
  const T** row_ptr = reinterpret_cast<const T**>(q_smem + Cfg::kSmemElems);
  const int64_t v_minus_k = static_cast<const T*>(p.v_base) - static_cast<const T*>(p.k_base);
  int next_page = 0;  // page id of row tid of the tile whose offsets are written next
  auto fetch_page = [&](int tile_start) {
    if constexpr (kPaged) {
      const int pos = tile_start + tid;
      if (tid < N && pos < kv_end) {
        const int page_idx = p.page_shift >= 0 ? (pos >> p.page_shift) : pos / p.page_size;
        next_page = __ldg(p.kv_indices + kv_row_begin + page_idx);
      }
    }
  };
  auto write_offsets = [&](int slot_idx, int tile_start) {
    if constexpr (kPaged) {
      const int pos = tile_start + tid;
      if (tid < N) {
        const int slot =
            p.page_shift >= 0 ? (pos & (p.page_size - 1)) : pos - (pos / p.page_size) * p.page_size;
        const int64_t off = PagedRowOffset(next_page, slot, p.page_stride, p.token_stride) +
                            static_cast<int64_t>(kv_head) * p.head_stride;
        row_ptr[slot_idx * N + tid] = pos < kv_end ? k_g + off : k_g;
      }
    }
  };
  // Issues the copies of one K/V tile (rows at or past kv_end are zero-filled). Paged: reads
  // the row addresses from row_ptr[table_idx] (written and made visible by a barrier before).
  auto load_tile = [&](int stage, int table_idx, int tile_start) {
    T* ks = kv_smem + stage * 2 * N * D;
    T* vs = ks + N * D;
    const int64_t ragged_base =
        static_cast<int64_t>(kv_row_begin + tile_start) * p.token_stride + head_off;
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int row = ld_row0 + ps * ROWS_PER_PASS;
      const bool valid = tile_start + row < kv_end;
      const int s = Swz<D>(row, ld_chunk);
      if constexpr (kPaged) {
        const T* k_src = row_ptr[table_idx * N + row] + ld_chunk * 8;
        CpAsync16(SmemAddr(ks + s), k_src, valid);
        CpAsync16(SmemAddr(vs + s), k_src + v_minus_k, valid);
      } else {
        int64_t off = ragged_base + static_cast<int64_t>(row) * p.token_stride;
        if (!valid) off = 0;
        CpAsync16(SmemAddr(ks + s), k_g + off, valid);
        CpAsync16(SmemAddr(vs + s), v_g + off, valid);
      }
    }
  };

  // ---- per-thread row state ----
  // This thread's rows: r(mq, h) = warp * 16*MQ + mq * 16 + g + 8 h (packed row
  // packed_start + r; rows past packed_end are computed on zeros and never stored).
  const int my_packed0 = packed_start + warp * Cfg::kWarpRows + g;
  float o_acc[MQ][D / 8][4];
  float m_run[MQ][2];  // running max, log2 domain (scaled logits)
  float d_run[MQ][2];
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mq][j][e] = 0.f;
    }
    m_run[mq][0] = m_run[mq][1] = -INFINITY;
    d_run[mq][0] = d_run[mq][1] = 0.f;
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
      next_page = 0;
      if (i < num_tiles) fetch_page(kv_begin + i * N);
      first_pages[i] = next_page;
    }
#pragma unroll
    for (int i = 0; i < S; ++i) {
      next_page = first_pages[i];
      if (i < num_tiles) write_offsets(i, kv_begin + i * N);
    }
    if (S < num_tiles) fetch_page(kv_begin + S * N);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < num_tiles) load_tile(i, i, kv_begin + i * N);
    CpAsyncCommit();
  }

  const int qpos_lo = delta + q_lo;
  const int qpos_hi = delta + q_hi;
  // Causal: a K/V tile past this warp's last query position contributes exactly nothing to
  // its rows (p = 0, the max and the sums unchanged), so the warp skips its MMAs and softmax
  // there and only takes part in the loads and barriers. Matters on the diagonal: with 128-row
  // tiles and 64 keys per step, half of the last tile's warp work of every causal item.
  // warp_tiles: the tiles this warp computes (one register; the loop's other state is at the
  // register cap). Paged kernels only: in the ragged ones the split loop measured 5-10% slower
  // (H200 run c, NOTES.md), so they keep one loop over all tiles.
  int warp_tiles = num_tiles;
  if (kPaged && p.variant.causal) {
    const int warp_pk_hi = min(packed_start + (warp + 1) * Cfg::kWarpRows, packed_end) - 1;
    const int warp_qpos_hi = delta + warp_pk_hi / group;
    warp_tiles = warp_qpos_hi < kv_begin ? 0 : min(num_tiles, (warp_qpos_hi - kv_begin) / N + 1);
  }
  const uint32_t q_base = SmemAddr(q_smem);
  const uint32_t q_lo_base = SmemAddr(q_lo_smem);  // kRope
  const uint32_t k_lo_addr = SmemAddr(k_lo_smem);  // kRope
  // Logits to the base-2 domain (numerics.h): p = 2^(CapLogit(s) * post - m), the scale folded
  // into the exponent's FFMA; m is kept scaled.
  const LogitScale& ls = p.variant.logit;

  int stage = 0;  // tile % S
  // The part of an iteration every warp runs (copies, table, barriers, RoPE of K): the main
  // loop below for the tiles this warp computes, then (paged) the tail loop for the rest. (Two
  // loops, not a branch around the compute: the branch cost ptxas 60-90 bytes of spills.)
  // The barrier: with the tail loop, warps reach it at different instructions.
  auto barrier = [] {
    if constexpr (kPaged) CtaBarrierDivergent();
    else __syncthreads();
  };
  auto begin_tile = [&](int tile, int t0) {
    CpAsyncWait<S - 2>();  // Q and tile `tile` (this thread's copies)
    barrier();             // everyone's copies; stage (tile - 1) % S, table slot `stage` free
    const int ahead = stage == 0 ? S - 1 : stage - 1;  // (tile + S - 1) % S
    if (tile + S - 1 < num_tiles) load_tile(ahead, ahead, t0 + (S - 1) * N);
    CpAsyncCommit();
    if constexpr (kPaged) {
      if (tile + S < num_tiles) {
        write_offsets(stage, t0 + S * N);
        if (tile + S + 1 < num_tiles) fetch_page(t0 + (S + 1) * N);
      }
    }

    T* ks = kv_smem + stage * 2 * N * D;
    if constexpr (kRope) {  // rotate the tile's K rows: hi in place, lo into k_lo
      for (int idx = tid; idx < N * HALF_CPR; idx += THREADS) {
        const int r = idx / HALF_CPR;
        const int c = idx % HALF_CPR;
        const int pos = t0 + r;
        uint4* lo_ptr = reinterpret_cast<uint4*>(ks + Swz<D>(r, c));
        uint4* hi_ptr = reinterpret_cast<uint4*>(ks + Swz<D>(r, c + HALF_CPR));
        uint4 lo_lo = make_uint4(0, 0, 0, 0), hi_lo = make_uint4(0, 0, 0, 0);
        if (pos < kv_end) {  // rows past the end are zero (hi) and get zero lo parts
          float lo[8], hi[8];
          Vec8<T>::ToFloat(*lo_ptr, lo);
          Vec8<T>::ToFloat(*hi_ptr, hi);
          RotateHalfPairs8(lo, hi, pos + rope_offset, kfreq);
          SplitHiLo8<T>(lo, lo_ptr, &lo_lo);
          SplitHiLo8<T>(hi, hi_ptr, &hi_lo);
        }
        *reinterpret_cast<uint4*>(k_lo_smem + Swz<D>(r, c)) = lo_lo;
        *reinterpret_cast<uint4*>(k_lo_smem + Swz<D>(r, c + HALF_CPR)) = hi_lo;
      }
      barrier();
    }
  };

  int tile = 0;
  for (; tile < warp_tiles; ++tile) {
    const int t0 = kv_begin + tile * N;
    begin_tile(tile, t0);
    T* ks = kv_smem + stage * 2 * N * D;
    T* vs = ks + N * D;
    // ---- S = Q K^T  (per warp: [16*MQ] x [N]) ----
    float s[MQ][N / 8][4];
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
      for (int j = 0; j < N / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mq][j][e] = 0.f;

    const uint32_t ks_addr = SmemAddr(ks);
    const uint32_t vs_addr = SmemAddr(vs);
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

    // ---- logits (log2 domain), mask ----
    const bool needs_mask = (t0 + N > kv_end) || (p.variant.causal && t0 + N - 1 > qpos_lo) ||
                            (p.variant.window_left >= 0 && t0 < qpos_hi - p.variant.window_left);
    if (ls.soft_cap) {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq)
#pragma unroll
        for (int j = 0; j < N / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mq][j][e] = CapLogit(s[mq][j][e], ls);
    }
    if (needs_mask) {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int pk = min(my_packed0 + mq * 16 + 8 * h, packed_end - 1);
          const int qpos = delta + pk / group;
          // visible: pos in [lo, hi]
          const int lo = p.variant.window_left >= 0 ? qpos - p.variant.window_left : INT_MIN;
          const int hi = p.variant.causal ? min(qpos, kv_end - 1) : kv_end - 1;
#pragma unroll
          for (int j = 0; j < N / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int pos = t0 + j * 8 + 2 * t4 + e;
              if (pos < lo || pos > hi) s[mq][j][2 * h + e] = -INFINITY;
            }
          }
        }
      }
    }

    // ---- online softmax ----
    float row_scale[MQ][2];
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < N / 8; ++j) {
          mx = fmaxf(mx, fmaxf(s[mq][j][2 * h], s[mq][j][2 * h + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // mx: max of the unscaled logits (post > 0, so scaling keeps the order).
        const float m_new = fmaxf(m_run[mq][h], mx * ls.post);
        // All visible logits so far -inf (nothing visible yet): subtract 0 so no inf - inf.
        const float base = SoftmaxBase(m_new);
        const float scale = Exp2(m_run[mq][h] - base);  // SoftmaxRescale(m_run, m_new)
        m_run[mq][h] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < N / 8; ++j) {
          const float p0 = Exp2(fmaf(s[mq][j][2 * h], ls.post, -base));
          const float p1 = Exp2(fmaf(s[mq][j][2 * h + 1], ls.post, -base));
          s[mq][j][2 * h] = p0;
          s[mq][j][2 * h + 1] = p1;
          sum += p0 + p1;
        }
        d_run[mq][h] = d_run[mq][h] * scale + sum;
        row_scale[mq][h] = scale;
      }
    }
    // Rescale O only when the running max of some row of the warp moved (scale is exactly 1
    // otherwise: 2^0). Warp-uniform branch; on long causal rows most tiles keep the max, and the
    // rescale is MQ * D / 2 FMULs per thread per tile (~10% of the loop's issue slots, SASS).
    bool moved = false;
#pragma unroll
    for (int mq = 0; mq < MQ; ++mq) moved |= (row_scale[mq][0] != 1.f) | (row_scale[mq][1] != 1.f);
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int j = 0; j < D / 8; ++j) {
            o_acc[mq][j][2 * h] *= row_scale[mq][h];
            o_acc[mq][j][2 * h + 1] *= row_scale[mq][h];
          }
        }
      }
    }

    // ---- O += P V ----
    // P in the A layout: the C fragments of n-fragments 2nn, 2nn+1 form the k16 step nn.
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

  // ---- finalize: o /= d, lse; stage O in this warp's own Q rows; 16-byte stores ----
  T* o_g = static_cast<T*>(p.o);
#pragma unroll
  for (int mq = 0; mq < MQ; ++mq) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float d = d_run[mq][h];
      d += __shfl_xor_sync(0xffffffffu, d, 1);
      d += __shfl_xor_sync(0xffffffffu, d, 2);
      const float inv = InvSum(d);
      const int r = warp * Cfg::kWarpRows + mq * 16 + g + 8 * h;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(q_smem + Swz<D>(r, j) + 2 * t4) =
            Pack2<T>(o_acc[mq][j][2 * h] * inv, o_acc[mq][j][2 * h + 1] * inv);
      }
      if (p.lse != nullptr && t4 == 0) {
        const int pk = packed_start + r;
        if (pk < packed_end) {
          const int qi = pk / group;
          const int head = kv_head * group + pk % group;
          p.lse[static_cast<int64_t>(qo_begin + qi) * p.num_qo_heads + head] =
              LseFromBase2(m_run[mq][h], d);
        }
      }
    }
  }
  __syncwarp();
  for (int idx = lane; idx < Cfg::kWarpRows * CPR; idx += 32) {
    const int r = warp * Cfg::kWarpRows + idx / CPR;
    const int c = idx % CPR;
    const int pk = packed_start + r;
    if (pk < packed_end) {
      const int qi = pk / group;
      const int head = kv_head * group + pk % group;
      T* dst = o_g + (static_cast<int64_t>(qo_begin + qi) * p.num_qo_heads + head) * D + c * 8;
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(q_smem + Swz<D>(r, c));
    }
  }
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
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         Cfg::kSmemBytes);
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
