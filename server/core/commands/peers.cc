// Peer calls of the front's peer socket: AddPeer, RemovePeer (ends the peer's unary sessions'
// leases), PeerIdentity and AddPeerFd.
#include "server/core/core_state.h"
#include "server/core/scoped_fd.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<std::string> Core::AddPeer(const PeerCredentials& credentials) {
  auto key = state_->peers.Add(credentials);
  if (key.ok()) {
    spdlog::info("peer connected: pid {} uid {} gid {}", credentials.pid, credentials.uid,
                 credentials.gid);
  }
  return key;
}

void Core::RemovePeer(std::string_view key) {
  if (!state_->peers.Remove(Absl(key))) return;
  // Its unary sessions' leases end now; ExpireIdleSessions releases them on its next round. Not
  // released here: that would wait for a command still running in one of them, and the peer
  // socket's thread (which calls this) serves every client.
  const int ended = state_->sessions.EndLeasesIf([&](const Session& s) {
    return s.binding == SessionBinding::kLeased && s.owner.peer == key;
  });
  if (ended > 0) spdlog::info("a peer left: {} unary session(s) end with it", ended);
}

absl::StatusOr<Identity> Core::PeerIdentity(std::string_view key) const {
  return state_->peers.Lookup(Absl(key));
}

absl::StatusOr<std::string> Core::AddPeerFd(std::string_view key, int fd) {
  return state_->peers.AddFd(Absl(key), ScopedFd(fd));
}

}  // namespace attnd::server
