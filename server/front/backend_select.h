// --backend=auto|cpu|cuda: creates the attention backend the daemon runs on.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"

namespace attnd::server::front {

struct BackendChoice {
  std::string kind = "auto";  // auto = cuda when CreateCudaBackend succeeds, else cpu
  int32_t device = 0;         // CUDA ordinal
  int32_t cpu_threads = 0;    // 0 = all cores
};

// auto logs why it fell back to cpu, in plain words (CudaUnavailableReason) with CUDA's own error
// in parentheses (when built with CUDA). cuda fails (the caller exits) when no device can be used,
// with the same reason.
absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateBackend(const BackendChoice& choice);

// What the machine shows about CUDA, without calling CUDA (whose error for a machine without a
// driver is "CUDA driver version is insufficient for CUDA runtime version").
struct CudaEnvironment {
  bool built_with_cuda = false;  // this binary has the CUDA backend (ATTND_WITH_CUDA)
  bool driver_loaded = false;    // /proc/driver/nvidia/version exists (the NVIDIA kernel driver)
  int device_nodes = 0;          // /dev/nvidia0, /dev/nvidia1, ... visible to this process
};
CudaEnvironment ProbeCudaEnvironment();

// Why CUDA device `device` cannot be used, in plain words, e.g. "no NVIDIA driver is loaded on
// this machine (no GPU, or its driver is not installed)".
std::string CudaUnavailableReason(const CudaEnvironment& environment, int32_t device);

}  // namespace attnd::server::front
