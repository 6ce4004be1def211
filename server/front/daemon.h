// The assembled daemon: Core + gRPC server (attnd.v1.Attnd, grpc.health.v1, reflection with
// --grpc_reflection) + HTTP endpoints + the maintenance thread, started from a DaemonConfig and
// shut down gracefully.
// main.cc wires it to flags and signals; the in-process tests start it directly.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/kernels/backend.h"
#include "server/core/core.h"
#include "server/front/access_control.h"
#include "server/front/attnd_service.h"
#include "server/front/caller_identity.h"
#include "server/front/peer_socket.h"
#include "server/front/backend_health.h"
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
  // Creates the Core over `backend`, binds gRPC (removing a stale unix socket first and creating
  // the new one with --socket_mode) and HTTP, marks SERVING. Errors: the address cannot be bound,
  // the core cannot be created.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonConfig& config,
                                                       std::unique_ptr<kernels::Backend> backend);
  // Shutdown(config.drain_timeout) if not done; then waits for commands that outlived it.
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Graceful stop, done within `drain` plus a few hundred milliseconds: NOT_SERVING; Session
  // streams end (idle ones at once, busy ones after their current command; their sessions
  // close); stop accepting and let commands in flight finish until `drain` runs out (then their
  // calls are cancelled); Core::CloseAll; stop HTTP; remove the socket file. Idempotent.
  // Returns false when a command was still running after the drain: a running command cannot be
  // interrupted and grpc::Server's shutdown waits for its thread, so the server is left stopping
  // on a thread of its own and the sessions open (their memory is in use); the destructor waits
  // for that command and then releases them. A process on its way out exits instead (main.cc).
  bool Shutdown(absl::Duration drain = absl::Seconds(10));

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
  // The sticky device error after which the process should exit (--exit_on_device_error), once
  // one was seen.
  std::optional<absl::Status> device_error() const { return health_->fatal_error(); }
  // Commands executing right now (unary and stream).
  int64_t commands_in_flight() const { return runner_ != nullptr ? runner_->in_flight().count() : 0; }

 private:
  Daemon() = default;
  // grpc::Server::Shutdown + Wait on server_stopper_; true when they returned by `deadline`
  // (plus a short margin for cancelled handlers to return).
  bool StopServer(absl::Time deadline);

  std::unique_ptr<Core> core_;
  Metrics metrics_;
  ServingState serving_state_;
  StreamRegistry streams_;
  std::unique_ptr<CommandRunner> runner_;
  std::unique_ptr<BackendHealthMonitor> health_;
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
  absl::Duration drain_timeout_ = absl::Seconds(10);
  std::thread server_stopper_;  // joinable while the server may still be stopping
  std::mutex shutdown_mutex_;
  bool shut_down_ = false;
  bool released_ = false;  // what Shutdown returned
};

}  // namespace attnd::server::front
