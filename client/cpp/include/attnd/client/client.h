// attnd C++ client: a connection to one daemon.
//
//   auto client = attnd::client::Client::Create({.target = "unix:///tmp/attnd.sock"});
//   auto info = (*client)->GetServerInfo();
//   auto session = (*client)->OpenSession("engine-0");        // Session stream (session.h)
//   auto pool = (*session)->CreatePool({.name = "llama", ...});
//
// A Client owns one gRPC channel. It is thread-safe: many threads may call it and open sessions
// on it concurrently. Sessions keep the channel alive on their own, so they may outlive the
// Client.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/client/peer_link.h"
#include "attnd/client/session.h"
#include "attnd/client/unary_session.h"
#include "attnd/v1/attnd.pb.h"
#include "grpcpp/channel.h"

namespace attnd::client {

struct ClientOptions {
  // gRPC target: "unix:///path/to/sock", "unix:relative/path", or "host:port".
  std::string target = "unix:///tmp/attnd.sock";
  // Deadline of unary calls (and the per-command timeout of Session streams).
  absl::Duration default_deadline = absl::Seconds(60);
  // Largest message the client sends or accepts, bytes. Keep it >= the daemon's
  // --max_message_bytes (ServerInfo.max_message_bytes) for inline tensors of that size.
  int64_t max_message_bytes = 256ll << 20;
  // Name shown in the daemon's logs for sessions opened through this client.
  std::string client_name = "attnd-cpp-client";
  // Bearer token sent with every call as "authorization: Bearer <token>" (the daemon's
  // --token_file / ATTND_TOKEN); empty = none.
  std::string token;
  // TLS (the daemon's --tls_cert): connect over TLS, trusting tls_root_certs_pem (PEM; empty =
  // the system roots). With tls_client_cert_pem + tls_client_key_pem, present that certificate
  // (mutual TLS, the daemon's --tls_client_ca). tls_server_name overrides the name checked
  // against the server's certificate (default: the target's host).
  bool tls = false;
  std::string tls_root_certs_pem;
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
  std::string tls_server_name;
  // The daemon's peer socket (attnd.proto "Identity"; peer_link.h): "" = the unix target's path
  // + ".peer" (none for TCP targets), "none" = do not use one, else a path. Unary sessions on a
  // unix socket and shared-memory buffers need it.
  std::string peer_socket;
};

// grpc.health.v1 serving states.
enum class HealthStatus {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,
};
const char* HealthStatusName(HealthStatus status);

class Client {
 public:
  // Creates the channel (connecting lazily). INVALID_ARGUMENT for an empty target or a
  // non-positive max_message_bytes.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);

  // Waits until the channel is connected (the daemon is listening) or `timeout` passes
  // (DEADLINE_EXCEEDED).
  absl::Status WaitForConnected(absl::Duration timeout);

  absl::StatusOr<v1::ServerInfo> GetServerInfo();

  // grpc.health.v1.Health/Check for `service` ("" = the whole server).
  absl::StatusOr<HealthStatus> CheckHealth(const std::string& service = "");

  // Opens a session on a new Session stream (client_name "" = options' client_name).
  absl::StatusOr<std::unique_ptr<Session>> OpenSession(const std::string& client_name = "");
  // Opens a unary (leased) session; lease_ms 0 = the daemon's default.
  absl::StatusOr<std::unique_ptr<UnarySession>> OpenUnarySession(
      const std::string& client_name = "", uint32_t lease_ms = 0);

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // The peer connection (null without a peer socket).
  const std::shared_ptr<PeerLink>& peer_link() const { return peer_link_; }

 private:
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel,
         std::shared_ptr<PeerLink> peer_link);
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<PeerLink> peer_link_;
};

}  // namespace attnd::client
