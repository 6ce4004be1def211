// Batch decode attention on tensor cores (mma.sync m16n8k16) for GQA groups, head_dim <= 128.
//
// The query heads of one KV head are the rows of a 16-row tile (group g <= 16 rows used, the rest
// zero), so decode becomes a tiny prefill: S = Q K^T and O += P V with the K/V rows of the chunk
// streaming through shared memory once for all of the group's heads.
//
// CTA = 4 warps; one work item (request, chunk) x one KV head x one 16-head tile. A pipeline stage
// holds 64 tokens of K and V ([64][D] each, 16-byte chunks XOR-swizzled by token % 8 so that
// ldmatrix is conflict-free); warp w owns tokens [16w, 16w + 16) of every stage and keeps its own
// online-softmax state (rows: heads; m, d per row in base 2; O: 16 x D fp32 fragments). The four
// states are merged through shared memory at the end; a split request writes a partial state
// (normalised o in fp32, lse) for the merge kernel, as in decode_kernel.cuh.
//
// RoPE (kRope): q is rotated in fp32 and stored as a hi/lo pair of 16-bit tiles; every warp
// rotates the K fragments of its own 16 tokens in registers right after ldmatrix (dimension i and
// its partner i + D/2 of one lane sit in k-steps ks and ks + KSTEPS/2 of the same registers) and
// splits them into hi/lo too; S = Qhi Khi + Qlo Khi + Qhi Klo, so no rotated value is rounded to
// the 16-bit type (NUMERICS.md). Fragment layouts, ldmatrix, mma: blocks/ptx.cuh. Page walk:
// blocks/paged_kv.cuh; softmax state and merge: blocks/softmax_state.cuh; logits and window:
// blocks/variant.cuh; RoPE and the hi/lo split: blocks/rope.cuh.
//
// FP8 K/V (Tkv e4m3 / e5m2): without RoPE (TcDecodeTraits::kFp8Registers) the stages hold the
// stored bytes swizzled, and the warp reads its K and V fragments with ldmatrix and converts them
// in registers (exact: blocks/kv_convert.cuh), the q tile's and O's dims permuted to match
// (decode_tc_mainloop.cuh); with RoPE (kConvert) the stages hold them linear, and each warp
// converts its own 16 tokens of the stage into a 16-bit image right before its math, which then
// runs as for 16-bit K/V (no CTA barrier more: a warp reads only the tokens it converted). K's
// scale is folded into the logit scale, V's into o.
//
// The kernel's parts, one file each: the shape (decode_tc_config.cuh), the q tile
// (decode_tc_loads.cuh), S = Q K^T of a warp's tokens (decode_tc_mainloop.cuh), the merge of the
// warps' states and the stores (decode_tc_epilogue.cuh); this file holds the pipeline.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "blocks/kv_convert.cuh"
#include "blocks/paged_kv.cuh"
#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/variant.cuh"
#include "decode/decode_item.cuh"
#include "decode/decode_params.h"
#include "decode/decode_tc_config.cuh"
#include "decode/decode_tc_epilogue.cuh"
#include "decode/decode_tc_loads.cuh"
#include "decode/decode_tc_mainloop.cuh"

