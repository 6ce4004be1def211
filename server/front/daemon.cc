#include "server/front/daemon.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/front/fault_injection_backend.h"
#include "server/front/grpc_reflection.h"

#ifndef ATTND_VERSION
#define ATTND_VERSION "0.0.0-dev"
#endif

namespace attnd::server::front {

namespace {

// What to do when an address cannot be used: the flag (and variable) that chooses another.
constexpr char kListenHint[] =
    "choose another address with --listen=unix:///PATH or --listen=HOST:PORT (env ATTND_LISTEN)";
constexpr char kHttpListenHint[] =
    "choose another port with --http_listen=HOST:PORT (port 0: any free port), or disable HTTP "
    "with --http_listen= (env ATTND_HTTP_LISTEN)";
constexpr char kPeerSocketHint[] =
    "choose another path with --peer_socket=PATH, or none with --peer_socket= (env "
    "ATTND_PEER_SOCKET)";

// `status` (its code) as "--FLAG=VALUE: MESSAGE; HINT".
absl::Status ForFlag(const absl::Status& status, absl::string_view flag, absl::string_view value,
                     absl::string_view hint) {
  return absl::Status(status.code(),
                      absl::StrCat("--", flag, "=", value, ": ", status.message(), "; ", hint));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonConfig& config,
                                                      std::unique_ptr<kernels::Backend> backend) {
  std::unique_ptr<Daemon> daemon(new Daemon());
  daemon->drain_timeout_ = config.drain_timeout;

  absl::StatusOr<ListenAddress> listen = ParseListenAddress(config.listen);
  if (!listen.ok()) return listen.status();
  daemon->listen_address_ = *listen;
  if (!listen->is_unix() && config.token.empty()) {
    if (!IsLoopbackListen(config.listen) && !config.allow_unauthenticated_tcp) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen='", config.listen,
          "' is reachable from the network and no token is set: "
          "set --token_file or ATTND_TOKEN (or --allow_unauthenticated_tcp on a trusted network)"));
    }
    spdlog::warn("gRPC on TCP '{}' without a token: every local user can reach every pool",
                 config.listen);
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials({config.tls_cert, config.tls_key, config.tls_client_ca});
  if (!credentials.ok()) return credentials.status();
  daemon->authenticator_ = std::make_unique<TokenAuthenticator>(config.token);

  CoreOptions core_options;
  core_options.max_pool_bytes = config.max_pool_bytes;
  core_options.session_lease = config.session_lease;
  core_options.max_message_bytes = config.max_message_bytes;
  core_options.version = ATTND_VERSION;
  core_options.max_sessions = config.max_sessions;
  core_options.max_pages_per_session = config.max_pages_per_session;
  core_options.max_buffers_per_session = config.max_buffers_per_session;
  core_options.max_plans_per_session = config.max_plans_per_session;
  core_options.max_inflight_per_session = config.max_inflight_per_session;
  core_options.max_session_lease = config.max_session_lease;
  core_options.max_host_bytes = config.max_host_bytes;
  core_options.max_session_host_bytes = config.max_session_host_bytes;
  // Unary sessions are bound to their caller: on a unix socket that is its peer key.
  core_options.unary_sessions_need_identity = true;
  // Registered shared memory holds no descriptor (a sealed memfd is mapped, then closed); what
  // holds descriptors are the peer connections and the descriptors they sent and nobody
  // registered yet: both come out of the RLIMIT_NOFILE budget (fd_limits.h).
  core_options.max_peers = config.max_sessions;
  if (config.max_open_buffer_fds > 0) {
    core_options.max_peers =
        std::clamp<int64_t>(config.max_open_buffer_fds / 2, 1, config.max_sessions);
    core_options.max_pending_fds =
        std::max<int64_t>(1, config.max_open_buffer_fds - core_options.max_peers);
  }
  if (config.testonly_device_fault_after_runs > 0) {
    spdlog::warn(
        "TEST HOOK --testonly_device_fault_after_runs={}: the backend breaks after that "
        "many runs",
        config.testonly_device_fault_after_runs);
    backend =
        InjectDeviceFaultAfterRuns(std::move(backend), config.testonly_device_fault_after_runs);
  }
  absl::StatusOr<std::unique_ptr<Core>> core = Core::Create(core_options, std::move(backend));
  if (!core.ok()) return core.status();
  daemon->core_ = *std::move(core);
  daemon->info_ = daemon->core_->GetServerInfo();

