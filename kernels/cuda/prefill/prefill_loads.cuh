// The prefill kernel's loads into shared memory: the Q tile (rotated on the way in with RoPE)
// and the K/V tiles of the cp.async pipeline (paged through a table of row addresses, or
// ragged), and the in-place rotation of a K tile. Shared-memory layout: prefill_kernel.cuh.
#pragma once

#include <cstdint>

#include "blocks/paged_kv.cuh"
#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/vec.cuh"
#include "prefill/prefill_config.cuh"
#include "prefill/prefill_tile.cuh"

namespace attnd::kernels::cuda::internal {

// Q tile -> q_smem [kCtaRows][D] (packed rows; rows past the end are zero), one commit group
// issued by the caller. kRope: rotated in fp32 and split into hi (q_smem) + lo (q_lo_smem); each
// thread owns a (dim chunk, chunk + D/2) pair of one row; kfreq: the frequencies of this thread's
// pair chunk (tid % (kChunks / 2)).
template <class Cfg>
__device__ __forceinline__ void LoadQTile(const PrefillParams& p, const PrefillTile& t,
                                          typename Cfg::T* q_smem, typename Cfg::T* q_lo_smem,
                                          const RopeFreq (&kfreq)[Cfg::kRope ? 8 : 1], int tid) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int CTA_M = Cfg::kCtaRows;
  constexpr int CPR = Cfg::kChunks;
  constexpr int HALF_CPR = CPR / 2;
  constexpr int THREADS = Cfg::kThreads;
  const int group = p.group;
  const T* q_g = static_cast<const T*>(p.q);
  if constexpr (!Cfg::kRope) {
    for (int idx = tid; idx < CTA_M * CPR; idx += THREADS) {
      const int r = idx / CPR;
      const int c = idx % CPR;
      const int pk = t.packed_start + r;
      const bool valid = pk < t.packed_end;
      const int qi = valid ? pk / group : 0;
      const int h = t.kv_head * group + (valid ? pk % group : 0);
      const T* src =
          q_g + ((static_cast<int64_t>(t.qo_begin + qi) * p.num_qo_heads + h) * D + c * 8);
      CpAsync16(SmemAddr(q_smem + Swz<D>(r, c)), src, valid);
    }
  } else {
    for (int idx = tid; idx < CTA_M * HALF_CPR; idx += THREADS) {
      const int r = idx / HALF_CPR;
      const int c = idx % HALF_CPR;
      const int pk = t.packed_start + r;
      float lo[8], hi[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) lo[k] = hi[k] = 0.f;
      if (pk < t.packed_end) {
        const int qi = pk / group;
        const int h = t.kv_head * group + pk % group;
        const T* row = q_g + (static_cast<int64_t>(t.qo_begin + qi) * p.num_qo_heads + h) * D;
        Vec8<T>::ToFloat(*reinterpret_cast<const uint4*>(row + c * 8), lo);
        Vec8<T>::ToFloat(*reinterpret_cast<const uint4*>(row + c * 8 + D / 2), hi);
        RotateHalfPairs8(lo, hi, t.delta + qi + t.rope_offset, kfreq);
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
}

// The K/V tile loader of one CTA: thread -> (chunk ld_chunk, rows ld_row0 + k * kRowsPerPass).
// Paged: the page table is applied once per row, not once per (row, thread): thread r < N turns
// row r of a tile into the global address of its K row for this CTA's KV head
// (k_base + page * page_stride + slot * token_stride + kv_head * head_stride) in the smem table
// row_ptr[tile % S][r] one iteration before the tile's copies are issued (WriteOffsets), from a
// page id it read from global memory one iteration before that (FetchPage), so neither the
// dependent page-table load nor its arithmetic stalls the copy issue. All threads then read their
// rows' addresses from the table (a broadcast LDS.64 per row) and add only their chunk; the V
// row is at a fixed distance (v_base - k_base). Rows past kv_end get k_base (never read: their
// copies are zero-fills).
template <class Cfg, bool kPaged>
struct PrefillKvLoader {
  using T = typename Cfg::T;
  static constexpr int D = Cfg::kHeadDim;
  static constexpr int N = Cfg::kTileKv;
  static constexpr int CPR = Cfg::kChunks;
  static constexpr int ROWS_PER_PASS = Cfg::kThreads / CPR;
  static constexpr int PASSES = N / ROWS_PER_PASS;
  static_assert(N <= Cfg::kThreads, "one thread per row of the paged offset table");

  const PrefillParams& p;
  const PrefillTile& t;
  T* kv_smem;         // [kStages][2][N][D]
  const T** row_ptr;  // paged: [kStages][N]
  int tid;
  int ld_chunk;
  int ld_row0;
  const T* k_g;
  const T* v_g;
  int64_t head_off;
  int64_t v_minus_k;
  int next_page = 0;  // page id of row tid of the tile whose offsets are written next

  __device__ __forceinline__ PrefillKvLoader(const PrefillParams& params, const PrefillTile& tile,
                                             T* kv, const T** table, int thread)
      : p(params),
        t(tile),
        kv_smem(kv),
        row_ptr(table),
        tid(thread),
        ld_chunk(thread % CPR),
        ld_row0(thread / CPR),
        k_g(static_cast<const T*>(params.k_base)),
        v_g(static_cast<const T*>(params.v_base)),
        head_off(static_cast<int64_t>(tile.kv_head) * params.head_stride + (thread % CPR) * 8),
        v_minus_k(static_cast<const T*>(params.v_base) - static_cast<const T*>(params.k_base)) {}

  // Paged: reads the page id of row tid of the tile at tile_start into next_page.
  __device__ __forceinline__ void FetchPage(int tile_start) {
    if constexpr (kPaged) {
      const int pos = tile_start + tid;
      if (tid < N && pos < t.kv_end) {
        const int page_idx = p.page_shift >= 0 ? (pos >> p.page_shift) : pos / p.page_size;
        next_page = __ldg(p.kv_indices + t.kv_row_begin + page_idx);
      }
    }
  }
  // Paged: writes row tid's K address of the tile at tile_start (page next_page) into table slot
  // slot_idx.
  __device__ __forceinline__ void WriteOffsets(int slot_idx, int tile_start) {
    if constexpr (kPaged) {
      const int pos = tile_start + tid;
      if (tid < N) {
        const int slot =
            p.page_shift >= 0 ? (pos & (p.page_size - 1)) : pos - (pos / p.page_size) * p.page_size;
        const int64_t off = PagedRowOffset(next_page, slot, p.page_stride, p.token_stride) +
                            static_cast<int64_t>(t.kv_head) * p.head_stride;
        row_ptr[slot_idx * N + tid] = pos < t.kv_end ? k_g + off : k_g;
      }
    }
  }
  // Issues the copies of one K/V tile into `stage` (rows at or past kv_end are zero-filled).
  // Paged: reads the row addresses from row_ptr[table_idx] (written and made visible by a
  // barrier before).
  __device__ __forceinline__ void LoadTile(int stage, int table_idx, int tile_start) {
    T* ks = kv_smem + stage * 2 * N * D;
    T* vs = ks + N * D;
    const int64_t ragged_base =
        static_cast<int64_t>(t.kv_row_begin + tile_start) * p.token_stride + head_off;
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int row = ld_row0 + ps * ROWS_PER_PASS;
      const bool valid = tile_start + row < t.kv_end;
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
  }
};

// kRope: rotates the K rows of a landed tile ks [N][D] (positions t0..): the hi part in place,
// the lo part into k_lo_smem [N][D]; rows past kv_end are zero (hi) and get zero lo parts.
template <class Cfg>
__device__ __forceinline__ void RotateKTile(typename Cfg::T* ks, typename Cfg::T* k_lo_smem, int t0,
                                            int kv_end, int rope_offset, const RopeFreq (&kfreq)[8],
                                            int tid) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int HALF_CPR = Cfg::kChunks / 2;
  for (int idx = tid; idx < N * HALF_CPR; idx += Cfg::kThreads) {
    const int r = idx / HALF_CPR;
    const int c = idx % HALF_CPR;
    const int pos = t0 + r;
    uint4* lo_ptr = reinterpret_cast<uint4*>(ks + Swz<D>(r, c));
    uint4* hi_ptr = reinterpret_cast<uint4*>(ks + Swz<D>(r, c + HALF_CPR));
    uint4 lo_lo = make_uint4(0, 0, 0, 0), hi_lo = make_uint4(0, 0, 0, 0);
    if (pos < kv_end) {
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
}

}  // namespace attnd::kernels::cuda::internal