namespace attnd::kernels::cuda::internal {

// Min 2 CTAs per SM in the launch bounds: shared memory (~100 KB per CTA) allows 2 anyway, and
// without the hint ptxas packed the non-RoPE kernel into 168 registers (3 CTAs' worth) and
// serialised its loop: 204 registers with it, 3.87 -> 4.13 TB/s at fp16 B=64 kv=4096 8 KV heads
// (H200, 2026-12-02, bench/decode_notes.md).
// This warp's 16 tokens of a fp8 stage ([2][TPS][D] bytes, linear) -> the same rows of the 16-bit
// stage image cvt ([2][TPS][D] of T, swizzled as the 16-bit stages).
template <typename T, typename Tkv, int D, int TPS>
__device__ __forceinline__ void ConvertTcWarpRows(const Tkv* stage, T* cvt, int wtok, int lane) {
  constexpr int kFp8Chunks = D / 16;  // 16-byte chunks of a fp8 row
#pragma unroll
  for (int i = lane; i < 2 * 16 * kFp8Chunks; i += 32) {
    const int kv = i / (16 * kFp8Chunks);
    const int tok = wtok + (i / kFp8Chunks) % 16;
    const int c = i % kFp8Chunks;
    const uint4 raw = *reinterpret_cast<const uint4*>(stage + kv * TPS * D + tok * D + c * 16);
    uint4 lo, hi;
    Fp8x16ToVecs<T, Tkv>(raw, &lo, &hi);
    T* dst = cvt + kv * TPS * D;
    *reinterpret_cast<uint4*>(dst + Swz<D>(tok, 2 * c)) = lo;
    *reinterpret_cast<uint4*>(dst + Swz<D>(tok, 2 * c + 1)) = hi;
  }
}

template <typename T, typename Tkv, int D, bool kRope>
__global__ void __launch_bounds__(TcDecodeTraits<D, kRope, sizeof(Tkv)>::kThreads, 2)
    BatchDecodeTcKernel(const __grid_constant__ DecodeKernelParams p) {
  using Tr = TcDecodeTraits<D, kRope, sizeof(Tkv)>;
  static_assert(std::is_same_v<T, Tkv> || kIsFp8<Tkv>, "16-bit K/V of q's type, or fp8");
  constexpr int NT = Tr::kThreads;
  constexpr int TPS = Tr::kTPS;
  constexpr int STAGES = Tr::kStages;
  constexpr int KSTEPS = D / 16;
  constexpr int NTILES_D = D / 8;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Tkv* smem = reinterpret_cast<Tkv*>(smem_raw);  // [STAGES][2][TPS][D] (16-bit: swizzled)
  T* cvt_smem = reinterpret_cast<T*>(smem_raw + Tr::kCvtOffsetBytes);  // kConvert: [2][TPS][D]
  T* q_smem = reinterpret_cast<T*>(smem_raw + Tr::kQOffsetBytes);      // [16][D] swz (kRope: hi)
  T* q_lo_smem = q_smem + Tr::kRows * D;                               // kRope: [16][D] the lo part
  RopeFreq* freq_smem = reinterpret_cast<RopeFreq*>(smem_raw + Tr::kFreqOffsetBytes);  // kRope

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int gc = lane % 4;  // fragment column pair

  const auto [item, kv_head, head_tile, live] = LocateDecodeCta(p);
  if (!live) return;  // uniform over the CTA, before any barrier
  const int b = item.request;
  const int row_base = head_tile * Tr::kRows;  // first head of the tile
  const int rows_valid = min(Tr::kRows, p.group - row_base);

  const auto [page_begin, q_pos, start, end, rope_offset] = ResolveDecodeItem<kRope>(p, item);

  const int n_tokens = max(end - start, 0);
  const int iters = (n_tokens + TPS - 1) / TPS;
  const Tkv* kv = static_cast<const Tkv*>(p.kv.data);
  const int64_t head_off = static_cast<int64_t>(kv_head) * p.kv.head_stride;
  // K/V stages: [STAGES][2 (K, V)][TPS][D] (16-bit: swizzled), slot `it % STAGES` for stage
  // `it`; the page walk as plain calls with the page ids here (the form with the fewest
  // registers).
  using Stage = PagedKvStage<Tkv, D, TPS, NT, /*kSwizzle=*/!Tr::kConvert, /*kTokenMajor=*/false>;
  // The logit scale, with K's fp8 scale folded in (per KV head: this CTA's).
  LogitScale logit = p.variant.logit;
  if constexpr (kIsFp8<Tkv>) logit = ScaleRawLogit(logit, KvScale(p.kv.k_scale, kv_head));
  int pages[Stage::kLoads];  // page ids of the next stage to issue (fetched a stage ahead)
  auto fetch_pages = [&](int it) {
    Stage::Fetch(pages, p.kv, page_begin, start + it * TPS, end, tid);
  };
  auto load_stage = [&](int it, int slot) {
    Stage::Copy(smem + slot * Tr::kStageElems, pages, p.kv, kv, head_off, start + it * TPS, end,
                tid);
  };
  // Start the K/V stream first, then build the q tile while it is in flight.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    fetch_pages(s);
    if (s < iters) load_stage(s, s);
    CpAsyncCommit();
  }
  fetch_pages(STAGES - 1);

