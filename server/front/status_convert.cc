#include "server/front/status_convert.h"

#include <string>

#include "server/front/bounded_text.h"

namespace attnd::server::front {

std::string StatusMessageForClient(const absl::Status& status) {
  const absl::string_view message = status.message();
  return CutText(std::string_view(message.data(), message.size()), kMaxStatusMessageBytes);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode both use the canonical numbering (OK=0 ..
  // UNAUTHENTICATED=16); codes outside that range cannot come from absl's API but are mapped to
  // UNKNOWN rather than forwarded as an invalid wire code.
  const int code = static_cast<int>(status.code());
  const grpc::StatusCode grpc_code =
      (code >= 0 && code <= 16) ? static_cast<grpc::StatusCode>(code) : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, StatusMessageForClient(status));
}

void SetCommandStatus(const absl::Status& status, ::attnd::v1::SessionResponse* response) {
  const grpc::Status wire = ToGrpcStatus(status);
  response->set_code(static_cast<int32_t>(wire.error_code()));
  response->set_message(wire.error_message());
}

std::string_view StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kUnknown: return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted: return "ABORTED";
    case absl::StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss: return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

}  // namespace attnd::server::front
