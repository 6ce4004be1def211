// Backend scratch memory for tensors that arrive inline when the backend cannot read host memory
// (CUDA): inputs are copied in, outputs are copied back into the response. One per session,
// grown on demand and reused by every request of the session.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"

namespace attnd::server {

class StagingArea {
 public:
  // Alignment of every region handed out (enough for vectorised loads of any dtype).
  static constexpr uint64_t kAlignment = 256;
  static uint64_t AlignUp(uint64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

  // Makes sure `bytes` are available and returns their start; the previous contents are not
  // kept. Region i of a request starts at the sum of the aligned sizes before it.
  absl::StatusOr<char*> Reserve(kernels::Backend& backend, uint64_t bytes);

 private:
  std::unique_ptr<kernels::BackendMemory> memory_;
};

}  // namespace attnd::server
