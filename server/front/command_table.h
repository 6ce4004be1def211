// The one table of session commands: for each, its name (the gRPC method name and the metrics
// label), the Core method that implements it, and where its request and response sit in the
// Session stream's SessionRequest / SessionResponse oneofs. The unary handlers (attnd_service.cc)
// and the stream dispatcher (command_runner.cc) both run commands from this table, so a command
// behaves the same on both paths.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/core.h"

namespace attnd::server::front {

namespace v1 = ::attnd::v1;

// Index of a method's metrics slot. Session commands plus the three session-less calls.
enum class MethodId : int {
  kGetServerInfo,
  kOpenSession,
  kCloseSession,
  kCreatePool,
  kAttachPool,
  kDescribePool,
  kDeletePool,
  kAllocatePages,
  kFreePages,
  kForkPages,
  kRegisterBuffer,
  kUnregisterBuffer,
  kCreatePlan,
  kDeletePlan,
  kAppendKv,
  kRun,
  kRegisterEvent,
  kUnregisterEvent,
  kGetCompletionEvent,
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
      &v1::SessionRequest::field, &v1::SessionResponse::mutable_##field}

ATTND_SESSION_COMMAND(CreatePool, create_pool);
ATTND_SESSION_COMMAND(AttachPool, attach_pool);
ATTND_SESSION_COMMAND(DescribePool, describe_pool);
ATTND_SESSION_COMMAND(DeletePool, delete_pool);
ATTND_SESSION_COMMAND(AllocatePages, allocate_pages);
ATTND_SESSION_COMMAND(FreePages, free_pages);
ATTND_SESSION_COMMAND(ForkPages, fork_pages);
ATTND_SESSION_COMMAND(RegisterBuffer, register_buffer);
ATTND_SESSION_COMMAND(UnregisterBuffer, unregister_buffer);
ATTND_SESSION_COMMAND(CreatePlan, create_plan);
ATTND_SESSION_COMMAND(DeletePlan, delete_plan);
ATTND_SESSION_COMMAND(AppendKv, append_kv);
ATTND_SESSION_COMMAND(Run, run);
ATTND_SESSION_COMMAND(RegisterEvent, register_event);
ATTND_SESSION_COMMAND(UnregisterEvent, unregister_event);
ATTND_SESSION_COMMAND(GetCompletionEvent, get_completion_event);

#undef ATTND_SESSION_COMMAND

}  // namespace commands
}  // namespace attnd::server::front
