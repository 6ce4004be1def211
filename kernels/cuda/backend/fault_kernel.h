// A kernel that faults on purpose (fault_kernel.cu), for the sticky-error tests of the backend.
#pragma once

#include <cuda_runtime.h>

namespace attnd::kernels::cuda::internal {

// One thread that executes __trap() (fault_kernel.cu): the context is unusable afterwards.
cudaError_t LaunchTrapKernel(cudaStream_t stream);

}  // namespace attnd::kernels::cuda::internal
