// Whether the daemon serves, in one place: the grpc.health.v1 statuses (overall "" and
// "attnd.v1.Attnd", through gRPC's default health check service) and HTTP /readyz are both derived
// from it. Serving = started, not shutting down, and the backend's last health check was OK.
#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <mutex>
#include <string>

#include "absl/status/status.h"

namespace attnd::server::front {

inline constexpr char kAttndServiceName[] = "attnd.v1.Attnd";

struct Readiness {
  bool ready = false;
  std::string reason;  // why not ready; empty when ready
};

class ServingState {
 public:
  // Publishes to `health` from now on (may be null: HTTP-only, tests). Not owned.
  void AttachHealthService(grpc::HealthCheckServiceInterface* health);
  // The latest Core::Health() result. True when it turned the backend from healthy (or not yet
  // checked) to unhealthy.
  bool UpdateBackendHealth(const absl::Status& backend_status);
  // Marks NOT_SERVING for good (health->Shutdown() also freezes gRPC's statuses).
  void BeginShutdown();

  Readiness readiness() const;
  bool backend_healthy() const;

 private:
  void PublishLocked();

  mutable std::mutex mutex_;
  grpc::HealthCheckServiceInterface* health_ = nullptr;
  absl::Status backend_status_ = absl::UnavailableError("backend health not checked yet");
  bool checked_ = false;             // backend_status_ is a real check's result
  bool shutting_down_ = false;
  bool published_ = false;           // whether last_serving_ has been sent to health_
  bool last_serving_ = false;
};

}  // namespace attnd::server::front
