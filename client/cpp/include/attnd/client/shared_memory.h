// Shared memory owned by the client, to register with the daemon as a zero-copy staging buffer
// (SessionApi::RegisterSharedMemory; CPU-backend daemons). It is a memfd (memfd_create), sized
// and sealed against shrinking (F_SEAL_SHRINK) before anything maps it, so the daemon can map it
// without ever faulting; it travels to the daemon as a file descriptor over the peer socket
// (peer_link.h), never by name. Unmapped and closed when the region is destroyed.
//
// Thread-safety: the region itself is immutable after Create; the mapped bytes are the caller's
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
  // A new region of `size_bytes`, mapped read-write. `name` is a label (shown in /proc and
  // debuggers), not a way to reach it. INTERNAL with errno text on failures.
  static absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> Create(const std::string& name,
                                                                    size_t size_bytes);
  ~SharedMemoryRegion();
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  const std::string& name() const { return name_; }
  size_t size() const { return size_; }
  char* data() const { return data_; }
  std::span<char> bytes() const { return {data_, size_}; }
  // The sealed memfd (owned by the region), for PeerLink::SendFd.
  int fd() const { return fd_; }

 private:
  SharedMemoryRegion(std::string name, int fd, char* data, size_t size)
      : name_(std::move(name)), fd_(fd), data_(data), size_(size) {}
  std::string name_;
  int fd_;
  char* data_;
  size_t size_;
};

}  // namespace attnd::client
