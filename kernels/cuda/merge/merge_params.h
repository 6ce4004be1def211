// Internal interface of the state-merging kernels (merge_states.cu: the public MergeStates;
// decode_merge.cu: the second pass of split-KV decode). Kernel side returns cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda::internal {

// Merging of attention states: the public MergeStatesParams layout when state_indptr is null;
// with state_indptr, row r's states are rows state_indptr[r] .. state_indptr[r+1) of v_in/s_in
// ([total_states, num_heads, head_dim] / [total_states, num_heads]) and rows with a single state
// are skipped when skip_single (they were written directly by the decode kernel). The pair form
// (v_in_b set, num_states 2, no state_indptr): row r's states are row r of v_in/s_in and row r
// of v_in_b/s_in_b, each [num_rows, num_heads, head_dim] / [num_rows, num_heads]. Outputs may be
// exactly an input's memory (in place): a (row, head) reads all its inputs before it writes.
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
  const void* v_in_b = nullptr;  // the pair form's second state, or null
  const float* s_in_b = nullptr;
  // Split-KV only: the run's attention sinks ([num_heads] float32, VariantParams::sinks), folded
  // into each merged row once (FinalizeMergedRow), or null. The partial states carry none.
  const float* sinks = nullptr;
  // Split-KV of a graph-safe decode work only: the number of valid rows, in device memory (the
  // grid has the work's capacity of rows; CTAs past it exit), or null (all num_rows).
  const int32_t* live_rows = nullptr;
};
// in_dtype: fp32/fp16/bf16; out_dtype: fp32/fp16/bf16 (in == out, or in == fp32).
cudaError_t LaunchMergeKernel(const MergeKernelParams& params, DType in_dtype, DType out_dtype,
                              cudaStream_t stream);
// The split-KV decode merge (decode_merge.cu): fp32 partial states with state_indptr, one CTA per
// (row, head) with the chunks spread over its threads; head_dim 64/128/256, out fp16/bf16.
cudaError_t LaunchDecodeMergeKernel(const MergeKernelParams& params, DType out_dtype,
                                    cudaStream_t stream);

}  // namespace attnd::kernels::cuda::internal
