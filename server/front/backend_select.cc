#include "server/front/backend_select.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attnd::server::front {

CudaEnvironment ProbeCudaEnvironment() {
  CudaEnvironment environment;
#ifdef ATTND_WITH_CUDA
  environment.built_with_cuda = true;
#endif
  environment.driver_loaded = access("/proc/driver/nvidia/version", F_OK) == 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/dev", error)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, "nvidia") && name.size() > 6 &&
        std::isdigit(static_cast<unsigned char>(name[6])) != 0) {
      ++environment.device_nodes;
    }
  }
  return environment;
}

std::string CudaUnavailableReason(const CudaEnvironment& environment, int32_t device) {
  if (!environment.built_with_cuda) {
    return "this attnd was built without the CUDA backend (ATTND_CUDA=OFF, or no nvcc at build "
           "time)";
  }
  if (!environment.driver_loaded && environment.device_nodes == 0) {
    return "no NVIDIA driver is loaded on this machine (no GPU, or its driver is not installed)";
  }
  if (environment.device_nodes == 0) {
    return "the NVIDIA driver is loaded but no GPU device is visible to this process (no "
           "/dev/nvidia0; in a container, give it the GPU)";
  }
  if (device >= environment.device_nodes) {
    return absl::StrCat("no CUDA device ", device, " (", environment.device_nodes,
                        " GPU device(s) visible; --device chooses one)");
  }
  return absl::StrCat("CUDA device ", device, " cannot be used");
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateBackend(const BackendChoice& choice) {
  kernels::CpuBackendOptions cpu_options;
  cpu_options.num_threads = choice.cpu_threads;
  kernels::CudaBackendOptions cuda_options;
  cuda_options.device = choice.device;

  if (choice.kind == "cpu") return kernels::CreateCpuBackend(cpu_options);
  if (choice.kind != "cuda" && choice.kind != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend '", choice.kind, "' is not one of auto, cpu, cuda"));
  }
  absl::StatusOr<std::unique_ptr<kernels::Backend>> cuda = kernels::CreateCudaBackend(cuda_options);
  if (cuda.ok()) return cuda;
  const CudaEnvironment environment = ProbeCudaEnvironment();
  // CUDA's own error, when there was a CUDA to ask (a build without CUDA says only that).
  const std::string detail =
      environment.built_with_cuda ? absl::StrCat(" (CUDA: ", cuda.status().message(), ")") : "";
  const std::string reason = CudaUnavailableReason(environment, choice.device);
  if (choice.kind == "cuda") {
    return absl::Status(
        cuda.status().code(),
        absl::StrCat(reason, detail, "; --backend=cpu or --backend=auto run on the CPU"));
  }
  // A machine without a GPU (or a build without CUDA) is the cpu backend's ordinary case; a GPU
  // that is there and cannot be used is worth a warning.
  const bool expected = !environment.built_with_cuda || environment.device_nodes == 0;
  spdlog::log(expected ? spdlog::level::info : spdlog::level::warn,
              "backend auto: {}; using the cpu backend{}", reason, detail);
  return kernels::CreateCpuBackend(cpu_options);
}

}  // namespace attnd::server::front
