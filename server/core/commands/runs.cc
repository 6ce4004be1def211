// The hot path: AppendKv and Run, one layer of a plan each, synchronous or with an IPC completion
// event. Each checks its request completely (request_rules.h: CheckRun, CheckAppendKv) before
// its stream waits on an event or anything is mapped or launched (executor.h).
#include <string>

#include "server/core/core_state.h"
#include "server/core/request_rules.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<v1::AppendKvResponse> Core::AppendKv(SessionRef session_ref,
                                                    const v1::AppendKvRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::AppendKvResponse> {
    auto target = st.FindLayerTarget(session, request.plan_id(), request.completion());
    if (!target.ok()) return target.status();
    const Plan& plan = *target->plan;
    kernels::Stream* stream = target->stream;
    const ExecContext& ctx = target->ctx;
    TensorBindings bindings(ctx);
    absl::Status s;
    TransferCounts counts;
    if (auto call = CheckAppendKv(st.ScopeFor(session), plan, request, bindings); !call.ok()) {
      s = call.status();
    } else {
      if (call->wait_on != nullptr) s = st.backend->StreamWaitEvent(stream, *call->wait_on);
      if (s.ok()) s = ExecuteAppendKv(plan, request, *call, bindings, ctx, &counts);
      if (s.ok() && call->async) s = st.FinishAsync(session, stream);
    }
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} append_kv plan {} layer {}: {}", session.tag, plan.id,
                    request.layer(), s.ok() ? std::string("ok") : s.ToString());
    }
    if (!s.ok()) return s;
    return v1::AppendKvResponse();
  });
}

absl::StatusOr<v1::RunResponse> Core::Run(SessionRef session_ref, const v1::RunRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::RunResponse> {
    auto target = st.FindLayerTarget(session, request.plan_id(), request.completion());
    if (!target.ok()) return target.status();
    const Plan& plan = *target->plan;
    kernels::Stream* stream = target->stream;
    const ExecContext& ctx = target->ctx;
    // Declared before the bindings, which may point into it: it outlives them.
    v1::RunResponse response;
    TensorBindings bindings(ctx);
    absl::Status s;
    TransferCounts counts;
    bool appends = false;
    if (auto call = CheckRun(st.ScopeFor(session), plan, request, bindings, &response); !call.ok()) {
      s = call.status();
    } else {
      appends = call->appends;
      if (call->wait_on != nullptr) s = st.backend->StreamWaitEvent(stream, *call->wait_on);
      if (s.ok()) s = ExecuteRun(plan, request, *call, bindings, ctx, &response, &counts);
      if (s.ok() && call->async) s = st.FinishAsync(session, stream);
    }
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} run plan {} layer {}{}: {}", session.tag, plan.id,
                    request.layer(), appends ? " (+append)" : "",
                    s.ok() ? std::string("ok") : s.ToString());
    }
    if (!s.ok()) return s;
    return response;
  });
}

}  // namespace attnd::server
