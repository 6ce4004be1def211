// Merging of attention states (o_i, lse_i) -> (o, lse): the public MergeStates operation (also
// its pair form, MergeState, and in place) and the split-KV merge of prefill. Grid (rows,
// heads / 4), one warp per (row, head); each lane owns 4 consecutive dims (head_dim % 4 == 0),
// strided by 128 dims. Weights: softmax_state.cuh.
//   lse = log(sum_i exp(lse_i)),  o = sum_i exp(lse_i - lse) * o_i;  all lse_i = -inf -> o = 0.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "blocks/softmax_state.cuh"
#include "blocks/vec.cuh"
#include "merge/merge_params.h"

namespace attnd::kernels::cuda::internal {
namespace {

constexpr int kHeadsPerBlock = 4;

template <typename TIn, typename TOut>
__global__ void __launch_bounds__(32 * kHeadsPerBlock)
    MergeStatesKernel(const __grid_constant__ MergeKernelParams p) {
  const int lane = threadIdx.x;
  const int h = blockIdx.y * kHeadsPerBlock + threadIdx.y;
  const int r = blockIdx.x;
  if (h >= p.num_heads) return;
  const bool pair = p.v_in_b != nullptr;
  int first, count;
  if (pair) {
    first = r;
    count = 2;
  } else if (p.state_indptr != nullptr) {
    first = p.state_indptr[r];
    count = p.state_indptr[r + 1] - first;
  } else {
    first = r * p.num_states;
    count = p.num_states;
  }
  if (p.skip_single && count == 1) return;
  const int H = p.num_heads, D = p.head_dim;
  const TIn* v_in = static_cast<const TIn*>(p.v_in);
  const TIn* v_in_b = static_cast<const TIn*>(p.v_in_b);
  // State i of this (row, head): its row of s and of v (pair form: row r of the i-th tensor).
  const auto row_of = [&](int i) -> int64_t {
    return static_cast<int64_t>(pair ? r : first + i) * H + h;
  };
  const auto s_of = [&](int i) -> float { return (pair && i == 1 ? p.s_in_b : p.s_in)[row_of(i)]; };

  float m = -INFINITY;
  for (int i = 0; i < count; ++i) m = fmaxf(m, s_of(i));
  float sum = 0.f;
  if (m != -INFINITY) {
    for (int i = 0; i < count; ++i) sum += StateWeight(s_of(i), m);
  }
  // Split-KV prefill: the run's sink (if any) once, into the merged state.
  const RowFinal fin = FinalizeMergedRow(p.sinks, h, m, sum);
  const float inv = fin.inv;
  TOut* v_out = static_cast<TOut*>(p.v_out);
  for (int d0 = lane * 4; d0 < D; d0 += 128) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    if (m != -INFINITY) {
      for (int i = 0; i < count; ++i) {
        const float s = s_of(i);
        if (s == -INFINITY) continue;
        const float w = StateWeight(s, m) * inv;
        const float4 v = Vec4<TIn>::Load((pair && i == 1 ? v_in_b : v_in) + row_of(i) * D + d0);
        acc.x = fmaf(w, v.x, acc.x);
        acc.y = fmaf(w, v.y, acc.y);
        acc.z = fmaf(w, v.z, acc.z);
        acc.w = fmaf(w, v.w, acc.w);
      }
    }
    // In place, v_out is v_in (or v_in_b): this lane read these dims of every state above.
    Vec4<TOut>::Store(v_out + (static_cast<int64_t>(r) * H + h) * D + d0, acc);
  }
  // In place, s_out is s_in (or s_in_b), which every lane reads in its loop: write it after all
  // lanes of the warp are done (the early returns above are warp-uniform).
  __syncwarp();
  if (p.s_out != nullptr && lane == 0) {
    p.s_out[static_cast<int64_t>(r) * H + h] = fin.lse;
  }
}

template <typename TIn, typename TOut>
cudaError_t Launch(const MergeKernelParams& p, cudaStream_t stream) {
  const dim3 block(32, kHeadsPerBlock);
  const dim3 grid(p.num_rows, (p.num_heads + kHeadsPerBlock - 1) / kHeadsPerBlock);
  MergeStatesKernel<TIn, TOut><<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchMergeKernel(const MergeKernelParams& p, DType in_dtype, DType out_dtype,
                              cudaStream_t stream) {
  if (p.num_rows == 0 || p.num_heads == 0) return cudaSuccess;
  if ((p.num_heads + kHeadsPerBlock - 1) / kHeadsPerBlock > 65535) return cudaErrorInvalidValue;
  if (in_dtype == DType::kFloat32) {
    switch (out_dtype) {
      case DType::kFloat32: return Launch<float, float>(p, stream);
      case DType::kFloat16: return Launch<float, __half>(p, stream);
      case DType::kBFloat16: return Launch<float, __nv_bfloat16>(p, stream);
      default: return cudaErrorInvalidValue;
    }
  }
  if (in_dtype != out_dtype) return cudaErrorInvalidValue;
  switch (in_dtype) {
    case DType::kFloat16: return Launch<__half, __half>(p, stream);
    case DType::kBFloat16: return Launch<__nv_bfloat16, __nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attnd::kernels::cuda::internal
