// attnd: the attention-offload daemon. Flags (flags.h) -> logging -> backend -> Daemon; then the
// main thread waits for SIGTERM/SIGINT with sigwait (no work in a signal handler), shuts the
// daemon down gracefully and exits within the drain (process_exit.h).
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>

#include "server/front/backend_select.h"
#include "server/front/daemon.h"
#include "server/front/flags.h"
#include "server/front/logging.h"
#include "server/front/process_exit.h"

int main(int argc, char** argv) {
  using namespace attnd::server::front;

  // Block the stop signals before any thread exists, so every thread inherits the mask and only
  // sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A client that disconnects mid-write must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
  HoldGrpcLibrary();

  absl::StatusOr<DaemonConfig> config = ParseDaemonFlags(argc, argv);
  if (!config.ok()) {
    std::fprintf(stderr, "attnd: %s\n", config.status().ToString().c_str());
    return kExitUsage;
  }
  if (absl::Status logging = SetUpLogging({config->log_level, config->log_json}); !logging.ok()) {
    std::fprintf(stderr, "attnd: %s\n", logging.ToString().c_str());
    return kExitUsage;
  }

  auto backend = CreateBackend({config->backend, config->device, config->threads});
  if (!backend.ok()) {
    spdlog::critical("cannot create the {} backend: {}", config->backend,
                     backend.status().ToString());
    return kExitFailure;
  }
  absl::StatusOr<std::unique_ptr<Daemon>> daemon = Daemon::Start(*config, *std::move(backend));
  if (!daemon.ok()) {
    spdlog::critical("cannot start: {}", daemon.status().ToString());
    return kExitFailure;
  }

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) != 0) {
  }
  spdlog::info("received {}", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  ShutdownAndExit(*std::move(daemon), config->drain_timeout, kExitOk);
}
