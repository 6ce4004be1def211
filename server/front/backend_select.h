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

// auto logs why it fell back to cpu. cuda fails (the caller exits) when no device can be used.
absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateBackend(const BackendChoice& choice);

}  // namespace attnd::server::front
