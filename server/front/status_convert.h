// absl::Status -> grpc::Status. The one place where the daemon's internal error model meets the
// wire: every handler (unary and the Session stream) goes through ToGrpcStatus, so a status code
// and message reach the client exactly as the core produced them.
#pragma once

#include <grpcpp/support/status.h>

#include <string_view>

#include "absl/status/status.h"

namespace attnd::server::front {

// Same code (absl and gRPC share the canonical code numbering 0..16), same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The canonical name of a code, e.g. "INVALID_ARGUMENT"; used as the `code` metrics label.
std::string_view StatusCodeName(absl::StatusCode code);

}  // namespace attnd::server::front
