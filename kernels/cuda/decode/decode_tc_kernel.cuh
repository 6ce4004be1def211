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
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/paged_kv.cuh"
#include "blocks/ptx.cuh"
#include "blocks/rope.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/variant.cuh"
#include "blocks/vec.cuh"
#include "decode/decode_item.cuh"
#include "decode/decode_params.h"

namespace attnd::kernels::cuda::internal {

template <int D, bool kRope = false>
struct TcDecodeTraits {
  static_assert(D == 64 || D == 128, "tensor-core decode: head_dim 64 or 128");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16;                   // query heads per CTA
  static constexpr int kTokensPerWarp = 16;
  static constexpr int kTPS = kWarps * kTokensPerWarp;  // tokens per stage
  static constexpr int kStages = 3;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kStageElems = 2 * kTPS * D;
  // kRope: the q tile is a hi and a lo tile, and the RoPE frequencies follow ([D/2] RopeFreq).
  static constexpr int kQTiles = kRope ? 2 : 1;
  static constexpr int kFreqOffsetBytes = (kStages * kStageElems + kQTiles * kRows * D) * 2;
  static constexpr int kSmemBytes =
      kFreqOffsetBytes + (kRope ? D / 2 * static_cast<int>(sizeof(RopeFreq)) : 0);
  // merge scratch (fp32): O [warps][16][D], m and d [warps][16]
  static_assert((kWarps * kRows * (D + 2)) * 4 <= kSmemBytes, "merge scratch fits");
};

template <typename T, int D, bool kRope>
__global__ void __launch_bounds__(TcDecodeTraits<D, kRope>::kThreads)
    BatchDecodeTcKernel(const __grid_constant__ DecodeKernelParams p) {
  using Tr = TcDecodeTraits<D, kRope>;
  constexpr int NT = Tr::kThreads;
  constexpr int TPS = Tr::kTPS;
  constexpr int STAGES = Tr::kStages;
  constexpr int CH = Tr::kChunks;
  constexpr int HALF_CH = CH / 2;
  constexpr int KSTEPS = D / 16;
  constexpr int NTILES_D = D / 8;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);            // [STAGES][2][TPS][D] swizzled
  T* q_smem = smem + STAGES * Tr::kStageElems;         // [16][D] swizzled (kRope: the hi part)
  T* q_lo_smem = q_smem + Tr::kRows * D;               // kRope: [16][D] the lo part
  RopeFreq* freq_smem = reinterpret_cast<RopeFreq*>(smem_raw + Tr::kFreqOffsetBytes);  // kRope

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int gr = lane / 4;  // fragment row group
  const int gc = lane % 4;  // fragment column pair

  const DecodeWorkItem item = p.items[blockIdx.x];
  const int b = item.request;
  const int kv_head = blockIdx.y / p.head_tiles;
  const int row_base = (blockIdx.y % p.head_tiles) * Tr::kRows;  // first head of the tile
  const int rows_valid = min(Tr::kRows, p.group - row_base);

  const auto [page_begin, q_pos, start, end, rope_offset] = ResolveDecodeItem<kRope>(p, item);

