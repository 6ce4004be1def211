#include "server/front/session_stream.h"

#include <spdlog/spdlog.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "server/core/ids.h"
#include "server/front/status_convert.h"

namespace attnd::server::front {
namespace {

// The name of the oneof member a SessionRequest carries, e.g. "create_pool"; for error messages.
std::string CommandFieldName(const v1::SessionRequest& request) {
  const auto* oneof = v1::SessionRequest::descriptor()->FindOneofByName("command");
  const auto* field = oneof == nullptr
                          ? nullptr
                          : v1::SessionRequest::GetReflection()->GetOneofFieldDescriptor(request,
                                                                                       oneof);
  return field == nullptr ? std::string("no command") : field->name();
}

// Closes the stream's session on every way out of Serve.
class SessionCloser {
 public:
  SessionCloser(CommandRunner& runner, std::string session_id)
      : runner_(runner), session_id_(std::move(session_id)) {}
  ~SessionCloser() {
    const absl::Status status = runner_.CloseSession(session_id_);
    // NOT_FOUND: already closed, e.g. by Core::CloseAll during shutdown; nothing left to free.
    if (!status.ok() && !absl::IsNotFound(status)) {
      spdlog::warn("closing stream session {} failed: {}", SessionLogTag(session_id_),
                   status.ToString());
    }
  }
  SessionCloser(const SessionCloser&) = delete;
  SessionCloser& operator=(const SessionCloser&) = delete;

 private:
  CommandRunner& runner_;
  std::string session_id_;
};

class StreamGauge {
 public:
  explicit StreamGauge(Metrics& metrics) : metrics_(metrics) { metrics_.StreamOpened(); }
  ~StreamGauge() { metrics_.StreamClosed(); }
  StreamGauge(const StreamGauge&) = delete;
  StreamGauge& operator=(const StreamGauge&) = delete;

 private:
  Metrics& metrics_;
};

}  // namespace

grpc::Status SessionStream::Serve(
    grpc::ServerContext& context,
    grpc::ServerReaderWriterInterface<v1::SessionResponse, v1::SessionRequest>& stream,
    const Identity& owner) {
  const grpc::Status shutting_down(grpc::StatusCode::UNAVAILABLE, "attnd is shutting down");
  const std::unique_ptr<StreamRegistry::Handle> registration = streams_.Register(&context);
  if (registration == nullptr) return shutting_down;
  StreamGauge gauge(metrics_);
  v1::SessionRequest request;
  if (!stream.Read(&request)) {
    // The client closed (or vanished) before sending anything: no session was opened.
    return registration->closing() ? shutting_down : grpc::Status::OK;
  }
  if (!registration->BeginCommand()) return shutting_down;
  if (request.command_case() != v1::SessionRequest::kOpen) {
    const absl::Status status = absl::FailedPreconditionError(absl::StrCat(
        "the Session stream's first message must be `open`; got `", CommandFieldName(request),
        "` (request_id=", request.request_id(), ")"));
    runner_.RecordRejected(MethodId::kOpenSession, status);
    return ToGrpcStatus(status);
  }

  absl::StatusOr<v1::OpenSessionResponse> opened =
      runner_.OpenSession(request.open(), SessionBinding::kStream, owner);
  if (!opened.ok()) return ToGrpcStatus(opened.status());
  SessionCloser closer(runner_, opened->session_id());
  const std::string session_id = opened->session_id();

  v1::SessionResponse response;
  response.set_request_id(request.request_id());
  *response.mutable_open() = *std::move(opened);
  if (!stream.Write(response)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  if (!registration->EndCommand()) return shutting_down;

  while (stream.Read(&request)) {
    if (!registration->BeginCommand()) break;
    response.Clear();
    runner_.Dispatch(session_id, request, &response);
    const bool written = stream.Write(response);
    if (!registration->EndCommand() || !written) break;
  }
  if (registration->closing()) return shutting_down;
  if (context.IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "Session stream cancelled");
  }
  return grpc::Status::OK;
}

}  // namespace attnd::server::front
