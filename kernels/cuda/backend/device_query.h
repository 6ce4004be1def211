// Facts of the current CUDA device the host code of the kernel families needs (the SM count that
// split-KV schedules and append_kv's grid fill; whether the sm_90a kernels run on it).
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

// Whether the current device runs the sm_90a kernels (compute capability exactly 9.0: H100,
// H200; the "a" features do not carry to later architectures). The build targets sm_90a
// (ATTND_CUDA_ARCHS).
inline absl::StatusOr<bool> CurrentDeviceIsSm90() {
  int dev = 0, major = 0, minor = 0;
  ATTND_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  ATTND_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                             "cudaDeviceGetAttribute(computeCapabilityMajor)");
  ATTND_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
                             "cudaDeviceGetAttribute(computeCapabilityMinor)");
  return major == 9 && minor == 0;
}

}  // namespace attnd::kernels::cuda