  const int n_tokens = max(end - start, 0);
  const int iters = (n_tokens + TPS - 1) / TPS;
  const T* kv = static_cast<const T*>(p.kv.data);
  const int64_t head_off = static_cast<int64_t>(kv_head) * p.kv.head_stride;
  // K/V stages: [STAGES][2 (K, V)][TPS][D] swizzled, slot `it % STAGES` for stage `it`; the
  // page walk as plain calls with the page ids here (the form with the fewest registers).
  using Stage = PagedKvStage<T, D, TPS, NT, /*kSwizzle=*/true, /*kTokenMajor=*/false>;
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
  for (int i = tid; i < Tr::kRows * HALF_CH; i += NT) {
    const int r = i / HALF_CH;
    const int c = i % HALF_CH;
    uint4 rlo = make_uint4(0, 0, 0, 0), rhi = make_uint4(0, 0, 0, 0);
    if (r < rows_valid) {
      const T* q_row = static_cast<const T*>(p.q) +
                       (static_cast<int64_t>(b) * p.num_qo_heads + kv_head * p.group +
                        row_base + r) * D;
      rlo = *reinterpret_cast<const uint4*>(q_row + c * 8);
      rhi = *reinterpret_cast<const uint4*>(q_row + D / 2 + c * 8);
    }
    if constexpr (kRope) {
      float lo[8], hi[8];
      Vec8<T>::ToFloat(rlo, lo);
      Vec8<T>::ToFloat(rhi, hi);
      RotateHalfPairs8(lo, hi, q_pos + rope_offset, p.variant.rope_freq + c * 8);
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

  float m[2] = {-INFINITY, -INFINITY};  // rows gr and gr + 8, base-2 logits
  float dsum[2] = {0.f, 0.f};           // this lane's part of the row sums
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
    T* sk = smem + (it % STAGES) * Tr::kStageElems;
    const T* sv = sk + TPS * D;
    const int stage_start = start + it * TPS;

    const int wtok = warp * Tr::kTokensPerWarp;  // this warp's first token in the stage
    if (stage_start + wtok >= end) continue;     // nothing of this warp's slice is valid

    // S = Q K^T for 16 rows x 16 tokens (two n-tiles of 8 tokens). K fragments: kb[0], kb[1] are
    // b0, b1 of n-tile 0 (token wtok + gr; dims 16 ks + 2 gc (+1) and 16 ks + 8 + 2 gc (+1)),
    // kb[2], kb[3] the same of n-tile 1 (token wtok + 8 + gr).
    float s[2][4];
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
#pragma unroll
      for (int ks = 0; ks < HK; ++ks) {
        // Dims 16 ks + .. (first half) and their RoPE partners + D/2 (k-step ks + HK).
        uint32_t kx[4], ky[4];
        LdMatrixX4(kx, sk + Swz<D>(k_frag_tok, ks * 2 + (lane / 8) % 2));
        LdMatrixX4(ky, sk + Swz<D>(k_frag_tok, (ks + HK) * 2 + (lane / 8) % 2));
        uint32_t x_hi[4], x_lo[4], y_hi[4], y_lo[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int position = stage_start + wtok + gr + (r >= 2 ? 8 : 0) + rope_offset;
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
    // Scale (or soft cap), mask (only in a warp slice that reaches past the end), row max.
    float mx[2] = {m[0], m[1]};
    const bool partial = stage_start + wtok + Tr::kTokensPerWarp > end;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = Log2Logit(s[n][e], p.variant.logit);
        if (partial) {
          const int t = stage_start + wtok + n * 8 + gc * 2 + (e & 1);
          x = t < end ? x : -INFINITY;
        }
        s[n][e] = x;
        mx[e / 2] = fmaxf(mx[e / 2], x);
      }
    }
    float scale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_use = SoftmaxBase(mx[r]);
      scale[r] = Exp2(m[r] - m_use);  // SoftmaxRescale(m, mx); m = -inf -> 0
      dsum[r] *= scale[r];             // d = d * scale + sum(p), p added below
      m[r] = mx[r];
      mx[r] = m_use;
    }
    uint32_t pa[4];
    {
      float pv[2][4];
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pv[n][e] = Exp2(s[n][e] - mx[e / 2]);
          dsum[e / 2] += pv[n][e];
        }
      }
      pa[0] = Pack2<T>(pv[0][0], pv[0][1]);
      pa[1] = Pack2<T>(pv[0][2], pv[0][3]);
      pa[2] = Pack2<T>(pv[1][0], pv[1][1]);
      pa[3] = Pack2<T>(pv[1][2], pv[1][3]);
    }
    // O = O * scale + P V (16 tokens x D dims, two n-tiles per ldmatrix). Once the running max
    // settles (most stages of a long chunk), no row of the warp changes it: skip the 4 * D / 8
    // multiplies (a warp-uniform branch).
    if (__any_sync(0xffffffffu, scale[0] != 1.f || scale[1] != 1.f)) {
#pragma unroll
      for (int n = 0; n < NTILES_D; ++n) {
        o[n][0] *= scale[0];
        o[n][1] *= scale[0];
        o[n][2] *= scale[1];
        o[n][3] *= scale[1];
      }
    }
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
  GridDependencyTrigger();  // the merge grid (split requests) may be scheduled now
  CpAsyncWait<0>();
  __syncthreads();  // pipeline buffers free: reuse them as merge scratch

  // ---- merge the 4 warps' states ----
  float* so = reinterpret_cast<float*>(smem_raw);       // [warps][16][D]
  float* sm = so + Tr::kWarps * Tr::kRows * D;          // [warps][16]
  float* sd = sm + Tr::kWarps * Tr::kRows;              // [warps][16]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    dsum[r] += __shfl_xor_sync(0xffffffffu, dsum[r], 1);
    dsum[r] += __shfl_xor_sync(0xffffffffu, dsum[r], 2);
  }
#pragma unroll
  for (int n = 0; n < NTILES_D; ++n) {
    float* row0 = so + (warp * Tr::kRows + gr) * D + n * 8 + gc * 2;
    float* row1 = row0 + 8 * D;
    *reinterpret_cast<float2*>(row0) = make_float2(o[n][0], o[n][1]);
    *reinterpret_cast<float2*>(row1) = make_float2(o[n][2], o[n][3]);
  }
  if (gc == 0) {
    sm[warp * Tr::kRows + gr] = m[0];
    sm[warp * Tr::kRows + gr + 8] = m[1];
    sd[warp * Tr::kRows + gr] = dsum[0];
    sd[warp * Tr::kRows + gr + 8] = dsum[1];
  }
  __syncthreads();

  // 128 threads: 8 per row, 8 consecutive dims each (D/8 / 8 = 1 or 2 vectors).
  const int row = tid / 8;
  if (row >= rows_valid) return;
  float m_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < Tr::kWarps; ++w) m_all = fmaxf(m_all, sm[w * Tr::kRows + row]);
  float wgt[Tr::kWarps];
  float d_all = 0.f;
