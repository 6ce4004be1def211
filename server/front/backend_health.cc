#include "server/front/backend_health.h"

#include <spdlog/spdlog.h>

namespace attnd::server::front {

void BackendHealthMonitor::Report(const absl::Status& health, bool command_failed) {
  const bool turned_unhealthy = state_.UpdateBackendHealth(health);
  if (health.ok()) return;
  // Each failed command the backend blames on the device counts, and so does a poll that finds
  // the device broken before any command did.
  if (command_failed || turned_unhealthy) metrics_.CountDeviceError();
  if (!exit_on_device_error_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (fatal_error_.has_value()) return;
  fatal_error_ = health;
  spdlog::critical(
      "sticky device error: {}; NOT_SERVING, exiting with code 3 after a short clean-up "
      "(--exit_on_device_error)",
      health.ToString());
}

std::optional<absl::Status> BackendHealthMonitor::fatal_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fatal_error_;
}

}  // namespace attnd::server::front
