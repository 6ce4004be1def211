#include "server/core/peers.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/core/ids.h"

namespace attnd::server {
namespace {

std::string PrincipalOf(const PeerCredentials& c) { return absl::StrCat("uid:", c.uid); }

// A descriptor is safe to map and read while its sender lives when nobody can make it shorter:
// a regular file with the F_SEAL_SHRINK seal (seals cannot be removed once set).
absl::Status CheckSealedMemfd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("fstat: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        "the descriptor is not a regular file: send a memfd (memfd_create)");
  }
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return absl::FailedPreconditionError(
        "the descriptor is not sealed against shrinking: create it with memfd_create(..., "
        "MFD_ALLOW_SEALING), size it, then fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> PeerRegistry::Add(const PeerCredentials& credentials) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(peers_.size()) >= max_peers_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "quota: ", peers_.size(), " processes are connected to the peer socket (limit ",
        max_peers_, ", from the daemon's file-descriptor budget); close idle clients"));
  }
  std::string key = NewRandomId("pk-");
  peers_[key].credentials = credentials;
  return key;
}

bool PeerRegistry::Remove(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(key);
  if (it == peers_.end()) return false;
  pending_fds_ -= static_cast<int64_t>(it->second.fds.size());
  peers_.erase(it);  // closes the pending descriptors
  return true;
}

absl::StatusOr<Identity> PeerRegistry::Lookup(absl::string_view key) const {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(key);
  if (it == peers_.end()) {
    return absl::UnauthenticatedError(
        "x-attnd-peer is not a live peer key of this daemon (its peer connection closed, or the "
        "daemon restarted): connect to the peer socket again");
  }
  return Identity{PrincipalOf(it->second.credentials), std::string(key)};
}

absl::StatusOr<std::string> PeerRegistry::AddFd(absl::string_view key, ScopedFd fd) {
  if (absl::Status sealed = CheckSealedMemfd(fd.get()); !sealed.ok()) return sealed;
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(key);
  if (it == peers_.end()) return absl::UnauthenticatedError("unknown peer");
  if (static_cast<int32_t>(it->second.fds.size()) >= max_fds_per_peer_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "quota: ", it->second.fds.size(), " descriptors sent and not yet registered (limit ",
        max_fds_per_peer_, "); register or drop them first"));
  }
  if (pending_fds_ >= max_pending_fds_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "quota: the daemon holds ", pending_fds_, " descriptors sent and not yet registered "
        "(limit ", max_pending_fds_, ", from its file-descriptor budget); try again shortly"));
  }
  std::string token = NewRandomId("fd-");
  it->second.fds.emplace(token, std::move(fd));
  ++pending_fds_;
  return token;
}

absl::StatusOr<ScopedFd> PeerRegistry::TakeFd(const Identity& caller, absl::string_view token) {
  absl::MutexLock lock(&mu_);
  auto peer = caller.peer.empty() ? peers_.end() : peers_.find(caller.peer);
  if (peer != peers_.end()) {
    auto it = peer->second.fds.find(token);
    if (it != peer->second.fds.end()) {
      ScopedFd fd = std::move(it->second);
      peer->second.fds.erase(it);
      --pending_fds_;
      return fd;
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "shared_memory_fd.fd_token='", token.substr(0, 40),
      "' is not a descriptor this caller sent over its peer connection (tokens are single-use "
      "and die with the connection)"));
}

int64_t PeerRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(peers_.size());
}

int64_t PeerRegistry::pending_fds() const {
  absl::MutexLock lock(&mu_);
  return pending_fds_;
}

}  // namespace attnd::server