#pragma unroll
  for (int w = 0; w < Tr::kWarps; ++w) {
    const float mw = sm[w * Tr::kRows + row];
    wgt[w] = Base2StateWeight(mw, m_all);  // m_all = -inf: every mw is -inf too
    d_all = fmaf(wgt[w], sd[w * Tr::kRows + row], d_all);
  }
  const float inv_d = InvSum(d_all);
  const float lse = LseFromBase2(m_all, d_all);
  const int qo_head = kv_head * p.group + row_base + row;
#pragma unroll
  for (int v = 0; v < NTILES_D / 8; ++v) {
    const int d0 = ((tid % 8) + v * 8) * 8;
    float acc[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] = 0.f;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) {
      const float* src = so + (w * Tr::kRows + row) * D + d0;
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[k] = fmaf(wgt[w], src[k], acc[k]);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] *= inv_d;
    if (!item.split) {
      const int64_t orow = static_cast<int64_t>(b) * p.num_qo_heads + qo_head;
      *reinterpret_cast<uint4*>(static_cast<T*>(p.o) + orow * D + d0) = Vec8<T>::FromFloat(acc);
    } else {
      const int64_t prow = static_cast<int64_t>(blockIdx.x) * p.num_qo_heads + qo_head;
      float4* dst = reinterpret_cast<float4*>(p.partial_o + prow * D + d0);
      dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
  }
  if (tid % 8 == 0) {
    if (!item.split) {
      if (p.lse != nullptr) p.lse[static_cast<int64_t>(b) * p.num_qo_heads + qo_head] = lse;
    } else {
      p.partial_lse[static_cast<int64_t>(blockIdx.x) * p.num_qo_heads + qo_head] = lse;
    }
  }
}

template <typename T, int D, bool kRope>
cudaError_t PrepareTcKernel() {
  // Raise the dynamic shared-memory limit once per instantiation.
  // The carveout asks for the largest shared-memory split, so that both CTAs of an SM fit
  // (2 x ~100 KB) whatever the driver would pick by default.
  static const cudaError_t once = [] {
    cudaError_t e = cudaFuncSetAttribute(BatchDecodeTcKernel<T, D, kRope>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         TcDecodeTraits<D, kRope>::kSmemBytes);
    if (e != cudaSuccess) return e;
    return cudaFuncSetAttribute(BatchDecodeTcKernel<T, D, kRope>,
                                cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared);
  }();
  return once;
}

template <typename T, int D, bool kRope>
cudaError_t LaunchDecodeTcVariant(const DecodeKernelParams& params, int num_items,
                                  int num_kv_heads, cudaStream_t stream) {
  if (cudaError_t e = PrepareTcKernel<T, D, kRope>(); e != cudaSuccess) return e;
  const dim3 grid(num_items, num_kv_heads * params.head_tiles);
  BatchDecodeTcKernel<T, D, kRope>
      <<<grid, TcDecodeTraits<D, kRope>::kThreads, TcDecodeTraits<D, kRope>::kSmemBytes,
         stream>>>(params);
  return cudaGetLastError();
}
template <typename T, int D>
cudaError_t LaunchDecodeTc(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                           cudaStream_t stream) {
  return params.variant.rope
             ? LaunchDecodeTcVariant<T, D, true>(params, num_items, num_kv_heads, stream)
             : LaunchDecodeTcVariant<T, D, false>(params, num_items, num_kv_heads, stream);
}

// The schedule's occupancy: the kernel without RoPE (the RoPE one has the same, 2 CTAs per SM).
template <typename T, int D>
cudaError_t DecodeTcOccupancy(int* ctas_per_sm) {
  if (cudaError_t e = PrepareTcKernel<T, D, false>(); e != cudaSuccess) return e;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      ctas_per_sm, BatchDecodeTcKernel<T, D, false>, TcDecodeTraits<D>::kThreads,
      TcDecodeTraits<D>::kSmemBytes);
}

// Explicitly instantiated per (dtype, head_dim) in generated/decode_hd{64,128}_*.cu.
template <DType kDType, int kHeadDim>
cudaError_t LaunchDecodeTcKernel(const DecodeKernelParams& params, int num_items,
                                 int num_kv_heads, cudaStream_t stream) {
  return LaunchDecodeTc<typename CudaTypeOf<kDType>::type, kHeadDim>(params, num_items,
                                                                       num_kv_heads, stream);
}
template <DType kDType, int kHeadDim>
cudaError_t DecodeTcKernelOccupancy(int* ctas_per_sm) {
  return DecodeTcOccupancy<typename CudaTypeOf<kDType>::type, kHeadDim>(ctas_per_sm);
}

}  // namespace attnd::kernels::cuda::internal
