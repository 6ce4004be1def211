// A kernel that traps (Backend::InjectDeviceFaultForTesting): the way a faulting kernel leaves
// the CUDA context, with a sticky error, on purpose.
#include <cuda_runtime.h>

#include "backend/fault_kernel.h"

namespace attnd::kernels::cuda::internal {
namespace {

__global__ void TrapKernel() { __trap(); }

}  // namespace

cudaError_t LaunchTrapKernel(cudaStream_t stream) {
  TrapKernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

}  // namespace attnd::kernels::cuda::internal
