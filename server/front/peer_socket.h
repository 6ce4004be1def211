// The daemon's peer socket (the wire API's "Identity"): a unix SOCK_SEQPACKET socket next to the
// gRPC socket (default: its path + ".peer") where each client process connects once and keeps
// the connection for its lifetime.
//
//   on connect   the kernel's credentials of the connection (SO_PEERCRED) become a peer of the
//                Core (Core::AddPeer); the daemon sends "attnd-peer 1 <peer key>\n". The client
//                sends the key as x-attnd-peer metadata on its gRPC calls.
//   "fd"         one message with one descriptor (SCM_RIGHTS): a memfd sealed against
//                shrinking (Core::AddPeerFd); answer "ok <fd_token>\n" or "error <message>\n".
//   on close     Core::RemovePeer: the key dies, unregistered descriptors are closed, the unary
//                sessions opened with the key are released.
//
// One thread serves every connection with poll(); replies are small and sent without blocking
// (a client that does not read its answers is disconnected). At most max_connections clients
// at once: each holds a descriptor of the daemon.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/core/core.h"

namespace attnd::server::front {

struct PeerSocketOptions {
  std::string path;          // socket file; a stale socket there is removed first
  uint32_t mode = 0660;      // permissions the socket has from its first moment
  int64_t max_connections = 4096;
};

class PeerSocketServer {
 public:
  // Binds (in a private directory, then renamed into place, so the socket never exists with
  // other permissions) and starts the serving thread.
  static absl::StatusOr<std::unique_ptr<PeerSocketServer>> Start(const PeerSocketOptions& options,
                                                                 Core& core);
  ~PeerSocketServer();  // Stop()
  PeerSocketServer(const PeerSocketServer&) = delete;
  PeerSocketServer& operator=(const PeerSocketServer&) = delete;

  // Stops serving, closes every connection (their peers are removed) and the socket file.
  void Stop();
  const std::string& path() const { return options_.path; }

 private:
  PeerSocketServer(const PeerSocketOptions& options, Core& core, int listen_fd, int wake_fd);
  void Loop();

  const PeerSocketOptions options_;
  Core& core_;
  const int listen_fd_;
  const int wake_fd_;  // eventfd: Stop() wakes the loop
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// "unix:///run/attnd.sock" -> "/run/attnd.sock.peer"; empty for a TCP address.
std::string DefaultPeerSocketPath(const std::string& unix_socket_path);

}  // namespace attnd::server::front
