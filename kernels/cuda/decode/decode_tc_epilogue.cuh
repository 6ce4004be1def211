// The tensor-core decode kernel's epilogue: the four warps' states of each row (query head)
// merged through shared memory (the pipeline buffers, free by then), then the output (o / d,
// lse) of an unsplit request, or the partial state (normalised o in fp32, lse) of a split one for
// the merge kernel (merge/decode_merge.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/softmax_state.cuh"
#include "blocks/vec.cuh"
#include "decode/decode_params.h"
#include "decode/decode_tc_config.cuh"
#include "decode/decode_tc_mainloop.cuh"

namespace attnd::kernels::cuda::internal {

// rows, o: this warp's softmax states and accumulators ([D / 8][4] C fragments) of the 16 rows;
// rows_valid of them are heads (row_base + r of kv_head's group). The caller has synchronized
// the CTA after its last read of the pipeline buffers (smem_raw).
// kFp8Dims: o's n-tiles hold the dims of the fp8 register path (TcFp8OutputDim).
template <typename T, int D, bool kRope, bool kFp8Dims = false>
__device__ __forceinline__ void MergeTcWarpsAndStore(
    const DecodeKernelParams& p, const DecodeWorkItem& item, int kv_head, int row_base,
    int rows_valid, const MmaRowsSoftmax& rows, const float (&o)[D / 8][4], unsigned char* smem_raw,
    int warp, int lane, int tid) {
  using Tr = TcDecodeTraits<D, kRope>;
  constexpr int NTILES_D = D / 8;
  const int gr = lane / 4;
  const int gc = lane % 4;
  const int b = item.request;
  float* so = reinterpret_cast<float*>(smem_raw);  // [warps][16][D]
  float* sm = so + Tr::kWarps * Tr::kRows * D;     // [warps][16]
  float* sd = sm + Tr::kWarps * Tr::kRows;         // [warps][16]
  const float row_sum[2] = {rows.RowSum(0), rows.RowSum(1)};
#pragma unroll
  for (int n = 0; n < NTILES_D; ++n) {
    float* row0 = so + (warp * Tr::kRows + gr) * D + n * 8 + gc * 2;
    float* row1 = row0 + 8 * D;
    if constexpr (kFp8Dims) {
      float* base0 = so + (warp * Tr::kRows + gr) * D;
      float* base1 = base0 + 8 * D;
      base0[TcFp8OutputDim(n, gc, 0)] = o[n][0];
      base0[TcFp8OutputDim(n, gc, 1)] = o[n][1];
      base1[TcFp8OutputDim(n, gc, 2)] = o[n][2];
      base1[TcFp8OutputDim(n, gc, 3)] = o[n][3];
    } else {
      *reinterpret_cast<float2*>(row0) = make_float2(o[n][0], o[n][1]);
      *reinterpret_cast<float2*>(row1) = make_float2(o[n][2], o[n][3]);
    }
  }
  if (gc == 0) {
    sm[warp * Tr::kRows + gr] = rows.m[0];
    sm[warp * Tr::kRows + gr + 8] = rows.m[1];
    sd[warp * Tr::kRows + gr] = row_sum[0];
    sd[warp * Tr::kRows + gr + 8] = row_sum[1];
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
  const int qo_head = kv_head * p.group + row_base + row;
  // The sink (if any) once per row: here for an unsplit request, in the merge for a split one.
  const RowFinal fin =
      FinalizeRow(item.state_row >= 0 ? nullptr : p.variant.sinks, qo_head, m_all, d_all);
  const float inv_d = fin.inv;
  const float lse = fin.lse;
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
    if (item.state_row < 0) {
      const int64_t orow = static_cast<int64_t>(b) * p.num_qo_heads + qo_head;
      *reinterpret_cast<uint4*>(static_cast<T*>(p.o) + orow * D + d0) = Vec8<T>::FromFloat(acc);
    } else {
      const int64_t prow = static_cast<int64_t>(item.state_row) * p.num_qo_heads + qo_head;
      float4* dst = reinterpret_cast<float4*>(p.partial_o + prow * D + d0);
      dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
  }
  if (tid % 8 == 0) {
    if (item.state_row < 0) {
      if (p.lse != nullptr) p.lse[static_cast<int64_t>(b) * p.num_qo_heads + qo_head] = lse;
    } else {
      p.partial_lse[static_cast<int64_t>(item.state_row) * p.num_qo_heads + qo_head] = lse;
    }
  }
}

}  // namespace attnd::kernels::cuda::internal
