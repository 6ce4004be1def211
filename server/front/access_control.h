// Access control of the gRPC listener beyond the unix socket's file permissions: an optional
// bearer token required on every attnd.v1 call, and optional TLS (server certificate, optional
// client CA for mutual TLS).
//
// The token travels in the call metadata as "authorization: Bearer <token>". It is compared in
// constant time (the time taken does not depend on how many leading bytes match). grpc.health.v1
// stays open without a token, so kubelet probes and load balancers can check liveness; it reveals
// nothing but SERVING / NOT_SERVING.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/ids.h"

namespace attnd::server::front {

inline constexpr char kAuthorizationMetadataKey[] = "authorization";

// True iff a == b in time that depends only on the lengths (server/core/ids.h).
using ::attnd::server::ConstantTimeEquals;

// The daemon's token: the contents of `token_file` (trailing whitespace and newlines dropped)
// when it is set, else the value of the environment variable ATTND_TOKEN (via `getenv`), else
// "" (no token required). INVALID_ARGUMENT for an unreadable or empty file, or a token shorter
// than 16 bytes (a guessable token protects nothing).
absl::StatusOr<std::string> LoadToken(
    const std::string& token_file,
    const std::function<const char*(const char*)>& getenv = nullptr);

// Checks the bearer token of every call when a token is configured.
class TokenAuthenticator {
 public:
  // An empty token lets every call through.
  explicit TokenAuthenticator(std::string token) : token_(std::move(token)) {}

  bool enabled() const { return !token_.empty(); }

  // OK when no token is configured or the metadata carries "authorization: Bearer <token>";
  // UNAUTHENTICATED otherwise (the message says what is missing, never the expected token).
  absl::Status Check(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;

 private:
  const std::string token_;
};

struct TlsFiles {
  std::string cert_file;       // PEM server certificate chain; empty = no TLS
  std::string key_file;        // PEM private key of cert_file
  std::string client_ca_file;  // PEM CA bundle; set = clients must present a cert it signed
};

// InsecureServerCredentials when no TLS is configured, else SslServerCredentials over the files
// (mutual TLS with client_ca_file). INVALID_ARGUMENT when only one of cert/key is set, or a file
// cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// True for a TCP HOST:PORT whose host is a loopback address (127.x.y.z, localhost, [::1]).
bool IsLoopbackListen(std::string_view address);

// Reads a whole file; INVALID_ARGUMENT naming `what` and the path when it cannot be read.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, std::string_view what);

}  // namespace attnd::server::front
