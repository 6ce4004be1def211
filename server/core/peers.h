// The processes connected to the daemon's peer socket (the wire API's "Identity"): each one has
// the credentials the kernel reported for its connection (SO_PEERCRED), a secret peer key that
// its calls carry in the x-attnd-peer metadata, and the shared-memory file descriptors it sent
// that no RegisterBuffer has taken yet. Everything of a peer goes when its connection closes.
//
// Bounded: at most max_peers peers, max_fds_per_peer pending descriptors each and
// max_pending_fds in all (each one is an open fd of the daemon), RESOURCE_EXHAUSTED beyond.
// Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/core/core.h"
#include "server/core/scoped_fd.h"

namespace attnd::server {

class PeerRegistry {
 public:
  PeerRegistry(int64_t max_peers, int32_t max_fds_per_peer, int64_t max_pending_fds)
      : max_peers_(max_peers),
        max_fds_per_peer_(max_fds_per_peer),
        max_pending_fds_(max_pending_fds) {}

  // A new peer with these credentials; returns its key. RESOURCE_EXHAUSTED beyond max_peers.
  absl::StatusOr<std::string> Add(const PeerCredentials& credentials) ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets the peer and closes its pending descriptors. False for an unknown key.
  bool Remove(absl::string_view key) ABSL_LOCKS_EXCLUDED(mu_);
  // The identity of the caller presenting `key` (principal "uid:N", peer = key).
  // UNAUTHENTICATED for an unknown key (never echoed).
  absl::StatusOr<Identity> Lookup(absl::string_view key) const ABSL_LOCKS_EXCLUDED(mu_);

  // Keeps a shared-memory descriptor the peer sent, after checking it can never fault a reader:
  // a regular file (memfd) sealed against shrinking (F_SEAL_SHRINK). Returns the one-time token
  // that RegisterBuffer takes. FAILED_PRECONDITION for an unsealed or unsuitable descriptor,
  // RESOURCE_EXHAUSTED beyond max_fds_per_peer; the descriptor is closed on every error.
  absl::StatusOr<std::string> AddFd(absl::string_view key, ScopedFd fd) ABSL_LOCKS_EXCLUDED(mu_);
  // Hands the descriptor behind `token` to the caller, once. Only the peer that sent it may take
  // it: NOT_FOUND for an unknown token or another caller's (the same answer).
  absl::StatusOr<ScopedFd> TakeFd(const Identity& caller, absl::string_view token)
      ABSL_LOCKS_EXCLUDED(mu_);

  int64_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t pending_fds() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Peer {
    PeerCredentials credentials;
    absl::flat_hash_map<std::string, ScopedFd> fds;  // token -> descriptor
  };
  const int64_t max_peers_;
  const int32_t max_fds_per_peer_;
  const int64_t max_pending_fds_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Peer> peers_ ABSL_GUARDED_BY(mu_);
  int64_t pending_fds_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace attnd::server
