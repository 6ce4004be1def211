// Internal launch interface between the host-side launchers (*.cc, compiled by the host compiler,
// absl statuses) and the kernel instantiations (*.cu, compiled by nvcc, no absl). Everything
// here returns cudaError_t; the launchers turn it into a status.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attnd/kernels/types.h"
#include "numerics.h"

namespace attnd::kernels::cuda::internal {

// One CTA of the decode kernel: request `b`, kv positions [chunk_start, chunk_end) (clipped to
// the request's kv length and window), one group of query heads of one KV head (blockIdx.y).
struct DecodeWorkItem {
  int32_t request;
  int32_t chunk_start;
  int32_t chunk_end;
  int32_t split;  // 1: the request has several chunks; write a partial state at the item index
};

// Parameters of the batch decode kernel (passed as a __grid_constant__ struct).
struct DecodeKernelParams {
  const void* q = nullptr;  // [batch, num_qo_heads, head_dim]
  void* o = nullptr;        // [batch, num_qo_heads, head_dim]
  float* lse = nullptr;     // [batch, num_qo_heads] natural log, or null

  const void* kv_data = nullptr;  // one layer, NHD strides below (elements)
  int64_t page_stride = 0;
  int64_t kv_stride = 0;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
  int32_t page_size = 0;
  // token -> page by multiply-shift (no division, no branch): page = (umulhi(t, m) + t) >> s,
  // valid for 0 <= t < 2^31 and any page_size >= 1 (m, s from the host, decode.cc).
  uint32_t page_div_m = 1;
  int32_t page_div_s = 0;
  const int32_t* indptr = nullptr;
  const int32_t* indices = nullptr;
  const int32_t* last_page_len = nullptr;

  int32_t num_qo_heads = 0;
  int32_t group = 1;       // query heads per KV head
  int32_t head_tiles = 1;  // CTAs per KV head along the head axis: ceil(group / tile)

  const DecodeWorkItem* items = nullptr;  // [gridDim.x]
  float* partial_o = nullptr;             // [num_items, num_qo_heads, head_dim]
  float* partial_lse = nullptr;           // [num_items, num_qo_heads] natural log

  LogitScale logit;  // raw q.k -> base-2 logit (numerics.h)
  int32_t window_left = -1;
  int32_t rope = 0;  // RoPE LLaMA: the kernels' kRope instantiation runs
  const int32_t* rope_offsets = nullptr;  // [batch] or null
  RopeFreq rope_freq[kMaxRopePairs];      // pairs 0 .. head_dim/2 - 1, filled when rope
};

// Query heads handled by one CTA (the kernel is instantiated for these tiles).
int DecodeHeadTile(int group);

// Instantiated per (T, HEAD_DIM) in generated/decode_hd*_*.cu. T is __half or __nv_bfloat16;
// declared here with the DType so that host code needs no CUDA half types.
template <DType kDType, int kHeadDim>
cudaError_t LaunchDecodeKernel(const DecodeKernelParams& params, int num_items, int num_kv_heads,
                               int head_tile, cudaStream_t stream);
template <DType kDType, int kHeadDim>
cudaError_t DecodeKernelOccupancy(int head_tile, int* ctas_per_sm);

// The tensor-core decode kernel (decode_tc_kernel.cuh): 16 query heads per CTA, head_dim 64 and
// 128; instantiated next to LaunchDecodeKernel.
template <DType kDType, int kHeadDim>
cudaError_t LaunchDecodeTcKernel(const DecodeKernelParams& params, int num_items,
                                 int num_kv_heads, cudaStream_t stream);
template <DType kDType, int kHeadDim>
cudaError_t DecodeTcKernelOccupancy(int* ctas_per_sm);
inline constexpr int kTcHeadTile = 16;

// Merging of attention states: the public MergeStatesParams layout when state_indptr is null;
// with state_indptr, row r's states are rows state_indptr[r] .. state_indptr[r+1) of v_in/s_in
// ([total_states, num_heads, head_dim] / [total_states, num_heads]) and rows with a single state
// are skipped when skip_single (they were written directly by the decode kernel).
struct MergeKernelParams {
  const void* v_in = nullptr;
  const float* s_in = nullptr;
  void* v_out = nullptr;
  float* s_out = nullptr;
  int32_t num_rows = 0;
  int32_t num_states = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  const int32_t* state_indptr = nullptr;
  int32_t skip_single = 0;
};
// in_dtype: fp32/fp16/bf16; out_dtype: fp32/fp16/bf16 (in == out, or in == fp32).
cudaError_t LaunchMergeKernel(const MergeKernelParams& params, DType in_dtype, DType out_dtype,
                              cudaStream_t stream);
// The split-KV decode merge (decode_merge.cu): fp32 partial states with state_indptr, one CTA per
// (row, head) with the chunks spread over its threads; head_dim 64/128/256, out fp16/bf16.
cudaError_t LaunchDecodeMergeKernel(const MergeKernelParams& params, DType out_dtype,
                                    cudaStream_t stream);

// Appending new K/V rows into pages: 16-byte copies; requires head_dim*elem_size % 16 == 0.
struct AppendKernelParams {
  PagedKV kv;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* new_indptr = nullptr;
  int32_t elem_size = 2;
};
cudaError_t LaunchAppendKernel(const AppendKernelParams& params, int num_sms, cudaStream_t stream);

// One thread that executes __trap() (fault_kernel.cu): the context is unusable afterwards.
cudaError_t LaunchTrapKernel(cudaStream_t stream);

}  // namespace attnd::kernels::cuda::internal
