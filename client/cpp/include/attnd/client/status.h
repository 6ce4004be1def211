// Conversions between gRPC statuses (and the Session stream's per-command codes) and absl::Status.
// The numeric codes of grpc::StatusCode and absl::StatusCode are identical by design, so the
// conversion keeps the server's code and message unchanged.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace attnd::client {

// grpc::Status -> absl::Status, keeping code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// A Session stream response's (code, message) pair -> absl::Status. Codes outside the gRPC range
// become UNKNOWN with the original number in the message.
absl::Status FromWireCode(int code, const std::string& message);

}  // namespace attnd::client
