// Second pass of split-KV decode: merges the per-chunk partial states of each (request, query
// head) into the final o and lse.
//
// Why not the generic MergeStatesKernel (merge_states.cu): it gives one warp to a (row, head) and
// walks the chunks one after the other in three dependent loops, so its time grows by an L2 round
// trip (~0.5 us) per chunk: ~20 us for the 33 chunks of a B=1 GQA decode, more than a third of
// the whole call (decode_notes.md, run 2). Here one CTA of 128 threads takes a (request, head)
// and spreads the chunks over its threads, so every pass issues its loads all at once:
//   1. max of the chunk lse values (threads stride over chunks; block max);
//   2. sum of exp(lse_i - max) (same; block sum);
//   3. o = sum_i exp(lse_i - max) / sum * o_i: the D/4 float4 columns x (128 / (D/4)) chunk
//      groups, each group strides over the chunks, then the groups are added in shared memory.
// Inputs: partial_o [items, num_heads, D] fp32 (each normalised by its own sum), partial_lse
// [items, num_heads] natural log, chunk_indptr [batch + 1]. A request with one chunk was written
// by the decode kernel and is skipped. All lse_i = -inf (no visible key): o = 0, lse = -inf
// (with sinks, p.sinks: the sink is folded into the merged state, lse = sink for such a row).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks/ptx.cuh"
#include "blocks/softmax_state.cuh"
#include "blocks/vec.cuh"
#include "merge/merge_params.h"

namespace attnd::kernels::cuda::internal {
namespace {

constexpr int kMergeThreads = 128;
constexpr int kMergeWarps = kMergeThreads / 32;

// Block-wide max / sum over kMergeThreads threads (scratch: kMergeWarps floats).
__device__ __forceinline__ float BlockMax(float x, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float r = scratch[0];
#pragma unroll
  for (int w = 1; w < kMergeWarps; ++w) r = fmaxf(r, scratch[w]);
  __syncthreads();  // scratch is reused
  return r;
}
__device__ __forceinline__ float BlockSum(float x, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float r = 0.f;
#pragma unroll
  for (int w = 0; w < kMergeWarps; ++w) r += scratch[w];
  __syncthreads();
  return r;
}

// grid (batch, num_heads), block kMergeThreads. D = head_dim (64, 128 or 256).
template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads)
    DecodeMergeKernel(const __grid_constant__ MergeKernelParams p) {
  constexpr int kCols = D / 4;                    // float4 columns of a row
  constexpr int kGroups = kMergeThreads / kCols;  // chunk groups (1, 2 or 4... 8)
  static_assert(kMergeThreads % kCols == 0 && kGroups >= 1, "head_dim 64..512, multiple of 4");
  __shared__ float scratch[kMergeWarps];
  __shared__ float4 part[kGroups > 1 ? kGroups - 1 : 1][kCols];
  // Launched as a programmatic dependent of the decode kernel (see Launch below): this CTA may
  // start before the decode grid has finished; wait here until its writes are visible.
  GridDependencyWait();

  const int r = blockIdx.x;
  const int h = blockIdx.y;
  if (p.live_rows != nullptr && r >= *p.live_rows) return;
  const int first = p.state_indptr[r];
  const int count = p.state_indptr[r + 1] - first;
  if (count == 1 && p.skip_single) return;
  const int H = p.num_heads;
  const float* lse = p.s_in;
  const float* v_in = static_cast<const float*>(p.v_in);

  float m = -INFINITY;
  for (int i = threadIdx.x; i < count; i += kMergeThreads) {
    m = fmaxf(m, lse[static_cast<int64_t>(first + i) * H + h]);
  }
  m = BlockMax(m, scratch);
  float sum = 0.f;
  if (m != -INFINITY) {
    for (int i = threadIdx.x; i < count; i += kMergeThreads) {
      sum += StateWeight(lse[static_cast<int64_t>(first + i) * H + h], m);
    }
  }
  sum = BlockSum(sum, scratch);  // uniform: every thread takes the same branch below

  const int col = threadIdx.x % kCols;
  const int group = threadIdx.x / kCols;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (m != -INFINITY) {
#pragma unroll 4
    for (int i = group; i < count; i += kGroups) {
      const int64_t row = static_cast<int64_t>(first + i) * H + h;
      const float w = StateWeight(lse[row], m);
      const float4 v = reinterpret_cast<const float4*>(v_in + row * D)[col];
      acc.x = fmaf(w, v.x, acc.x);
      acc.y = fmaf(w, v.y, acc.y);
      acc.z = fmaf(w, v.z, acc.z);
      acc.w = fmaf(w, v.w, acc.w);
    }
  }
  if constexpr (kGroups > 1) {
    if (group > 0) part[group - 1][col] = acc;
    __syncthreads();
    if (group != 0) return;
#pragma unroll
    for (int g = 0; g < kGroups - 1; ++g) {
      const float4 x = part[g][col];
      acc.x += x.x;
      acc.y += x.y;
      acc.z += x.z;
      acc.w += x.w;
    }
  }
  const RowFinal fin = FinalizeMergedRow(p.sinks, h, m, sum);  // the sink, once per row
  acc.x *= fin.inv;
  acc.y *= fin.inv;
  acc.z *= fin.inv;
  acc.w *= fin.inv;
  const int64_t out_row = static_cast<int64_t>(r) * H + h;
  Vec4<T>::Store(static_cast<T*>(p.v_out) + out_row * D + col * 4, acc);
  if (p.s_out != nullptr && threadIdx.x == 0) {
    p.s_out[out_row] = fin.lse;
  }
}

// Programmatic dependent launch (sm_90): the merge grid is launched while the decode grid is
// still running (each decode CTA signals after its main loop), so its launch latency (a few us,
// ~5-10% of a B=1 GQA decode) overlaps the decode tail; GridDependencyWait orders the reads.
template <typename T, int D>
cudaError_t LaunchPdl(const MergeKernelParams& p, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.num_rows, p.num_heads);
  cfg.blockDim = dim3(kMergeThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaError_t e = cudaLaunchKernelEx(&cfg, DecodeMergeKernel<T, D>, p);
  if (e != cudaSuccess) {  // no PDL here: a plain launch (the wait is then a no-op)
    (void)cudaGetLastError();
    DecodeMergeKernel<T, D><<<cfg.gridDim, cfg.blockDim, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchForType(const MergeKernelParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return LaunchPdl<T, 64>(p, stream);
    case 128: return LaunchPdl<T, 128>(p, stream);
    case 256: return LaunchPdl<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t LaunchDecodeMergeKernel(const MergeKernelParams& p, DType out_dtype,
                                    cudaStream_t stream) {
  if (p.num_rows == 0 || p.num_heads == 0) return cudaSuccess;
  if (p.state_indptr == nullptr || p.num_heads > 65535) return cudaErrorInvalidValue;
  switch (out_dtype) {
    case DType::kFloat16: return LaunchForType<__half>(p, stream);
    case DType::kBFloat16: return LaunchForType<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attnd::kernels::cuda::internal
