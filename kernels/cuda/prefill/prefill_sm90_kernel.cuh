// Batch prefill / append attention for Hopper (sm_90a): warpgroup MMAs (wgmma) from shared memory,
// a warp-specialized pipeline (one producer warpgroup loads, two consumer warpgroups compute) and
// mbarrier handshakes, FA3's shape. Same plan (work items, split-KV chunks), same parameter block
// and same results as the FA2-class kernel (prefill_kernel.cuh), which stays the fallback for what
// this one does not cover (RoPE on the fly, head_dim 256, devices other than sm_90).
//
// CTA: 384 threads = warpgroup 0 (producer) + warpgroups 1, 2 (consumers). One CTA = one tile of
// kCtaRows = 128 packed query rows (GQA: the query heads of one KV head packed into M, as
// planning/prefill_tiling.h) x one KV head; consumer warpgroup c owns rows 64 c .. 64 c + 63, its
// warp w rows 16 w .. +15 (the accumulator layout of blocks/wgmma.cuh).
//
// Shared memory (SW128 tiles, blocks/wgmma.cuh; every tile 1024-byte aligned):
//   q       [128][D]                    the Q tile (staging of O in the epilogue)
//   k, v    [kStages][kTileKv][D] each  the K/V pipeline
//   table   [kStages][kTileKv] pointers paged: the K row addresses of a stage's tile
//   barriers full_q, full_k[S], full_v[S], empty[S] (mbarriers)
//
// Per K/V tile j (stage j % S, phase (j / S) & 1):
//   producer:  rows' addresses (page table applied once per row, one row per thread, the page id
//              read one tile ahead), wait empty[s], cp.async K -> arrive full_k[s] when landed,
//              cp.async V -> arrive full_v[s] (zero-filled past kv_end: V rows weigh p = 0, and
//              0 * garbage could be NaN).
//   consumers: wait full_k[s]; S = Q K^T (D / 16 wgmma m64n128k16, both operands from shared
//              memory); the variant on the logits and the online softmax (ApplyVariant and
//              MmaRowsSoftmax, shared with the FA2 kernel); P to 16 bits in registers; wait
//              full_v[s]; O += P V (kTileKv / 16 wgmma m64nDk16, A = P from registers, V
//              MN-major); arrive empty[s]. The two consumer warpgroups interleave on the tensor
//              cores: one's softmax runs under the other's MMAs.
// Causal: a consumer warpgroup skips the MMAs of tiles past its last row (it still waits for the
// tile and frees it, so the barriers' phases stay in step).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
  // Register budgets (setmaxnreg): 128 x 56 + 256 x 224 = 64,512 of the SM's 65,536.
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs = 224;

  static constexpr int kQBytes = kCtaRows * kHeadDim * 2;
  static constexpr int kKvTileBytes = kTileKv * kHeadDim * 2;
  static constexpr int kKOffset = kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvTileBytes;
  static constexpr int kTableOffset = kVOffset + kStages * kKvTileBytes;
  static constexpr int kBarrierOffset = kTableOffset + kStages * kTileKv * 8;
  static constexpr int kNumBarriers = 1 + 3 * kStages;
  // + 1024: the dynamic shared memory is aligned up to 1024 bytes in the kernel.
  static constexpr int kSmemBytes = kBarrierOffset + kNumBarriers * 8 + 1024;
  static_assert(kQBytes % 1024 == 0 && kKvTileBytes % 1024 == 0);
};

