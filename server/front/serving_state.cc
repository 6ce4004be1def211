#include "server/front/serving_state.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace attnd::server::front {

void ServingState::AttachHealthService(grpc::HealthCheckServiceInterface* health) {
  std::lock_guard<std::mutex> lock(mutex_);
  health_ = health;
  published_ = false;
  PublishLocked();
}

bool ServingState::UpdateBackendHealth(const absl::Status& backend_status) {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool was_unhealthy = checked_ && !backend_status_.ok();
  if (!checked_ || backend_status.ok() != backend_status_.ok()) {
    if (backend_status.ok()) {
      spdlog::info("backend healthy");
    } else {
      spdlog::error("backend unhealthy, NOT_SERVING: {}", backend_status.ToString());
    }
  }
  checked_ = true;
  backend_status_ = backend_status;
  PublishLocked();
  return !backend_status.ok() && !was_unhealthy;
}

void ServingState::BeginShutdown() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (shutting_down_) return;
  shutting_down_ = true;
  if (health_ != nullptr) {
    health_->SetServingStatus(false);
    health_->SetServingStatus("", false);
    health_->SetServingStatus(kAttndServiceName, false);
    health_->Shutdown();  // freezes every status at NOT_SERVING
  }
  last_serving_ = false;
  published_ = true;
}

void ServingState::PublishLocked() {
  if (shutting_down_) return;
  const bool serving = backend_status_.ok();
  if (health_ == nullptr || (published_ && serving == last_serving_)) return;
  health_->SetServingStatus("", serving);
  health_->SetServingStatus(kAttndServiceName, serving);
  last_serving_ = serving;
  published_ = true;
}

Readiness ServingState::readiness() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (shutting_down_) return {false, "shutting down"};
  if (!backend_status_.ok()) {
    return {false, absl::StrCat("backend not healthy: ", backend_status_.ToString())};
  }
  return {true, ""};
}

bool ServingState::backend_healthy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return backend_status_.ok();
}

}  // namespace attnd::server::front
