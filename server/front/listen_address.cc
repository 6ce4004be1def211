#include "server/front/listen_address.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attnd::server::front {

absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view address_in) {
  const absl::string_view address(address_in.data(), address_in.size());
  if (address.empty()) return absl::InvalidArgumentError("listen address is empty");
  if (absl::StartsWith(address, "unix:")) {
    absl::string_view path = address.substr(5);
    // "unix:///abs" (URI form with an empty authority) and "unix:/abs" or "unix:rel".
    if (absl::StartsWith(path, "//")) path.remove_prefix(2);
    if (path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("listen address '", address, "' names no socket path"));
    }
    if (path.size() >= sizeof(sockaddr_un::sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("unix socket path '", path, "' is ",
                                                     path.size(), " bytes; at most ",
                                                     sizeof(sockaddr_un::sun_path) - 1, " fit"));
    }
    return ListenAddress{std::string(address), std::string(path)};
  }
  absl::StatusOr<HostPort> host_port = ParseHostPort(address_in);
  if (!host_port.ok()) return host_port.status();
  return ListenAddress{std::string(address), ""};
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view address_in) {
  const absl::string_view address(address_in.data(), address_in.size());
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "' is neither unix:PATH nor HOST:PORT (no ':PORT')"));
  }
  absl::string_view host = address.substr(0, colon);
  const absl::string_view port_text = address.substr(colon + 1);
  int port = -1;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "' has port '", port_text, "', not 0..65535"));
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  return HostPort{std::string(host), port};
}

namespace {

// True when a connect to the socket file at `path` succeeds (or would, but the backlog is full):
// a process listens there. A socket file left by a process that is gone refuses the connection.
bool UnixSocketIsListenedOn(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  const bool listened =
      connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 || errno == EAGAIN;
  close(fd);
  return listened;
}

}  // namespace

absl::Status RemoveStaleUnixSocket(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot stat unix socket path '", path, "': ", std::strerror(errno)));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "unix socket path '", path, "' exists and is not a socket; refusing to remove it"));
  }
  if (UnixSocketIsListenedOn(path)) {
    return absl::UnavailableError(absl::StrCat(
        "unix socket '", path, "' is in use: a process listens on it (another attnd?)"));
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot remove stale unix socket '", path, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status CheckUnixSocketDirectory(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? std::string(".") : (slash == 0 ? "/" : path.substr(0, slash));
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("the directory '", dir, "' of unix socket '", path, "' does not exist"));
    }
    return absl::FailedPreconditionError(absl::StrCat("cannot stat the directory '", dir,
                                                      "' of unix socket '", path,
                                                      "': ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", dir, "' (of unix socket '", path, "') is not a directory"));
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot create unix socket '", path,
                                                      "': no write access to its directory '", dir,
                                                      "' (", std::strerror(errno), ")"));
  }
  return absl::OkStatus();
}

std::string TcpBindProblem(const HostPort& address) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(address.port);
  if (const int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::StrCat("host '", address.host, "' does not resolve (", gai_strerror(rc), ")");
  }
  int error = 0;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = errno;
      continue;
    }
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    const bool bound = bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    if (!bound) error = errno;
    close(fd);
    if (bound) {
      error = 0;
      break;
    }
  }
  freeaddrinfo(found);
  switch (error) {
    case 0: return "";
    case EADDRINUSE:
      return absl::StrCat("port ", address.port, " of ", address.host,
                          " is in use (another attnd?)");
    case EADDRNOTAVAIL: return absl::StrCat(address.host, " is not an address of this machine");
    case EACCES:
      return absl::StrCat("no permission to bind port ", address.port,
                          " (ports below 1024 need privileges)");
    default: return absl::StrCat("bind: ", std::strerror(error));
  }
}

ScopedUmaskForMode::ScopedUmaskForMode(unsigned mode)
    : previous_(::umask(static_cast<mode_t>(~mode & 0777))) {}

ScopedUmaskForMode::~ScopedUmaskForMode() { ::umask(static_cast<mode_t>(previous_)); }

absl::Status SetSocketPermissions(const std::string& path, unsigned mode) {
  if (chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("chmod %04o on '%s' failed: %s", mode, path, std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace attnd::server::front
