// The one list of the wire API's session commands (attnd.proto): everything that runs inside a
// session, with the same name as its rpc and as its SessionRequest/SessionResponse oneof member.
//
//   ATTND_SESSION_COMMANDS(X) expands X(Name, field) once per command, where
//     Name   the rpc (Attnd.Name), the Core method, the metrics label; Name##Request and
//            Name##Response are its messages;
//     field  its member of SessionRequest.command and SessionResponse.result.
//
// Everything that lists the commands is derived from it: the Core's declarations
// (server/core/core.h), the front's command table, unary handlers and Session stream dispatcher
// (server/front/command_table.h, attnd_service.h, command_runner.cc), and the C++ client's raw
// calls and unary mapping (client/cpp session_api.h, unary_session.cc). Adding a command to the
// proto is one line here plus its body (Core::Name in server/core/commands/<topic>.cc).
//
// The session-less calls are not in the list, having other shapes: GetServerInfo (no session;
// get_server_info on the stream), OpenSession (opens one; `open`, the stream's first message) and
// CloseSession (unary only; the stream's end closes its session).
// tests/unit/server/front/command_table_test.cc checks that the list and the proto agree.
#pragma once

#define ATTND_SESSION_COMMANDS(X)             \
  X(CreatePool, create_pool)                  \
  X(AttachPool, attach_pool)                  \
  X(DescribePool, describe_pool)              \
  X(DeletePool, delete_pool)                  \
  X(AllocatePages, allocate_pages)            \
  X(FreePages, free_pages)                    \
  X(ForkPages, fork_pages)                    \
  X(RegisterBuffer, register_buffer)          \
  X(UnregisterBuffer, unregister_buffer)      \
  X(CreatePlan, create_plan)                  \
  X(DeletePlan, delete_plan)                  \
  X(AppendKv, append_kv)                      \
  X(Run, run)                                 \
  X(RegisterEvent, register_event)            \
  X(UnregisterEvent, unregister_event)        \
  X(GetCompletionEvent, get_completion_event) \
  X(MergeState, merge_state)                  \
  X(MergeStates, merge_states)                \
  X(RunRagged, run_ragged)                    \
  X(UpdatePlan, update_plan)
