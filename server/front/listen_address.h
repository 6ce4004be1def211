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
// that is not a socket is there (we never delete a regular file).
absl::Status RemoveStaleUnixSocket(const std::string& path);

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
