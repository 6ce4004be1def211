#include "attnd/client/peer_link.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attnd::client {
namespace {

constexpr int kReplyTimeoutMs = 10000;
constexpr absl::string_view kGreeting = "attnd-peer 1 ";

// One SEQPACKET message, waiting up to kReplyTimeoutMs.
absl::StatusOr<std::string> ReadMessage(int fd) {
  struct pollfd p {fd, POLLIN, 0};
  const int ready = ::poll(&p, 1, kReplyTimeoutMs);
  if (ready <= 0) return absl::UnavailableError("the daemon's peer socket did not answer");
  char buffer[512];
  const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
  if (n <= 0) return absl::UnavailableError("the daemon closed the peer connection");
  std::string text(buffer, static_cast<size_t>(n));
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

}  // namespace

PeerLink::~PeerLink() {
  std::lock_guard<std::mutex> lock(mutex_);
  CloseLocked();
}

std::string PeerLink::DefaultPathFor(const std::string& target) {
  std::string path;
  if (absl::StartsWith(target, "unix://")) {
    path = target.substr(7);
  } else if (absl::StartsWith(target, "unix:")) {
    path = target.substr(5);
  } else {
    return "";
  }
  return path.empty() ? "" : path + ".peer";
}

void PeerLink::CloseLocked() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  key_.clear();
}

absl::Status PeerLink::ConnectLocked() {
  if (fd_ >= 0) {
    // Still connected? A closed daemon shows as readable end-of-file or a hang-up.
    struct pollfd p {fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) == 0) return absl::OkStatus();
    CloseLocked();
  }
  struct sockaddr_un addr {};
  if (path_.empty() || path_.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("peer socket path '", path_, "' is unusable"));
  }
  const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  if (::connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot connect to the peer socket '", path_, "': ", std::strerror(err)));
  }
  absl::StatusOr<std::string> greeting = ReadMessage(fd);
  if (!greeting.ok() || !absl::StartsWith(*greeting, kGreeting)) {
    ::close(fd);
    return greeting.ok() ? absl::UnavailableError(absl::StrCat("the peer socket refused: ", *greeting))
                         : greeting.status();
  }
  fd_ = fd;
  key_ = greeting->substr(kGreeting.size());
  return absl::OkStatus();
}

std::string PeerLink::Key() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!ConnectLocked().ok()) return "";
  return key_;
}

absl::StatusOr<std::string> PeerLink::SendFd(int fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (absl::Status connected = ConnectLocked(); !connected.ok()) return connected;
  char payload[] = "fd";
  struct iovec iov {payload, 2};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  struct cmsghdr* header = CMSG_FIRSTHDR(&msg);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(header), &fd, sizeof(int));
  if (::sendmsg(fd_, &msg, MSG_NOSIGNAL) != 2) {
    const int err = errno;
    CloseLocked();
    return absl::UnavailableError(absl::StrCat("sending the descriptor: ", std::strerror(err)));
  }
  absl::StatusOr<std::string> reply = ReadMessage(fd_);
  if (!reply.ok()) {
    CloseLocked();
    return reply.status();
  }
  if (absl::StartsWith(*reply, "ok ")) return reply->substr(3);
  return absl::FailedPreconditionError(absl::StrCat(
      "the daemon refused the descriptor: ",
      absl::StartsWith(*reply, "error ") ? reply->substr(6) : *reply));
}

}  // namespace attnd::client
