#include "server/core/buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnd::server {
namespace {

class SharedMemoryBuffer final : public RegisteredBuffer {
 public:
  // Owns the mapping (the descriptor was closed once mapped).
  SharedMemoryBuffer(void* addr, uint64_t size) : addr_(addr), size_(size) {}
  ~SharedMemoryBuffer() override { ::munmap(addr_, size_); }
  void* data() const override { return addr_; }
  uint64_t size() const override { return size_; }
  std::string description() const override { return "shared memory (sealed memfd)"; }

 private:
  void* addr_;
  uint64_t size_;
};

class CudaIpcBuffer final : public RegisteredBuffer {
 public:
  CudaIpcBuffer(std::unique_ptr<kernels::BackendMemory> memory, int32_t device, uint64_t size)
      : memory_(std::move(memory)), device_(device), size_(size) {}
  void* data() const override { return memory_->data(); }
  uint64_t size() const override { return size_; }
  std::string description() const override {
    return absl::StrCat("cuda_ipc (device ", device_, ")");
  }

 private:
  std::unique_ptr<kernels::BackendMemory> memory_;
  int32_t device_;
  uint64_t size_;
};

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT: return absl::NotFoundError(message);
    case EACCES:
    case EPERM: return absl::PermissionDeniedError(message);
    case EINVAL:
    case ENAMETOOLONG: return absl::InvalidArgumentError(message);
    case ENOMEM:
    case EMFILE:
    case ENFILE: return absl::ResourceExhaustedError(message);
    default: return absl::InternalError(message);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegisteredBuffer>> OpenSharedMemoryFdBuffer(ScopedFd fd,
                                                                           uint64_t size_bytes) {
  const std::string field = "shared_memory_fd";
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat(field, ": fstat"));
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size_bytes) {
    return absl::OutOfRangeError(absl::StrCat("size_bytes=", size_bytes, " exceeds the size of ",
                                              field, " (", st.st_size, " bytes)"));
  }
  void* addr = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (addr == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat(field, ": mmap"));
  return std::make_unique<SharedMemoryBuffer>(addr, size_bytes);
}

absl::StatusOr<std::unique_ptr<RegisteredBuffer>> OpenCudaIpcBuffer(kernels::Backend& backend,
                                                                    const std::string& handle,
                                                                    int32_t device,
                                                                    uint64_t size_bytes) {
  auto memory = backend.OpenIpcBuffer(handle, device, size_bytes);
  if (!memory.ok()) {
    return absl::Status(memory.status().code(),
                        absl::StrCat("cuda_ipc: ", memory.status().message()));
  }
  return std::make_unique<CudaIpcBuffer>(*std::move(memory), device, size_bytes);
}

}  // namespace attnd::server
