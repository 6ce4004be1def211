#include "server/front/backend_select.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace attnd::server::front {

absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateBackend(const BackendChoice& choice) {
  kernels::CpuBackendOptions cpu_options;
  cpu_options.num_threads = choice.cpu_threads;
  kernels::CudaBackendOptions cuda_options;
  cuda_options.device = choice.device;

  if (choice.kind == "cpu") return kernels::CreateCpuBackend(cpu_options);
  if (choice.kind == "cuda") return kernels::CreateCudaBackend(cuda_options);
  if (choice.kind != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend '", choice.kind, "' is not one of auto, cpu, cuda"));
  }
  absl::StatusOr<std::unique_ptr<kernels::Backend>> cuda = kernels::CreateCudaBackend(cuda_options);
  if (cuda.ok()) return cuda;
  spdlog::warn("backend auto: CUDA device {} unavailable ({}); using the cpu backend",
               choice.device, cuda.status().ToString());
  return kernels::CreateCpuBackend(cpu_options);
}

}  // namespace attnd::server::front
