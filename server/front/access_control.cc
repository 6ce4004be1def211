#include "server/front/access_control.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/front/listen_address.h"
#include "spdlog/spdlog.h"

namespace attnd::server::front {
namespace {

constexpr size_t kMinTokenBytes = 16;
constexpr char kBearerPrefix[] = "Bearer ";

}  // namespace

bool IsLoopbackListen(std::string_view address) {
  absl::StatusOr<HostPort> host_port = ParseHostPort(address);
  if (!host_port.ok()) return false;
  const std::string& host = host_port->host;
  return host == "localhost" || host == "[::1]" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), "='", path, "' cannot be read: ", std::strerror(errno)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::string> LoadToken(const std::string& token_file,
                                      const std::function<const char*(const char*)>& getenv) {
  std::string token;
  std::string source;
  if (!token_file.empty()) {
    absl::StatusOr<std::string> text = ReadSmallFile(token_file, "--token_file");
    if (!text.ok()) return text.status();
    token = std::string(absl::StripTrailingAsciiWhitespace(*text));
    source = absl::StrCat("--token_file='", token_file, "'");
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(source, " is empty"));
    struct stat st {};
    if (stat(token_file.c_str(), &st) == 0 && (st.st_mode & 0077) != 0) {
      spdlog::warn("{} is readable by group or others (mode {:o}); chmod 600 it", source,
                   st.st_mode & 0777);
    }
  } else {
    const char* value = getenv ? getenv("ATTND_TOKEN") : std::getenv("ATTND_TOKEN");
    if (value == nullptr || *value == '\0') return std::string();
    token = std::string(absl::StripTrailingAsciiWhitespace(value));
    source = "ATTND_TOKEN";
  }
  if (token.size() < kMinTokenBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the token from ", source, " has ", token.size(),
                                                   " bytes; use at least ", kMinTokenBytes,
                                                   " random bytes"));
  }
  for (const char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("the token from ", source,
                       " must be printable ASCII without spaces (it is sent as "
                       "gRPC metadata)"));
    }
  }
  return token;
}

absl::Status TokenAuthenticator::Check(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  if (token_.empty()) return absl::OkStatus();
  const auto it = metadata.find(kAuthorizationMetadataKey);
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "missing 'authorization: Bearer <token>' metadata; this daemon requires a token");
  }
  const std::string_view value(it->second.data(), it->second.size());
  if (!absl::StartsWith(absl::string_view(value.data(), value.size()), kBearerPrefix)) {
    return absl::UnauthenticatedError("the authorization metadata is not 'Bearer <token>'");
  }
  const std::string_view presented = value.substr(sizeof(kBearerPrefix) - 1);
  if (!ConstantTimeEquals(token_, absl::string_view(presented.data(), presented.size()))) {
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (files.cert_file.empty() && files.key_file.empty()) {
    if (!files.client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key must be given together");
  }
  absl::StatusOr<std::string> cert = ReadSmallFile(files.cert_file, "--tls_cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadSmallFile(files.key_file, "--tls_key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadSmallFile(files.client_ca_file, "--tls_client_ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace attnd::server::front
