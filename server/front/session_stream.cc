#include "server/front/session_stream.h"

#include <spdlog/spdlog.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "server/core/host_budget.h"
#include "server/core/ids.h"
#include "server/front/status_convert.h"

namespace attnd::server::front {
namespace {

// The name of the oneof member a SessionRequest carries, e.g. "create_pool"; for error messages.
std::string CommandFieldName(const v1::SessionRequest& request) {
  const auto* oneof = v1::SessionRequest::descriptor()->FindOneofByName("command");
  const auto* field =
      oneof == nullptr
          ? nullptr
          : v1::SessionRequest::GetReflection()->GetOneofFieldDescriptor(request, oneof);
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

// Reads the stream's next message as a SessionRequest.
enum class ReadResult { kMessage, kEnd, kUnparsable };
ReadResult ReadRequest(
    grpc::ServerReaderWriterInterface<grpc::ByteBuffer, grpc::ByteBuffer>& stream,
    v1::SessionRequest* request, size_t* bytes) {
  grpc::ByteBuffer buffer;
  if (!stream.Read(&buffer)) return ReadResult::kEnd;
  *bytes = buffer.Length();
  return grpc::SerializationTraits<v1::SessionRequest>::Deserialize(&buffer, request).ok()
             ? ReadResult::kMessage
             : ReadResult::kUnparsable;
}

bool WriteResponse(grpc::ServerReaderWriterInterface<grpc::ByteBuffer, grpc::ByteBuffer>& stream,
                   const v1::SessionResponse& response) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  if (!grpc::SerializationTraits<v1::SessionResponse>::Serialize(response, &buffer, &own_buffer)
           .ok()) {
    return false;
  }
  return stream.Write(buffer);
}

absl::Status UnparsableError(int64_t index, size_t bytes) {
  return absl::InvalidArgumentError(
      absl::StrCat("message ", index, " of the Session stream (", bytes,
                   " bytes) is not a valid attnd.v1.SessionRequest; the stream ends"));
}

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
    grpc::ServerReaderWriterInterface<grpc::ByteBuffer, grpc::ByteBuffer>& stream,
    const Identity& owner) {
  grpc::Status shutting_down =  // not const: each return may move from it
      ToGrpcStatus(absl::UnavailableError("attnd is shutting down"));
  const std::unique_ptr<StreamRegistry::Handle> registration = streams_.Register(&context);
  if (registration == nullptr) return shutting_down;
  StreamGauge gauge(metrics_);
  v1::SessionRequest request;
  size_t bytes = 0;
  int64_t messages = 1;
  switch (ReadRequest(stream, &request, &bytes)) {
    case ReadResult::kEnd:
      // The client closed (or vanished) before sending anything: no session was opened.
      return registration->closing() ? shutting_down : grpc::Status::OK;
    case ReadResult::kUnparsable: {
      const absl::Status status = UnparsableError(messages, bytes);
      runner_.RecordRejected(MethodId::kOpenSession, status);
      return ToGrpcStatus(status);
    }
    case ReadResult::kMessage: break;
  }
  if (!registration->BeginCommand()) return shutting_down;
  if (request.command_case() != v1::SessionRequest::kOpen) {
    const absl::Status status = absl::FailedPreconditionError(
        absl::StrCat("the Session stream's first message must be `open`; got `",
                     CommandFieldName(request), "` (request_id=", request.request_id(), ")"));
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
  if (!WriteResponse(stream, response)) {
    return ToGrpcStatus(absl::CancelledError("client went away"));
  }
  // The first message may have been large (a long client_name): do not keep it for the stream.
  request = v1::SessionRequest();
  response = v1::SessionResponse();
  if (!registration->EndCommand()) return shutting_down;

  // A fresh request and response per command: protobuf's Clear() keeps the capacity of the
  // inline tensors' strings, so reused messages would hold each stream's largest message (up to
  // --max_message_bytes, twice) for the stream's lifetime.
  for (;;) {
    v1::SessionRequest next;
    const ReadResult read = ReadRequest(stream, &next, &bytes);
    ++messages;
    if (read == ReadResult::kEnd) break;
    if (read == ReadResult::kUnparsable) {
      const absl::Status status = UnparsableError(messages, bytes);
      spdlog::warn("Session stream of session '{}' ends: {}", session_id, status.ToString());
      return ToGrpcStatus(status);
    }
    if (!registration->BeginCommand()) break;
    // The message (at its wire size) and the reply's inline outputs count against the session's
    // and the daemon's host budgets until the reply is written.
    MessageCharges charges;
    SessionRef session(session_id);
    session.request_bytes = bytes;
    session.charges = &charges;
    v1::SessionResponse answer;
    runner_.Dispatch(session, next, &answer);
    const bool written = WriteResponse(stream, answer);
    if (!registration->EndCommand() || !written) break;
  }
  if (registration->closing()) return shutting_down;
  if (context.IsCancelled()) {
    return ToGrpcStatus(absl::CancelledError("Session stream cancelled"));
  }
  return grpc::Status::OK;
}

}  // namespace attnd::server::front
