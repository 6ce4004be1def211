// A POSIX shared-memory object owned by the client (shm_open + ftruncate + mmap), to register
// with the daemon as a zero-copy staging buffer (SessionApi::RegisterSharedMemory). The object is
// unmapped and unlinked when the SharedMemoryRegion is destroyed.
//
// Thread-safety: the object itself is immutable after Create; the mapped bytes are the caller's
// to synchronise (the daemon reads/writes them during the commands that name them).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace attnd::client {

class SharedMemoryRegion {
 public:
  // Creates (exclusively) the object `name` ("/something", no other '/') of `size_bytes` and maps
  // it read-write. ALREADY_EXISTS if the name is taken; INTERNAL with errno text on other
  // failures.
  static absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> Create(const std::string& name,
                                                                    size_t size_bytes);
  ~SharedMemoryRegion();
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  const std::string& name() const { return name_; }
  size_t size() const { return size_; }
  char* data() const { return data_; }
  std::span<char> bytes() const { return {data_, size_}; }

 private:
  SharedMemoryRegion(std::string name, char* data, size_t size)
      : name_(std::move(name)), data_(data), size_(size) {}
  std::string name_;
  char* data_;
  size_t size_;
};

}  // namespace attnd::client