  // ---- q tile [16][D] in shared memory (RoPE applied in fp32, split into hi + lo; unscaled) ----
  if constexpr (Tr::kFp8Registers) {
    LoadTcQTilePermuted<T, D>(p, b, kv_head * p.group + row_base, rows_valid, q_smem, tid);
  } else {
    LoadTcQTile<T, D, kRope>(p, b, kv_head * p.group + row_base, rows_valid, q_pos + rope_offset,
                             q_smem, q_lo_smem, freq_smem, tid);
  }
  __syncthreads();
  // The q fragments (A operands) of the k-steps: held in registers without RoPE; with RoPE the hi
  // and lo fragments are read from shared memory where they are used.
  const int q_frag_row = (lane % 8) + ((lane / 8) % 2) * 8;
  uint32_t qa[kRope ? 1 : KSTEPS][4];
  if constexpr (!kRope) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      LdMatrixX4(qa[ks], q_smem + Swz<D>(q_frag_row, ks * 2 + lane / 16));
    }
  }

  MmaRowsSoftmax rows;  // rows gr and gr + 8: running max (base-2 logits), this lane's sums
  float o[NTILES_D][4];
#pragma unroll
  for (int n = 0; n < NTILES_D; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  for (int it = 0; it < iters; ++it) {
    CpAsyncWait<STAGES - 2>();
    __syncthreads();
    {
      const int next = it + STAGES - 1;
      if (next < iters) load_stage(next, next % STAGES);  // pages[] were fetched last iteration
      CpAsyncCommit();
      fetch_pages(next + 1);  // in flight while this stage is computed
    }
    const int stage_start = start + it * TPS;
    const int wtok = warp * Tr::kTokensPerWarp;  // this warp's first token in the stage
    if (stage_start + wtok >= end) continue;     // nothing of this warp's slice is valid

    const Tkv* stage = smem + (it % STAGES) * Tr::kStageElems;  // K [TPS][D], then V
    const T* sk = nullptr;  // the 16-bit paths: the stage's K [TPS][D] of T, swizzled; V follows
    if constexpr (Tr::kConvert) {
      // This warp's rows only; the barrier at the top of the next iteration orders these
      // writes after every warp's reads of the previous stage image.
      ConvertTcWarpRows<T, Tkv, D, TPS>(stage, cvt_smem, wtok, lane);
      __syncwarp();
      sk = cvt_smem;
    } else if constexpr (!Tr::kFp8Registers) {
      sk = stage;
    }

    float s[2][4];  // S = Q K^T: 16 rows x 16 tokens (two n-tiles of 8 tokens), then P
    if constexpr (Tr::kFp8Registers) {
      TcWarpScoresFp8<T, Tkv, D>(s, qa, stage, wtok, lane);
    } else {
      TcWarpScores<T, D, kRope>(s, qa, q_smem, q_lo_smem, freq_smem, sk, wtok,
                                stage_start + wtok + rope_offset, lane);
    }
    // Base-2 logits (scale or soft cap), masked only in a warp slice that reaches past the end;
    // then the online softmax turns them into probabilities (post = 1: already base 2).
    const bool partial = stage_start + wtok + Tr::kTokensPerWarp > end;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = Log2Logit(s[n][e], logit);
        if (partial) {
          const int t = stage_start + wtok + n * 8 + gc * 2 + (e & 1);
          x = t < end ? x : -INFINITY;
        }
        s[n][e] = x;
      }
    }
    float scale[2];
    rows.Update(s, 1.f, scale);
    uint32_t pa[4];
    pa[0] = Pack2<T>(s[0][0], s[0][1]);
    pa[1] = Pack2<T>(s[0][2], s[0][3]);
    pa[2] = Pack2<T>(s[1][0], s[1][1]);
    pa[3] = Pack2<T>(s[1][2], s[1][3]);
    // O = O * scale + P V (16 tokens x D dims, two n-tiles per ldmatrix). Once the running max
    // settles (most stages of a long chunk), no row of the warp changes it: skip the 4 * D / 8
    // multiplies (a warp-uniform branch).
    if (__any_sync(0xffffffffu, scale[0] != 1.f || scale[1] != 1.f)) RescaleRows(o, scale);
    if constexpr (Tr::kFp8Registers) {
      TcWarpPvFp8<T, Tkv, D>(o, pa, stage + TPS * D, wtok, lane);
    } else {
      const T* sv = sk + TPS * D;
#pragma unroll
      for (int dp = 0; dp < NTILES_D / 2; ++dp) {
        uint32_t vb[4];
        const int tok = wtok + (lane % 8) + ((lane / 8) % 2) * 8;
        const int ch = dp * 2 + lane / 16;
        LdMatrixX4Trans(vb, sv + Swz<D>(tok, ch));
        Mma16816<T>(o[2 * dp], pa, vb[0], vb[1]);
        Mma16816<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
  }
  GridDependencyTrigger();  // the merge grid (split requests) may be scheduled now
  CpAsyncWait<0>();
  __syncthreads();              // pipeline buffers free: reuse them as merge scratch
  if constexpr (kIsFp8<Tkv>) {  // V's scale: o is linear in V (and so is the warps' merge)
    const float vs = KvScale(p.kv.v_scale, kv_head);
#pragma unroll
    for (int n = 0; n < NTILES_D; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= vs;
    }
  }

  // ---- merge the 4 warps' states; write the output or the partial state ----
  MergeTcWarpsAndStore<T, D, kRope, Tr::kFp8Registers>(p, item, kv_head, row_base, rows_valid, rows,
                                                       o, smem_raw, warp, lane, tid);
}

