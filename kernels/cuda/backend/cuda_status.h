// cudaError_t -> absl::Status, and which CUDA errors are sticky (the context is unusable after
// them: every later call fails with the same error until the process exits).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace attnd::kernels::cuda {

inline bool IsStickyCudaError(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorContextIsDestroyed:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

// OK for cudaSuccess; RESOURCE_EXHAUSTED for out-of-memory; INVALID_ARGUMENT for bad launch
// parameters; INTERNAL otherwise. `what` names the failed operation.
inline absl::Status CudaStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(absl::string_view(what.data(), what.size()), ": ",
                                 cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  switch (e) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidDevicePointer:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

}  // namespace attnd::kernels::cuda

// Returns the status of a failed CUDA call from the enclosing function.
#define ATTND_RETURN_IF_CUDA_ERROR(expr, what)                               \
  do {                                                                       \
    const cudaError_t attnd_cuda_err_ = (expr);                              \
    if (attnd_cuda_err_ != cudaSuccess) {                                    \
      return ::attnd::kernels::cuda::CudaStatus(attnd_cuda_err_, (what));    \
    }                                                                        \
  } while (0)