  daemon->runner_ =
      std::make_unique<CommandRunner>(*daemon->core_, daemon->metrics_, config.max_message_bytes);
  daemon->identifier_ = std::make_unique<CallerIdentifier>(*daemon->core_, !listen->is_unix(),
                                                           daemon->authenticator_->enabled());
  daemon->health_ = std::make_unique<BackendHealthMonitor>(daemon->serving_state_, daemon->metrics_,
                                                           config.exit_on_device_error);
  daemon->runner_->set_backend_error_handler(
      [health = daemon->health_.get()](const absl::Status& status) {
        health->CommandFailed(status);
      });
  daemon->service_ = std::make_unique<AttndService>(*daemon->runner_, daemon->metrics_,
                                                    daemon->streams_, *daemon->identifier_);
  if (daemon->authenticator_->enabled()) {
    daemon->service_->set_authenticator(daemon->authenticator_.get());
  }

  if (listen->is_unix()) {
    if (absl::Status dir = CheckUnixSocketDirectory(listen->unix_path); !dir.ok()) {
      return ForFlag(dir, "listen", config.listen,
                     absl::StrCat(dir.code() == absl::StatusCode::kNotFound ? "create it, or " : "",
                                  kListenHint));
    }
    if (absl::Status removed = RemoveStaleUnixSocket(listen->unix_path); !removed.ok()) {
      // UNAVAILABLE: another process listens there.
      return ForFlag(
          removed, "listen", config.listen,
          absl::StrCat(removed.code() == absl::StatusCode::kUnavailable ? "stop it, or " : "",
                       kListenHint));
    }
  }
  // Process-wide switch, read when the server is built.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  if (absl::Status reflection = ConfigureReflection(builder, config.grpc_reflection);
      !reflection.ok()) {
    return reflection;
  }
  builder.AddListeningPort(listen->grpc_uri, *credentials, &daemon->grpc_port_);
  builder.RegisterService(daemon->service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  // Received messages are charged to the host budgets once read (State::WithSession) and refused
  // cleanly there. gRPC's own buffers for messages still arriving get only a backstop: a quota of
  // twice the daemon's host budget plus four largest messages. Near it gRPC shrinks flow-control
  // windows and ends streams, innocent ones too (tried as the bound itself, it ended innocent
  // clients' streams under pressure), which is still better than running out of memory.
  grpc::ResourceQuota transport_quota("attnd-transport");
  transport_quota.Resize(static_cast<size_t>(2 * daemon->core_->Stats().max_host_bytes +
                                             4 * config.max_message_bytes));
  builder.SetResourceQuota(transport_quota);
  // gRPC sets SO_REUSEPORT on TCP listeners by default, which would let a second daemon bind
  // the same port and take half the connections; a taken port must fail the start instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  {
    // The socket is born with --socket_mode: bind creates it with 0777 & ~umask, and the chmod
    // below alone left it wider for a moment (0777 under umask 000). BuildAndStart binds.
    std::optional<ScopedUmaskForMode> socket_umask;
    if (listen->is_unix()) socket_umask.emplace(config.socket_mode);
    daemon->server_ = builder.BuildAndStart();
  }
  if (daemon->server_ == nullptr || (!listen->is_unix() && daemon->grpc_port_ == 0)) {
    // gRPC says why only in its own log: for TCP a test bind finds the reason.
    std::string problem;
    if (!listen->is_unix()) {
      if (absl::StatusOr<HostPort> address = ParseHostPort(config.listen); address.ok()) {
        problem = TcpBindProblem(*address);
      }
    }
    return ForFlag(
        absl::UnavailableError(absl::StrCat(
            "gRPC cannot listen: ",
            problem.empty() ? "the server did not start (see gRPC's log above)" : problem)),
        "listen", config.listen, kListenHint);
  }
  if (listen->is_unix()) {
    daemon->grpc_port_ = 0;
    if (absl::Status chmod = SetSocketPermissions(listen->unix_path, config.socket_mode);
        !chmod.ok()) {
      return chmod;
    }
  }

  const std::string peer_path =
      config.peer_socket == "auto" ? DefaultPeerSocketPath(listen->unix_path) : config.peer_socket;
  if (!peer_path.empty()) {
    absl::StatusOr<std::unique_ptr<PeerSocketServer>> peers = PeerSocketServer::Start(
        {.path = peer_path, .mode = config.socket_mode, .max_connections = config.max_sessions},
        *daemon->core_);
    if (!peers.ok())
      return ForFlag(peers.status(), "peer_socket", config.peer_socket, kPeerSocketHint);
    daemon->peer_socket_ = *std::move(peers);
  }
  daemon->core_->SetPeerSocketPath(peer_path);
  daemon->info_ = daemon->core_->GetServerInfo();

  daemon->serving_state_.AttachHealthService(daemon->server_->GetHealthCheckService());
  daemon->health_->Polled(daemon->core_->Health());

  if (!config.http_listen.empty()) {
    Daemon* self = daemon.get();
    HttpHandlers handlers;
    handlers.readiness = [self] { return self->serving_state_.readiness(); };
    handlers.metrics_text = [self] {
      MetricsSnapshot snapshot;
      snapshot.stats = self->core_->Stats();
      snapshot.backend_healthy = self->serving_state_.backend_healthy();
      snapshot.version = self->info_.version();
      snapshot.backend = self->info_.backend();
      snapshot.device = self->info_.device();
      return self->metrics_.Render(snapshot);
    };
    absl::StatusOr<std::unique_ptr<HttpServer>> http =
        HttpServer::Start(HttpServerOptions{config.http_listen}, std::move(handlers));
    if (!http.ok())
      return ForFlag(http.status(), "http_listen", config.http_listen, kHttpListenHint);
    daemon->http_ = *std::move(http);
  }

  daemon->maintenance_ =
      std::make_unique<MaintenanceLoop>(*daemon->core_, *daemon->health_, *daemon->runner_);

  spdlog::info(
      "attnd {} serving: backend={} device='{}' pool memory={} bytes, gRPC on {}{}{}, HTTP on {}, "
      "peer socket {}",
      daemon->info_.version(), daemon->info_.backend(), daemon->info_.device(),
      daemon->info_.memory_total_bytes(), config.listen,
      listen->is_unix() ? absl::StrFormat(" (mode %04o)", config.socket_mode)
                        : absl::StrCat(" (port ", daemon->grpc_port_, ")"),
      absl::StrCat(
          config.tls_cert.empty() ? "" : (config.tls_client_ca.empty() ? ", TLS" : ", mutual TLS"),
          config.token.empty() ? "" : ", bearer token required"),
      daemon->http_ != nullptr
          ? absl::StrCat(config.http_listen, " (port ", daemon->http_->port(), ")")
          : std::string("(disabled)"),
      peer_path.empty() ? std::string("(none)") : peer_path);
  return daemon;
}