template <typename T, typename Tkv, int D, bool kRope>
cudaError_t PrepareTcKernel() {
  // Raise the dynamic shared-memory limit once per instantiation.
  // The carveout asks for the largest shared-memory split, so that both CTAs of an SM fit
  // (2 x ~100 KB) whatever the driver would pick by default.
  static const cudaError_t once = [] {
    cudaError_t e = cudaFuncSetAttribute(BatchDecodeTcKernel<T, Tkv, D, kRope>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         TcDecodeTraits<D, kRope, sizeof(Tkv)>::kSmemBytes);
    if (e != cudaSuccess) return e;
    return cudaFuncSetAttribute(BatchDecodeTcKernel<T, Tkv, D, kRope>,
                                cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared);
  }();
  return once;
}

template <typename T, typename Tkv, int D, bool kRope>
cudaError_t LaunchDecodeTcVariant(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                                  cudaStream_t stream) {
  using Tr = TcDecodeTraits<D, kRope, sizeof(Tkv)>;
  if (cudaError_t e = PrepareTcKernel<T, Tkv, D, kRope>(); e != cudaSuccess) return e;
  const dim3 grid(num_items * num_kv_heads * params.head_tiles);  // == num_items * head_ctas
  BatchDecodeTcKernel<T, Tkv, D, kRope><<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}
template <typename T, typename Tkv, int D>
cudaError_t LaunchDecodeTc(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                           cudaStream_t stream) {
  return params.variant.rope
             ? LaunchDecodeTcVariant<T, Tkv, D, true>(params, num_items, num_kv_heads, stream)
             : LaunchDecodeTcVariant<T, Tkv, D, false>(params, num_items, num_kv_heads, stream);
}

// The schedule's occupancy: the kernel without RoPE (the RoPE one has the same, 2 CTAs per SM).
template <typename T, typename Tkv, int D>
cudaError_t DecodeTcOccupancy(int* ctas_per_sm) {
  using Tr = TcDecodeTraits<D, false, sizeof(Tkv)>;
  if (cudaError_t e = PrepareTcKernel<T, Tkv, D, false>(); e != cudaSuccess) return e;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      ctas_per_sm, BatchDecodeTcKernel<T, Tkv, D, false>, Tr::kThreads, Tr::kSmemBytes);
}

// Explicitly instantiated per (q dtype, K/V dtype, head_dim) in generated/decode_hd{64,128}_*.cu.
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t LaunchDecodeTcKernel(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                                 cudaStream_t stream) {
  return LaunchDecodeTc<typename CudaTypeOf<kQ>::type, typename CudaTypeOf<kKv>::type, kHeadDim>(
      params, num_items, num_kv_heads, stream);
}
template <DType kQ, DType kKv, int kHeadDim>
cudaError_t DecodeTcKernelOccupancy(int* ctas_per_sm) {
  return DecodeTcOccupancy<typename CudaTypeOf<kQ>::type, typename CudaTypeOf<kKv>::type, kHeadDim>(
      ctas_per_sm);
}

}  // namespace attnd::kernels::cuda::internal
