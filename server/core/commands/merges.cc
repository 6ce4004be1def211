// MergeState and MergeStates: attention states the client computed elsewhere, merged on the
// session's stream (no plan, no pool). Each checks its request completely (request_rules.h:
// CheckMergeState, CheckMergeStates) before its stream waits on an event or anything is mapped or
// launched (executor.h: ExecuteMerge).
#include <string>

#include "server/core/core_state.h"
#include "server/core/request_rules.h"
#include "spdlog/spdlog.h"

namespace attnd::server {
namespace {

// The body both commands share. `State` is Core::State (deduced: the name is Core's own).
template <typename State, typename Request, typename Response, typename Check>
absl::StatusOr<Response> MergeCommand(State& st, SessionRef session_ref, const Request& request,
                                      const char* command, Check check) {
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<Response> {
    auto target = st.FindStreamTarget(session, request.completion());
    if (!target.ok()) return target.status();
    // Declared before the bindings, which may point into it: it outlives them.
    Response response;
    TensorBindings bindings(target->ctx);
    absl::Status s;
    TransferCounts counts;
    if (auto call = check(st.ScopeFor(session), request, bindings, &response); !call.ok()) {
      s = call.status();
    } else {
      if (call->wait_on != nullptr) s = st.backend->StreamWaitEvent(target->stream, *call->wait_on);
      if (s.ok()) s = ExecuteMerge(*call, bindings, target->ctx, &counts);
      if (s.ok() && call->async) s = st.FinishAsync(session, target->stream);
    }
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} {}: {}", session.tag, command,
                    s.ok() ? std::string("ok") : s.ToString());
    }
    if (!s.ok()) return s;
    return response;
  });
}

}  // namespace

absl::StatusOr<v1::MergeStateResponse> Core::MergeState(SessionRef session_ref,
                                                        const v1::MergeStateRequest& request) {
  return MergeCommand<State, v1::MergeStateRequest, v1::MergeStateResponse>(
      *state_, session_ref, request, "merge_state", CheckMergeState);
}

absl::StatusOr<v1::MergeStatesResponse> Core::MergeStates(SessionRef session_ref,
                                                          const v1::MergeStatesRequest& request) {
  return MergeCommand<State, v1::MergeStatesRequest, v1::MergeStatesResponse>(
      *state_, session_ref, request, "merge_states", CheckMergeStates);
}

}  // namespace attnd::server
