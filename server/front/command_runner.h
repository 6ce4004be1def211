// Runs commands against the Core for both front paths (unary handlers and the Session stream):
// times each call, records attnd_requests_total / attnd_request_duration_seconds, and logs
// failures at warn with the method and status (the message cut like the client's, at most 5
// lines per second per session and method: log_rate_limiter.h). Holds no business logic: every
// decision about a request is the Core's.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/core.h"
#include "server/front/command_table.h"
#include "server/front/inflight_calls.h"
#include "server/front/log_rate_limiter.h"
#include "server/front/metrics.h"

namespace attnd::server::front {

class CommandRunner {
 public:
  // `core` and `metrics` must outlive the runner. `max_response_bytes` (0 = no limit) is the
  // gRPC send limit (--max_message_bytes): a larger answer becomes RESOURCE_EXHAUSTED here, as
  // the command's own status, instead of failing the write (which on the Session stream would
  // end the stream and release the session).
  CommandRunner(Core& core, Metrics& metrics, uint64_t max_response_bytes = 0);

  // One session command (see command_table.h).
  template <typename Request, typename Response>
  absl::StatusOr<Response> Execute(const SessionCommand<Request, Response>& command,
                                   SessionRef session, const Request& request) {
    InFlightCalls::Scope in_flight(in_flight_);
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<Response> result = (core_.*command.call)(session, request);
    if (result.ok()) {
      if (absl::Status size = CheckResponseSize(command.id, result->ByteSizeLong()); !size.ok()) {
        result = size;
      }
    }
    Finish(command.id, session.id, result.status(), start);
    return result;
  }

  v1::ServerInfo GetServerInfo();
  absl::StatusOr<v1::OpenSessionResponse> OpenSession(const v1::OpenSessionRequest& request,
                                                      SessionBinding binding,
                                                      const Identity& owner = {});
  absl::Status CloseSession(SessionRef session);

  // Commands executing right now (graceful shutdown waits for them).
  const InFlightCalls& in_flight() const { return in_flight_; }

  // Called with Core::Health() when it is not OK right after a command failed (a sticky device
  // error; backend_health.h). Set before serving starts.
  void set_backend_error_handler(std::function<void(const absl::Status& health)> handler) {
    backend_error_handler_ = std::move(handler);
  }

  // Logs the failed-command lines the rate limit dropped ("suppressed N similar errors"); the
  // maintenance loop calls it every second.
  void ReportSuppressedFailures();

  // Records a call refused before it reached the Core (e.g. missing session metadata).
  void RecordRejected(MethodId id, const absl::Status& status);

  // The Session stream, after `open`: runs `request`'s command in the stream's session and fills
  // `response` with the same request_id, the status code and message, and the result. A failed
  // command is answered, never thrown: the stream goes on. `session` carries the message's size
  // and the charges the caller keeps until it has written `response` (SessionRef).
  void Dispatch(SessionRef session, const v1::SessionRequest& request,
                v1::SessionResponse* response);

 private:
  absl::Status CheckResponseSize(MethodId id, size_t bytes) const;
  void Finish(MethodId id, std::string_view session_id, const absl::Status& status,
              std::chrono::steady_clock::time_point start);
  void LogFailure(MethodId id, std::string_view session_id, const absl::Status& status);

  Core& core_;
  const uint64_t max_response_bytes_;
  InFlightCalls in_flight_;
  std::function<void(const absl::Status& health)> backend_error_handler_;
  LogRateLimiter failure_log_limit_;
  std::array<MethodMetrics*, static_cast<size_t>(MethodId::kCount)> metrics_by_method_{};
};

}  // namespace attnd::server::front
