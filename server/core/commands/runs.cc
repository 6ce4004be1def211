// The hot path: AppendKv and Run, one layer of a plan each, synchronous or with an IPC completion
// event; and RunRagged, attention over K/V given as tensors (no pool, a plan made per call).
// Each checks its request completely (request_rules.h: CheckRun, CheckAppendKv, CheckRunRagged)
// before its stream waits on an event or anything is mapped or launched (executor.h).
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
    if (auto call = CheckRun(st.ScopeFor(session), plan, request, bindings, &response);
        !call.ok()) {
      s = call.status();
    } else {
      appends = call->appends;
      if (call->wait_on != nullptr) s = st.backend->StreamWaitEvent(stream, *call->wait_on);
      if (s.ok()) s = ExecuteRun(plan, request, *call, bindings, ctx, &response, &counts);
      if (s.ok() && call->async) s = st.FinishAsync(session, stream);
    }
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} run plan {} layer {}{}: {}", session.tag, plan.id, request.layer(),
                    appends ? " (+append)" : "", s.ok() ? std::string("ok") : s.ToString());
    }
    if (!s.ok()) return s;
    return response;
  });
}

absl::StatusOr<v1::RunRaggedResponse> Core::RunRagged(SessionRef session_ref,
                                                      const v1::RunRaggedRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::RunRaggedResponse> {
        auto target = st.FindStreamTarget(session, request.completion());
        if (!target.ok()) return target.status();
        // Declared before the bindings, which may point into it: it outlives them.
        v1::RunRaggedResponse response;
        TensorBindings bindings(target->ctx);
        absl::Status s;
        TransferCounts counts;
        if (auto call = CheckRunRagged(st.ScopeFor(session), request, bindings, &response);
            !call.ok()) {
          s = call.status();
        } else {
          // The batch's plan, charged before it is built; the session keeps it until its next
          // ragged run (ASYNC work may still read it), replacing the previous one.
          auto charge =
              st.host.Charge(session.usage, RaggedPlanHostBytes(*call), "ragged run plan");
          absl::StatusOr<std::unique_ptr<kernels::PreparedPlan>> plan =
              charge.ok() ? st.backend->Prepare(RaggedPlanOf(*call, request), target->stream)
                          : charge.status();
          s = plan.status();
          if (s.ok() && call->wait_on != nullptr) {
            s = st.backend->StreamWaitEvent(target->stream, *call->wait_on);
          }
          if (s.ok()) {
            s = ExecuteRunRagged(**plan, request, *call, bindings, target->ctx, &response, &counts);
          }
          if (s.ok() && call->async) s = st.FinishAsync(session, target->stream);
          if (plan.ok()) {
            session.ragged_plan = *std::move(plan);
            session.ragged_charge = *std::move(charge);
          }
        }
        st.CountTransfers(counts);
        if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
          spdlog::debug("session {} run_ragged: {}", session.tag,
                        s.ok() ? std::string("ok") : s.ToString());
        }
        if (!s.ok()) return s;
        return response;
      });
}

}  // namespace attnd::server
