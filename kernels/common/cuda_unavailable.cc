// Built only without CUDA: the CUDA backend factory reports that it is not available, so
// --backend=auto falls back to the CPU backend and --backend=cuda fails at start with a reason.
#include "attnd/kernels/backend.h"

namespace attnd::kernels {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions&) {
  return absl::UnavailableError("attnd was built without CUDA (ATTND_CUDA=OFF or no nvcc found)");
}

}  // namespace attnd::kernels
