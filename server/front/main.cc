// attnd: the attention-offload daemon. --help (flags.h HelpRequested) -> flags -> logging ->
// backend -> Daemon; then the main thread waits for SIGTERM/SIGINT with sigtimedwait (no work in
// a signal handler) or a sticky device error (--exit_on_device_error), shuts the daemon down
// gracefully and exits within the drain (process_exit.h): code 0 after a signal, 3 after a device
// error.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <optional>
#include <string>

#include "server/front/backend_select.h"
#include "server/front/daemon.h"
#include "server/front/fd_limits.h"
#include "server/front/flags.h"
#include "server/front/logging.h"
#include "server/front/process_exit.h"

namespace {

using attnd::server::front::CreateBackend;
using attnd::server::front::Daemon;
using attnd::server::front::DaemonConfig;
using attnd::server::front::HelpRequested;
using attnd::server::front::HoldGrpcLibrary;
using attnd::server::front::kExitDeviceError;
using attnd::server::front::kExitFailure;
using attnd::server::front::kExitOk;
using attnd::server::front::kExitUsage;
using attnd::server::front::ParseDaemonFlags;
using attnd::server::front::RaiseFdLimit;
using attnd::server::front::SetUpLogging;
using attnd::server::front::ShutdownAndExit;

// A device error ends the process after this much drain at most: commands on a broken device
// fail fast, and the point is to be restarted.
constexpr absl::Duration kDeviceErrorDrain = absl::Seconds(1);

// Blocks until SIGTERM/SIGINT (then kExitOk) or a sticky device error the daemon wants to exit
// for (then kExitDeviceError); the error is checked every 50 ms.
int WaitForStop(const sigset_t& stop_signals, const Daemon& daemon) {
  const timespec tick{0, 50 * 1000 * 1000};
  while (true) {
    const int signal_number = sigtimedwait(&stop_signals, nullptr, &tick);
    if (signal_number == SIGTERM || signal_number == SIGINT) {
      spdlog::info("received {}", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
      return kExitOk;
    }
    if (daemon.device_error().has_value()) return kExitDeviceError;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // --help and friends: the usage on stdout, exit 0, before anything starts.
  if (const std::optional<std::string> usage = HelpRequested(argc, argv)) {
    std::fputs(usage->c_str(), stdout);
    return kExitOk;
  }
  // Block the stop signals before any thread exists, so every thread inherits the mask and only
  // sigtimedwait below receives them.
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

  // Before anything opens descriptors: every registered buffer and connection needs one.
  config->max_open_buffer_fds = RaiseFdLimit().max_open_buffer_fds;

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

  const int exit_code = WaitForStop(stop_signals, **daemon);
  ShutdownAndExit(*std::move(daemon),
                  exit_code == kExitOk ? config->drain_timeout
                                       : std::min(config->drain_timeout, kDeviceErrorDrain),
                  exit_code);
}
