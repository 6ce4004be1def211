// The client process's connection to the daemon's peer socket (attnd.proto, "Identity"). Over
// it the kernel tells the daemon who this process is (SO_PEERCRED); the daemon answers with a
// peer key, which the Client sends as x-attnd-peer metadata on every call (unary sessions are
// bound to it), and shared-memory descriptors travel over it (SCM_RIGHTS) to be registered as
// buffers. The connection stays open while the process uses the daemon: when it closes (the
// process exits), the daemon releases the unary sessions opened with its key.
//
// Connects lazily and reconnects after the daemon restarted (a new key; the old sessions are
// gone with the old daemon anyway). Thread-safe.
#pragma once

#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace attnd::client {

class PeerLink {
 public:
  // `path`: the daemon's peer socket (its gRPC socket's path + ".peer").
  explicit PeerLink(std::string path) : path_(std::move(path)) {}
  ~PeerLink();
  PeerLink(const PeerLink&) = delete;
  PeerLink& operator=(const PeerLink&) = delete;

  // The peer key, connecting first if needed; empty when the socket cannot be reached (an old
  // daemon, or none yet: the calls then carry no key).
  std::string Key();
  // Sends `fd` (a memfd sealed against shrinking; not taken) and returns the daemon's one-time
  // fd token. UNAVAILABLE when the socket cannot be reached, FAILED_PRECONDITION with the
  // daemon's reason when it refuses the descriptor.
  absl::StatusOr<std::string> SendFd(int fd);

  const std::string& path() const { return path_; }

  // "unix:///tmp/attnd.sock" or "unix:rel/path" -> "<path>.peer"; "" for other targets.
  static std::string DefaultPathFor(const std::string& target);

 private:
  absl::Status ConnectLocked();
  void CloseLocked();

  const std::string path_;
  std::mutex mutex_;
  int fd_ = -1;
  std::string key_;
};

}  // namespace attnd::client
