// Client buffers registered with RegisterBuffer: memory another process owns and shares with the
// daemon, addressed by BufferSlice. RAII: destroying one unmaps/closes what it opened.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attnd/kernels/backend.h"
#include "server/core/scoped_fd.h"

namespace attnd::server {

class RegisteredBuffer {
 public:
  virtual ~RegisteredBuffer() = default;
  // Start of the mapping, usable by the backend (host memory for shared memory with a
  // host-accessible backend; device memory for CUDA IPC).
  virtual void* data() const = 0;
  // Bytes the client may address (its size_bytes; the real object is at least this big).
  virtual uint64_t size() const = 0;
  // "shared memory (memfd)" / "cuda_ipc (device 0)", for logs.
  virtual std::string description() const = 0;
};

// Maps the first size_bytes of a sealed memfd (PeerRegistry::AddFd checked the seal) read/write
// and closes the descriptor: the mapping keeps the memory, and since the file can never shrink,
// touching the mapping can never fault. OUT_OF_RANGE when the file is smaller than size_bytes.
absl::StatusOr<std::unique_ptr<RegisteredBuffer>> OpenSharedMemoryFdBuffer(ScopedFd fd,
                                                                           uint64_t size_bytes);

// Maps another process's CUDA allocation through the backend (FAILED_PRECONDITION, with the
// backend's message, on backends without IPC).
absl::StatusOr<std::unique_ptr<RegisteredBuffer>> OpenCudaIpcBuffer(kernels::Backend& backend,
                                                                    const std::string& handle,
                                                                    int32_t device,
                                                                    uint64_t size_bytes);

}  // namespace attnd::server
