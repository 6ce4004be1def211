#include "server/front/peer_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/front/listen_address.h"

namespace attnd::server::front {
namespace {

constexpr size_t kMaxMessageBytes = 256;

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Sends one reply without blocking; false when it could not be sent whole.
bool Reply(int fd, const std::string& text) {
  const ssize_t n = ::send(fd, text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  return n == static_cast<ssize_t>(text.size());
}

// One connected client process.
struct Connection {
  int fd = -1;
  std::string key;  // its peer key
};

// Handles one message of `c`; false when the connection must end.
bool HandleMessage(Core& core, Connection& c) {
  char payload[kMaxMessageBytes];
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  struct iovec iov {
    payload, sizeof(payload)
  };
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(c.fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  // Collect every descriptor that came, so none leaks whatever the message says.
  std::vector<int> fds;
  for (struct cmsghdr* h = CMSG_FIRSTHDR(&msg); h != nullptr; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
      const size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* data = reinterpret_cast<const int*>(CMSG_DATA(h));
      for (size_t i = 0; i < count; ++i) fds.push_back(data[i]);
    }
  }
  auto close_all = [&] {
    for (int fd : fds) ::close(fd);
  };
  if (n == 0) {  // the client closed (SEQPACKET: an empty read is the end)
    close_all();
    return false;
  }
  const std::string_view text(payload, static_cast<size_t>(n));
  if (text != "fd" && text != "fd\n") {
    close_all();
    return Reply(c.fd, "error unknown request: send \"fd\" with one descriptor (SCM_RIGHTS)\n");
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() != 1) {
    close_all();
    return Reply(c.fd, "error an \"fd\" message carries exactly one descriptor\n");
  }
  absl::StatusOr<std::string> token = core.AddPeerFd(c.key, fds[0]);  // takes the descriptor
  return Reply(c.fd, token.ok() ? absl::StrCat("ok ", *token, "\n")
                                : absl::StrCat("error ", token.status().message(), "\n"));
}

}  // namespace

std::string DefaultPeerSocketPath(const std::string& unix_socket_path) {
  return unix_socket_path.empty() ? std::string() : unix_socket_path + ".peer";
}

absl::StatusOr<std::unique_ptr<PeerSocketServer>> PeerSocketServer::Start(
    const PeerSocketOptions& options, Core& core) {
  struct sockaddr_un addr {};
  if (options.path.empty() || options.path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "peer socket path '", options.path, "' must be 1..", sizeof(addr.sun_path) - 1, " bytes"));
  }
  if (absl::Status removed = RemoveStaleUnixSocket(options.path); !removed.ok()) return removed;
  // Bind inside a fresh 0700 directory next to the target, set the mode, then rename into place:
  // the socket is reachable at its path only once it has its final permissions.
  const std::string dir_template = options.path + ".XXXXXX";
  std::vector<char> dir(dir_template.begin(), dir_template.end());
  dir.push_back('\0');
  if (::mkdtemp(dir.data()) == nullptr) return Errno("peer socket: mkdtemp");
  const std::string staging = absl::StrCat(dir.data(), "/s");
  auto cleanup_dir = [&] {
    ::unlink(staging.c_str());
    ::rmdir(dir.data());
  };
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    cleanup_dir();
    return Errno("peer socket: socket");
  }
  addr.sun_family = AF_UNIX;
  if (staging.size() >= sizeof(addr.sun_path)) {
    ::close(fd);
    cleanup_dir();
    return absl::InvalidArgumentError(
        absl::StrCat("peer socket path '", options.path, "' is too long to bind next to it"));
  }
  std::memcpy(addr.sun_path, staging.c_str(), staging.size() + 1);
  absl::Status failed;
  if (::bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0) {
    failed = Errno(absl::StrCat("peer socket: bind '", options.path, "'"));
  } else if (::chmod(staging.c_str(), static_cast<mode_t>(options.mode)) != 0) {
    failed = Errno("peer socket: chmod");
  } else if (::listen(fd, 128) != 0) {
    failed = Errno("peer socket: listen");
  } else if (::rename(staging.c_str(), options.path.c_str()) != 0) {
    failed = Errno(absl::StrCat("peer socket: rename to '", options.path, "'"));
  }
  cleanup_dir();
  if (!failed.ok()) {
    ::close(fd);
    return failed;
  }
  const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    ::close(fd);
    ::unlink(options.path.c_str());
    return Errno("peer socket: eventfd");
  }
  auto server = std::unique_ptr<PeerSocketServer>(new PeerSocketServer(options, core, fd, wake));
  server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  return server;
}

PeerSocketServer::PeerSocketServer(const PeerSocketOptions& options, Core& core, int listen_fd,
                                   int wake_fd)
    : options_(options), core_(core), listen_fd_(listen_fd), wake_fd_(wake_fd) {}

PeerSocketServer::~PeerSocketServer() {
  Stop();
  ::close(listen_fd_);
  ::close(wake_fd_);
}

void PeerSocketServer::Stop() {
  if (stop_.exchange(true)) return;
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  ::unlink(options_.path.c_str());
}

void PeerSocketServer::Loop() {
  std::vector<Connection> connections;
  std::vector<struct pollfd> fds;
  auto drop = [&](size_t i) {
    core_.RemovePeer(connections[i].key);
    ::close(connections[i].fd);
    connections[i] = std::move(connections.back());
    connections.pop_back();
  };
  while (!stop_.load()) {
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const Connection& c : connections) fds.push_back({c.fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("peer socket: poll failed: {}", std::strerror(errno));
      break;
    }
    if (stop_.load()) break;
    // Connections first (indices shift when one is dropped: walk backwards).
    for (size_t i = connections.size(); i-- > 0;) {
      const short revents = fds[i + 2].revents;
      if (revents == 0) continue;
      if ((revents & POLLIN) != 0 && HandleMessage(core_, connections[i])) continue;
      if ((revents & (POLLHUP | POLLERR | POLLNVAL | POLLIN)) != 0) drop(i);
    }
    if ((fds[1].revents & POLLIN) != 0) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR) {
          spdlog::warn("peer socket: accept failed: {}", std::strerror(errno));
        }
        continue;
      }
      struct ucred cred {};
      socklen_t len = sizeof(cred);
      if (static_cast<int64_t>(connections.size()) >= options_.max_connections) {
        Reply(fd, absl::StrCat("error too many client processes are connected (limit ",
                               options_.max_connections, ")\n"));
        ::close(fd);
        continue;
      }
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        Reply(fd, "error the kernel gave no credentials for this connection\n");
        ::close(fd);
        continue;
      }
      absl::StatusOr<std::string> key =
          core_.AddPeer(PeerCredentials{static_cast<int32_t>(cred.pid), cred.uid, cred.gid});
      if (!key.ok()) {
        Reply(fd, absl::StrCat("error ", key.status().message(), "\n"));
        ::close(fd);
        continue;
      }
      if (!Reply(fd, absl::StrCat("attnd-peer 1 ", *key, "\n"))) {
        core_.RemovePeer(*key);
        ::close(fd);
        continue;
      }
      connections.push_back({fd, *std::move(key)});
    }
  }
  for (size_t i = connections.size(); i-- > 0;) drop(i);
}

}  // namespace attnd::server::front
