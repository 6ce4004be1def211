// absl::Status -> grpc::Status. The one place where the daemon's internal error model meets the
// wire: ToGrpcStatus is the one conversion. Every handler's status (unary calls, the Session
// stream's end) is ToGrpcStatus's, and each Session stream command's code and message are too
// (SetCommandStatus), so a status code reaches the client exactly as the core produced it, on
// either path, and its message bounded (kMaxStatusMessageBytes).
#pragma once

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "attnd/v1/attnd.pb.h"

namespace attnd::server::front {

// The longest status message a client gets, and a failed command's log line carries, bytes.
// Messages name the offending field and its value, and the value is the client's: a 64 MiB id
// would otherwise come back as a 64 MiB message (gRPC carries it in trailing metadata, whose
// limit then fails the call with RESOURCE_EXHAUSTED instead of the real code).
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// `status`'s message cut to kMaxStatusMessageBytes (bounded_text.h CutText).
std::string StatusMessageForClient(const absl::Status& status);

// Same code (absl and gRPC share the canonical code numbering 0..16), StatusMessageForClient.
grpc::Status ToGrpcStatus(const absl::Status& status);

// A Session stream command's answer: `status` through ToGrpcStatus into response.code/message.
void SetCommandStatus(const absl::Status& status, ::attnd::v1::SessionResponse* response);

// The canonical name of a code, e.g. "INVALID_ARGUMENT"; used as the `code` metrics label.
std::string_view StatusCodeName(absl::StatusCode code);

}  // namespace attnd::server::front
