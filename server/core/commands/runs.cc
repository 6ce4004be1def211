// The hot path: AppendKv and Run, one layer of a plan each, synchronous or with an IPC completion
// event.
#include <string>

#include "server/core/core_state.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<v1::AppendKvResponse> Core::AppendKv(SessionRef session_ref,
                                                    const v1::AppendKvRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::AppendKvResponse> {
    auto plan = st.FindPlan(session, request.plan_id());
    if (!plan.ok()) return plan.status();
    if (auto s = CheckPlanWritable(**plan, session.id); !s.ok()) return s;
    auto stream = st.SessionStream(session);
    if (!stream.ok()) return stream.status();
    if (auto s = st.PrepareCompletion(session, *stream, request.wait_event_id(),
                                      request.completion());
        !s.ok()) {
      return s;
    }
    const bool async = request.completion() == v1::COMPLETION_ASYNC;
    TransferCounts counts;
    const ExecContext ctx{*st.backend, *stream, session.staging, session.buffers, !async};
    absl::Status s = ExecuteAppendKv(**plan, request, ctx, &counts);
    if (s.ok() && async) s = st.FinishAsync(session, *stream);
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} append_kv plan {} layer {}: {}", session.tag, (*plan)->id,
                    request.layer(), s.ok() ? std::string("ok") : s.ToString());
    }
    if (!s.ok()) return s;
    return v1::AppendKvResponse();
  });
}

absl::StatusOr<v1::RunResponse> Core::Run(SessionRef session_ref,
                                          const v1::RunRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref, [&](Session& session) -> absl::StatusOr<v1::RunResponse> {
    auto plan = st.FindPlan(session, request.plan_id());
    if (!plan.ok()) return plan.status();
    const bool appends = request.k().data_case() != v1::Tensor::DATA_NOT_SET ||
                         request.v().data_case() != v1::Tensor::DATA_NOT_SET;
    if (appends) {
      if (auto s = CheckPlanWritable(**plan, session.id); !s.ok()) return s;
    }
    auto stream = st.SessionStream(session);
    if (!stream.ok()) return stream.status();
    const bool async = request.completion() == v1::COMPLETION_ASYNC;
    if (async && request.o().data_case() != v1::Tensor::kBuffer) {
      return absl::InvalidArgumentError(
          "completion=COMPLETION_ASYNC needs o in a registered buffer (inline outputs would need "
          "a synchronous copy); set o.buffer or use COMPLETION_SYNC");
    }
    if (async && request.options().return_lse() &&
        request.lse().data_case() != v1::Tensor::kBuffer) {
      return absl::InvalidArgumentError(
          "completion=COMPLETION_ASYNC with options.return_lse needs lse in a registered buffer");
    }
    if (auto s = st.CheckReplyFits("Run", InlineReplyBytes(**plan, request),
                                   "write o and lse to registered buffers instead of receiving "
                                   "them inline");
        !s.ok()) {
      return s;
    }
    if (auto s = st.PrepareCompletion(session, *stream, request.wait_event_id(),
                                      request.completion());
        !s.ok()) {
      return s;
    }
    TransferCounts counts;
    const ExecContext ctx{*st.backend, *stream, session.staging, session.buffers, !async};
    auto response = ExecuteRun(**plan, request, ctx, &counts);
    if (response.ok() && async) {
      if (auto s = st.FinishAsync(session, *stream); !s.ok()) response = s;
    }
    st.CountTransfers(counts);
    if (spdlog::default_logger_raw()->should_log(spdlog::level::debug)) {
      spdlog::debug("session {} run plan {} layer {}{}: {}", session.tag, (*plan)->id,
                    request.layer(), appends ? " (+append)" : "",
                    response.ok() ? std::string("ok") : response.status().ToString());
    }
    return response;
  });
}

}  // namespace attnd::server