// The producer warpgroup: Q, then every K/V tile of the CTA's range into the pipeline.
template <class Cfg, bool kPaged>
__device__ __forceinline__ void PrefillSm90Produce(const PrefillParams& p, const PrefillTile& t,
                                                   uint32_t smem, const void** table, int ptid,
                                                   int num_tiles) {
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int CPR = Cfg::kChunks;
  constexpr int S = Cfg::kStages;
  constexpr int kRowsPerPass = 128 / CPR;
  constexpr int kPasses = N / kRowsPerPass;
  const uint32_t bars = smem + Cfg::kBarrierOffset;
  const uint32_t full_q = bars;
  auto full_k = [&](int s) { return bars + 8 * (1 + s); };
  auto full_v = [&](int s) { return bars + 8 * (1 + S + s); };
  auto empty = [&](int s) { return bars + 8 * (1 + 2 * S + s); };

  // Q: packed row r = (query row r / group, head kv_head * group + r % group); rows past the
  // tile's end are zero.
  const int group = p.group;
  const T* q_g = static_cast<const T*>(p.q);
  for (int idx = ptid; idx < Cfg::kCtaRows * CPR; idx += 128) {
    const int r = idx / CPR;
    const int c = idx % CPR;
    const int pk = t.packed_start + r;
    const bool valid = pk < t.packed_end;
    const int qi = valid ? pk / group : 0;
    const int h = t.kv_head * group + (valid ? pk % group : 0);
    const T* src = q_g + ((static_cast<int64_t>(t.qo_begin + qi) * p.num_qo_heads + h) * D + c * 8);
    CpAsync16(smem + Sw128Offset<Cfg::kCtaRows>(r, c), src, valid);
  }
  CpAsyncMbarrierArrive(full_q);

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
  if constexpr (kPaged) {
    if (num_tiles > 0) page = fetch_page(t.kv_begin);
  }
  for (int j = 0; j < num_tiles; ++j) {
    const int s = j % S;
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
    MbarrierWait(empty(s), ((j / S) & 1) ^ 1);
    const uint32_t ks = smem + Cfg::kKOffset + s * Cfg::kKvTileBytes;
    const uint32_t vs = smem + Cfg::kVOffset + s * Cfg::kKvTileBytes;
    auto row_src = [&](int row) -> const T* {
      if constexpr (kPaged) {
        return static_cast<const T*>(slot_table[row]);
      } else {
        return k_g + static_cast<int64_t>(t.kv_row_begin + t0 + row) * p.token_stride + head_off;
      }
    };
#pragma unroll
    for (int ps = 0; ps < kPasses; ++ps) {
      const int row = row0 + ps * kRowsPerPass;
      const bool valid = t0 + row < t.kv_end;
      CpAsync16(ks + Sw128Offset<N>(row, chunk), valid ? row_src(row) + chunk * 8 : k_g, valid);
    }
    CpAsyncMbarrierArrive(full_k(s));
#pragma unroll
    for (int ps = 0; ps < kPasses; ++ps) {
      const int row = row0 + ps * kRowsPerPass;
      const bool valid = t0 + row < t.kv_end;
      CpAsync16(vs + Sw128Offset<N>(row, chunk), valid ? row_src(row) + chunk * 8 + v_minus_k : k_g,
                valid);
    }
    CpAsyncMbarrierArrive(full_v(s));
  }
  CpAsyncWait<0>();  // nothing of this thread in flight when it exits
}