bool Daemon::Shutdown(absl::Duration drain) {
  std::lock_guard<std::mutex> lock(shutdown_mutex_);
  if (shut_down_) return released_;
  shut_down_ = true;
  spdlog::info("shutting down: NOT_SERVING, draining in-flight calls for up to {}",
               absl::FormatDuration(drain));
  serving_state_.BeginShutdown();
  if (maintenance_ != nullptr) maintenance_->Stop();
  // Engines keep their streams open between steps, and health watchers forever: waiting for
  // them would always cost the whole deadline. So: end the streams (a busy one after its
  // command), wait for the commands in flight, then stop the server with a short grace for
  // answers still being written.
  const absl::Time deadline = absl::Now() + drain;
  streams_.CloseAll();
  if (runner_ != nullptr && !runner_->in_flight().WaitUntilIdle(deadline)) {
    spdlog::warn("drain deadline passed with {} command(s) still running; cancelling them",
                 runner_->in_flight().count());
  }
  released_ = StopServer(deadline);
  if (released_) {
    // Only now: stopping the peer socket drops the peers and with them their unary sessions,
    // which calls during the drain still used.
    if (peer_socket_ != nullptr) peer_socket_->Stop();
    if (core_ != nullptr) core_->CloseAll();
  } else {
    spdlog::warn("{} command(s) still running after the drain; their sessions stay open",
                 runner_ != nullptr ? runner_->in_flight().count() : 0);
  }
  if (http_ != nullptr) http_->Stop();
  if (listen_address_.is_unix()) unlink(listen_address_.unix_path.c_str());
  spdlog::info("shutdown complete");
  return released_;
}

bool Daemon::StopServer(absl::Time deadline) {
  if (server_ == nullptr) return true;
  // After the grace gRPC cancels every call left; handler threads return as soon as their
  // command does, which a command past the deadline does not (it cannot be interrupted).
  const absl::Time grace = std::min(deadline, absl::Now() + absl::Milliseconds(200));
  constexpr absl::Duration kHandlersReturn = absl::Milliseconds(300);
  auto stopped = std::make_shared<std::promise<void>>();
  std::future<void> done = stopped->get_future();
  server_stopper_ = std::thread([server = server_.get(), grace, stopped] {
    server->Shutdown(absl::ToChronoTime(grace));
    server->Wait();
    stopped->set_value();
  });
  const absl::Duration wait = std::max(deadline, grace) + kHandlersReturn - absl::Now();
  if (done.wait_for(absl::ToChronoNanoseconds(std::max(wait, absl::ZeroDuration()))) !=
      std::future_status::ready) {
    return false;
  }
  server_stopper_.join();
  return true;
}

Daemon::~Daemon() {
  // A Daemon that failed half-way through Start has no server; only a started one drains.
  if (server_ != nullptr) Shutdown(drain_timeout_);
  if (server_stopper_.joinable()) {
    server_stopper_.join();  // the commands that outlived the drain have returned
    if (peer_socket_ != nullptr) peer_socket_->Stop();
    if (core_ != nullptr) core_->CloseAll();
  }
}

}  // namespace attnd::server::front
