// Internal interface of the append_kv kernel (append_kv.cu). Kernel side returns cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda::internal {

// Appending new K/V rows into pages: 16-byte copies of rows in the cache's type (requires
// head_dim * elem_size % 16 == 0), or rows of new_dtype (fp32 / fp16 / bf16) quantized onto an
// fp8 cache with its scales, 16 elements per thread and step (AppendKvParams::new_dtype).
struct AppendKernelParams {
  PagedKV kv;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* new_indptr = nullptr;
  int32_t elem_size = 2;  // of the cache
  DType new_dtype = DType::kFloat16;
};
cudaError_t LaunchAppendKernel(const AppendKernelParams& params, int num_sms, cudaStream_t stream);

}  // namespace attnd::kernels::cuda::internal
