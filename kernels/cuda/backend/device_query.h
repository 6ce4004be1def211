// Facts of the current CUDA device the host code of the kernel families needs (the SM count that
// split-KV schedules and append_kv's grid fill).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/statusor.h"
#include "backend/cuda_status.h"

namespace attnd::kernels::cuda {

// Streaming multiprocessors of the current device.
inline absl::StatusOr<int> CurrentSmCount() {
  int dev = 0, sms = 0;
  ATTND_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  ATTND_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                             "cudaDeviceGetAttribute(multiProcessorCount)");
  return sms;
}

}  // namespace attnd::kernels::cuda