template <class Cfg, bool kPaged>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    PrefillSm90Kernel(const __grid_constant__ PrefillParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Cfg::T;
  constexpr int D = Cfg::kHeadDim;
  constexpr int N = Cfg::kTileKv;
  constexpr int S = Cfg::kStages;
  constexpr int CTA_M = Cfg::kCtaRows;

  extern __shared__ uint8_t smem_raw[];
  // 1024-byte aligned base (the swizzle atoms; kSmemBytes has the slack).
  const uint32_t raw_addr = SmemAddr(smem_raw);
  const uint32_t pad = ((raw_addr + 1023u) & ~1023u) - raw_addr;
  uint8_t* smem_ptr = smem_raw + pad;
  const uint32_t smem = raw_addr + pad;
  const uint32_t bars = smem + Cfg::kBarrierOffset;
  const uint32_t full_q = bars;
  auto full_k = [&](int s) { return bars + 8 * (1 + s); };
  auto full_v = [&](int s) { return bars + 8 * (1 + S + s); };
  auto empty = [&](int s) { return bars + 8 * (1 + 2 * S + s); };

  const int tid = threadIdx.x;
  PrefillTile t;
  if (!ResolvePrefillTile<Cfg, kPaged>(p, t)) return;  // uniform over the CTA
  const int num_tiles = t.kv_end > t.kv_begin ? (t.kv_end - t.kv_begin + N - 1) / N : 0;

  if (tid == 0) {
    MbarrierInit(full_q, 128);
    for (int s = 0; s < S; ++s) {
      MbarrierInit(full_k(s), 128);
      MbarrierInit(full_v(s), 128);
      MbarrierInit(empty(s), Cfg::kConsumerThreads);
    }
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    WarpgroupRegistersDecrease<Cfg::kProducerRegs>();
    PrefillSm90Produce<Cfg, kPaged>(
        p, t, smem, reinterpret_cast<const void**>(smem_ptr + Cfg::kTableOffset), tid, num_tiles);
    return;
  }
  WarpgroupRegistersIncrease<Cfg::kConsumerRegs>();

  const int ctid = tid - 128;    // consumer thread
  const int cw = ctid / 32;      // consumer warp 0..7: rows 16 cw .. +15
  const int cg = warpgroup - 1;  // consumer warpgroup: rows 64 cg .. +63
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t4 = lane % 4;
  const int my_packed0 = t.packed_start + cw * 16 + g;

  // Causal: the tiles this warpgroup computes (past its last row's position a tile adds nothing).
  int wg_tiles = num_tiles;
  if (p.variant.causal) {
    const int wg_pk_hi = min(t.packed_start + (cg + 1) * 64, t.packed_end) - 1;
    const int wg_qpos_hi = t.delta + wg_pk_hi / p.group;
    wg_tiles = wg_pk_hi < t.packed_start || wg_qpos_hi < t.kv_begin
                   ? 0
                   : min(num_tiles, (wg_qpos_hi - t.kv_begin) / N + 1);
  }
  const int qpos_lo = t.delta + t.q_lo;
  const int qpos_hi = t.delta + t.q_hi;

  float o[1][D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[0][j][e] = 0.f;
  MmaRowsSoftmax rows[1];

  MbarrierWait(full_q, 0);
  // This warpgroup's 64 Q rows (K-major A operand): row 64 cg of every column block.
  const uint32_t q_rows = smem + cg * 64 * 128;
  for (int j = 0; j < num_tiles; ++j) {
    const int s = j % S;
    const uint32_t phase = (j / S) & 1;
    MbarrierWait(full_k(s), phase);
    if (j < wg_tiles) {
      FenceProxyAsync();
      const int t0 = t.kv_begin + j * N;
      const uint32_t ks = smem + Cfg::kKOffset + s * Cfg::kKvTileBytes;
      const uint32_t vs = smem + Cfg::kVOffset + s * Cfg::kKvTileBytes;
      // S = Q K^T: [64 rows] x [N keys], k over D in 16-element steps (32 bytes in a row, the
      // next 64-element column block every 4 steps).
      float sacc[1][N / 8][4];
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t k_off = (kk % 4) * 32;
        const uint64_t a = KMajorDescriptor(q_rows + (kk / 4) * (CTA_M * 128) + k_off);
        const uint64_t b = KMajorDescriptor(ks + (kk / 4) * (N * 128) + k_off);
        WgmmaSS<N, T>(sacc[0], a, b, kk > 0 ? 1 : 0);
      }
      WgmmaCommit();
      WgmmaWait<0>();
      FenceAccumulators(sacc[0]);

      ApplyVariant<Cfg>(sacc, p.variant, t0, t.kv_end, qpos_lo, qpos_hi, my_packed0, t.packed_end,
                        t.delta, p.group, t4);
      float row_scale[2];
      rows[0].Update(sacc[0], p.variant.logit.post, row_scale);
      RescaleRows(o[0], row_scale);
      // P in the A layout: the C fragments of n-blocks 2 kk, 2 kk + 1 are k step kk.
      uint32_t pa[N / 16][4];
#pragma unroll
      for (int kk = 0; kk < N / 16; ++kk) {
        pa[kk][0] = Pack2<T>(sacc[0][2 * kk][0], sacc[0][2 * kk][1]);
        pa[kk][1] = Pack2<T>(sacc[0][2 * kk][2], sacc[0][2 * kk][3]);
        pa[kk][2] = Pack2<T>(sacc[0][2 * kk + 1][0], sacc[0][2 * kk + 1][1]);
        pa[kk][3] = Pack2<T>(sacc[0][2 * kk + 1][2], sacc[0][2 * kk + 1][3]);
      }
      MbarrierWait(full_v(s), phase);
      FenceProxyAsync();
      // O += P V: k over the tile's keys in 16-row steps (2048 bytes), n = D.
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < N / 16; ++kk) {
        WgmmaRS<D, T>(o[0], pa[kk], MnMajorDescriptor<N>(vs + kk * 16 * 128), 1);
      }
      WgmmaCommit();
      WgmmaWait<0>();
      FenceAccumulators(o[0]);
      FenceOperands(pa);
    }
    MbarrierArrive(empty(s));
  }

  // Both consumer warpgroups are done with Q before it is reused as O's staging.
  NamedBarrierSync<Cfg::kConsumerThreads>(1);
  StorePrefillOutput<Cfg>(p, t, o, rows, reinterpret_cast<T*>(smem_ptr), cw, lane);
#else
  __trap();  // built for sm_90a only; the launcher dispatches here only on compute capability 9.0
#endif
}

template <int kHeadDim, typename T, bool kPaged>
cudaError_t LaunchPrefillSm90(const PrefillParams& params, cudaStream_t stream) {
  using Cfg = PrefillSm90Config<kHeadDim, T>;
  if (params.num_items == 0 || params.num_kv_heads == 0) return cudaSuccess;
  if (params.item_rows != Cfg::kCtaRows || params.sub_items != 1) return cudaErrorInvalidValue;
  auto kernel = PrefillSm90Kernel<Cfg, kPaged>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int64_t blocks = static_cast<int64_t>(params.num_items) * params.num_kv_heads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(blocks), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace attnd::kernels::cuda::internal
