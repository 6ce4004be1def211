// The front's table of session commands, derived from the one command list
// (ATTND_SESSION_COMMANDS, attnd/v1/session_commands.h): for each, its name (the gRPC method name
// and the metrics label), the Core method that implements it, and where its request and response
// sit in the Session stream's SessionRequest / SessionResponse oneofs. The unary handlers
// (attnd_service.cc) and the stream dispatcher (command_runner.cc) both run commands from this
// table, so a command behaves the same on both paths.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "attnd/v1/attnd.pb.h"
#include "attnd/v1/session_commands.h"
#include "server/core/core.h"

namespace attnd::server::front {

namespace v1 = ::attnd::v1;

// Index of a method's metrics slot: the three session-less calls, then every command of
// ATTND_SESSION_COMMANDS (attnd/v1/session_commands.h) in its order.
enum class MethodId : int {
  kGetServerInfo,
  kOpenSession,
  kCloseSession,
#define ATTND_METHOD_ID(Name, field) k##Name,
  ATTND_SESSION_COMMANDS(ATTND_METHOD_ID)
#undef ATTND_METHOD_ID
  kCount,
};

std::string_view MethodName(MethodId id);

// A command that runs inside a session: Core::<call>(session, request) -> StatusOr<Response>.
template <typename Request, typename Response>
struct SessionCommand {
  using RequestType = Request;
  using ResponseType = Response;

  MethodId id;
  absl::StatusOr<Response> (Core::*call)(SessionRef session, const Request& request);
  v1::SessionRequest::CommandCase stream_case;
  const Request& (v1::SessionRequest::*stream_request)() const;
  Response* (v1::SessionResponse::*stream_response)();
};

namespace commands {

#define ATTND_SESSION_COMMAND(Name, field)                                                   \
  inline constexpr SessionCommand<v1::Name##Request, v1::Name##Response> k##Name{            \
      MethodId::k##Name, &Core::Name, v1::SessionRequest::k##Name,                           \
      &v1::SessionRequest::field, &v1::SessionResponse::mutable_##field};

ATTND_SESSION_COMMANDS(ATTND_SESSION_COMMAND)

#undef ATTND_SESSION_COMMAND

}  // namespace commands
}  // namespace attnd::server::front
