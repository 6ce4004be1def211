#include "attnd/client/status.h"

#include "absl/strings/str_cat.h"

namespace attnd::client {

absl::Status FromWireCode(int code, const std::string& message) {
  if (code == 0) return absl::OkStatus();
  // absl::StatusCode and grpc::StatusCode share the numbering 0..16.
  if (code < 0 || code > 16) {
    return absl::UnknownError(absl::StrCat("server returned status code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return FromWireCode(static_cast<int>(status.error_code()), status.error_message());
}

}  // namespace attnd::client
