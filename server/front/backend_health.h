// What the daemon does about the backend's health. A sticky device error must be seen at once,
// not at the next periodic check: the CommandRunner asks Core::Health() right after every failed
// command, the maintenance loop every second, and both report here. An unhealthy backend makes
// the daemon NOT_SERVING at once (grpc.health.v1 Check and Watch, /readyz 503 with the error),
// counts attnd_device_errors_total, and with --exit_on_device_error (the default) asks the
// process to end with exit code 3 so that Kubernetes or systemd restart it (main.cc polls
// fatal_error()).
#pragma once

#include <mutex>
#include <optional>

#include "absl/status/status.h"
#include "server/front/metrics.h"
#include "server/front/serving_state.h"

namespace attnd::server::front {

class BackendHealthMonitor {
 public:
  // `state` and `metrics` must outlive the monitor.
  BackendHealthMonitor(ServingState& state, Metrics& metrics, bool exit_on_device_error)
      : state_(state), metrics_(metrics), exit_on_device_error_(exit_on_device_error) {}

  // A command failed and Core::Health() then returned `health`.
  void CommandFailed(const absl::Status& health) { Report(health, /*command_failed=*/true); }
  // The result of a periodic Core::Health() poll.
  void Polled(const absl::Status& health) { Report(health, /*command_failed=*/false); }

  // The device error that should end the process (only with exit_on_device_error), once seen.
  std::optional<absl::Status> fatal_error() const;

 private:
  void Report(const absl::Status& health, bool command_failed);

  ServingState& state_;
  Metrics& metrics_;
  const bool exit_on_device_error_;
  mutable std::mutex mutex_;
  std::optional<absl::Status> fatal_error_;
};

}  // namespace attnd::server::front
