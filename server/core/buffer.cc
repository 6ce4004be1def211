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

// Closes a file descriptor on scope exit.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

class SharedMemoryBuffer final : public RegisteredBuffer {
 public:
  // Takes ownership of the descriptor (kept open to re-check the object's size) and the mapping.
  SharedMemoryBuffer(std::string name, int fd, void* addr, uint64_t size)
      : name_(std::move(name)), fd_(fd), addr_(addr), size_(size) {}
  ~SharedMemoryBuffer() override {
    ::munmap(addr_, size_);
    ::close(fd_);
  }
  void* data() const override { return addr_; }
  uint64_t size() const override { return size_; }
  std::string description() const override { return absl::StrCat("shared_memory '", name_, "'"); }
  absl::Status CheckUsable(absl::string_view field) const override {
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size_) {
      return absl::FailedPreconditionError(absl::StrCat(
          field, ": shared memory object '", name_, "' is now ", st.st_size,
          " bytes, smaller than the registered ", size_, "; register it again"));
    }
    return absl::OkStatus();
  }

 private:
  std::string name_;
  int fd_;
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

absl::StatusOr<std::unique_ptr<RegisteredBuffer>> OpenSharedMemoryBuffer(const std::string& name,
                                                                         uint64_t size_bytes) {
  const std::string field = absl::StrCat("shared_memory.name='", name, "'");
  ScopedFd fd(::shm_open(name.c_str(), O_RDWR, 0));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat(field, ": shm_open"));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat(field, ": fstat"));
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size_bytes) {
    return absl::OutOfRangeError(absl::StrCat("size_bytes=", size_bytes, " exceeds the size of ",
                                              field, " (", st.st_size, " bytes)"));
  }
  void* addr = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (addr == MAP_FAILED) return ErrnoStatus(errno, absl::StrCat(field, ": mmap"));
  return std::make_unique<SharedMemoryBuffer>(name, fd.release(), addr, size_bytes);
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
