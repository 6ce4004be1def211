#include "attnd/client/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnd::client {

absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> SharedMemoryRegion::Create(
    const std::string& name, size_t size_bytes) {
  if (name.size() < 2 || name[0] != '/' || name.find('/', 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared memory name=\"", name, "\" must be \"/name\" without other '/'"));
  }
  if (size_bytes == 0) return absl::InvalidArgumentError("shared memory size_bytes=0");
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    const int err = errno;
    const std::string text = absl::StrCat("shm_open(", name, "): ", std::strerror(err));
    return err == EEXIST ? absl::AlreadyExistsError(text) : absl::InternalError(text);
  }
  if (ftruncate(fd, static_cast<off_t>(size_bytes)) != 0) {
    const int err = errno;
    close(fd);
    shm_unlink(name.c_str());
    return absl::InternalError(absl::StrCat("ftruncate(", name, ", ", size_bytes,
                                            "): ", std::strerror(err)));
  }
  void* data = mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);  // the mapping keeps the object alive
  if (data == MAP_FAILED) {
    shm_unlink(name.c_str());
    return absl::InternalError(absl::StrCat("mmap(", name, "): ", std::strerror(err)));
  }
  return std::unique_ptr<SharedMemoryRegion>(
      new SharedMemoryRegion(name, static_cast<char*>(data), size_bytes));
}

SharedMemoryRegion::~SharedMemoryRegion() {
  munmap(data_, size_);
  shm_unlink(name_.c_str());
}

}  // namespace attnd::client
