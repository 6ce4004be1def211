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
  if (size_bytes == 0) return absl::InvalidArgumentError("shared memory size_bytes=0");
  const std::string label = name.empty() ? std::string("attnd-buffer") : name;
  const int fd = memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("memfd_create(", label, "): ", std::strerror(errno)));
  }
  auto fail = [&](const char* what) {
    const int err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat(what, "(", label, ", ", size_bytes,
                                            "): ", std::strerror(err)));
  };
  if (ftruncate(fd, static_cast<off_t>(size_bytes)) != 0) return fail("ftruncate");
  // Sealed before it is shared: from here on nobody can make it shorter than what is mapped.
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) != 0) return fail("F_ADD_SEALS");
  void* data = mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) return fail("mmap");
  return std::unique_ptr<SharedMemoryRegion>(
      new SharedMemoryRegion(label, fd, static_cast<char*>(data), size_bytes));
}

SharedMemoryRegion::~SharedMemoryRegion() {
  munmap(data_, size_);
  close(fd_);
}

}  // namespace attnd::client
