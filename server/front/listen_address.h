// The --listen address: a unix socket ("unix:///abs/path", "unix:path") or TCP ("HOST:PORT"),
// and the unix-socket chores: remove a stale socket file before binding, create it with its
// permissions (ScopedUmaskForMode) and set them exactly after.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnd::server::front {

struct ListenAddress {
  std::string grpc_uri;   // what grpc::ServerBuilder::AddListeningPort takes
  std::string unix_path;  // the socket file, empty for TCP
  bool is_unix() const { return !unix_path.empty(); }
};

// INVALID_ARGUMENT for an empty address, an empty or too long socket path (sun_path holds 107
// bytes), or a TCP address without a numeric port.
absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view address);

// HOST:PORT (HOST may be "[v6]"; PORT 0..65535) for the HTTP listener.
struct HostPort {
  std::string host;
  int port = 0;
};
absl::StatusOr<HostPort> ParseHostPort(std::string_view address);

// Removes `path` if it is a socket left by an earlier run; FAILED_PRECONDITION if something
// that is not a socket is there (we never delete a regular file); UNAVAILABLE if a process still
// listens on the socket (another attnd: taking its path would leave it unreachable).
absl::Status RemoveStaleUnixSocket(const std::string& path);

// OK when a unix socket can be created at `path` as far as its directory goes; else, naming the
// directory, NOT_FOUND when it does not exist, FAILED_PRECONDITION when it is not a directory or
// this process may not create files in it.
absl::Status CheckUnixSocketDirectory(const std::string& path);

// Why a TCP listener cannot be bound on HOST:PORT right now, found by binding a test socket the
// way the daemon's listeners bind (SO_REUSEADDR, no SO_REUSEPORT), e.g. "port 9401 of 127.0.0.1
// is in use (another attnd?)"; empty when the test socket binds (the failure lies elsewhere).
std::string TcpBindProblem(const HostPort& address);

// chmod(path, mode), with the error named.
absl::Status SetSocketPermissions(const std::string& path, unsigned mode);

// Sets the process's umask so that files created while it lives get at most `mode`'s
// permissions (a socket is created by bind with 0777 & ~umask), and restores the previous umask
// when destroyed. The umask is process-wide: hold it only around the bind.
class ScopedUmaskForMode {
 public:
  explicit ScopedUmaskForMode(unsigned mode);
  ~ScopedUmaskForMode();
  ScopedUmaskForMode(const ScopedUmaskForMode&) = delete;
  ScopedUmaskForMode& operator=(const ScopedUmaskForMode&) = delete;

 private:
  unsigned previous_;
};

}  // namespace attnd::server::front
