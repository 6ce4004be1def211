// The assembled daemon: Core + gRPC server (attnd.v1.Attnd, grpc.health.v1, reflection) + HTTP
// endpoints + the maintenance thread, started from a DaemonConfig and shut down gracefully.
// main.cc wires it to flags and signals; the in-process tests start it directly.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/kernels/backend.h"
#include "server/core/core.h"
#include "server/front/access_control.h"
#include "server/front/attnd_service.h"
#include "server/front/caller_identity.h"
#include "server/front/peer_socket.h"
#include "server/front/command_runner.h"
#include "server/front/flags.h"
#include "server/front/http_server.h"
#include "server/front/listen_address.h"
#include "server/front/maintenance_loop.h"
#include "server/front/metrics.h"
#include "server/front/serving_state.h"
#include "server/front/stream_registry.h"

namespace attnd::server::front {

class Daemon {
 public:
  // Creates the Core over `backend`, binds gRPC (removing a stale unix socket first and applying
  // --socket_mode after) and HTTP, marks SERVING. Errors: the address cannot be bound, the core
  // cannot be created.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonConfig& config,
                                                       std::unique_ptr<kernels::Backend> backend);
  ~Daemon();  // Shutdown() if not done
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Graceful stop: NOT_SERVING; Session streams end (idle ones at once, busy ones after their
  // current command; their sessions close); stop accepting and let in-flight unary calls finish
  // until `drain` runs out (then they are cancelled); Core::CloseAll; stop HTTP; remove the
  // socket file. Idempotent.
  void Shutdown(absl::Duration drain = absl::Seconds(10));

  Core& core() { return *core_; }
  Metrics& metrics() { return metrics_; }
  ServingState& serving_state() { return serving_state_; }
  const ListenAddress& listen_address() const { return listen_address_; }
  int http_port() const { return http_ != nullptr ? http_->port() : 0; }
  int grpc_port() const { return grpc_port_; }  // TCP only; 0 for unix sockets
  // The peer socket's path; empty when there is none (TCP, or --peer_socket='').
  std::string peer_socket_path() const {
    return peer_socket_ != nullptr ? peer_socket_->path() : std::string();
  }
  // Commands executing right now (unary and stream).
  int64_t commands_in_flight() const { return runner_ != nullptr ? runner_->in_flight().count() : 0; }

 private:
  Daemon() = default;

  std::unique_ptr<Core> core_;
  Metrics metrics_;
  ServingState serving_state_;
  StreamRegistry streams_;
  std::unique_ptr<CommandRunner> runner_;
  std::unique_ptr<TokenAuthenticator> authenticator_;
  std::unique_ptr<CallerIdentifier> identifier_;
  std::unique_ptr<PeerSocketServer> peer_socket_;
  std::unique_ptr<AttndService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<MaintenanceLoop> maintenance_;
  ListenAddress listen_address_;
  int grpc_port_ = 0;
  v1::ServerInfo info_;
  std::mutex shutdown_mutex_;
  bool shut_down_ = false;
};

}  // namespace attnd::server::front
