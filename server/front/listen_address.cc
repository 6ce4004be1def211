#include "server/front/listen_address.h"

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
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot remove stale unix socket '", path, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
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
