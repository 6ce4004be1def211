// Plan commands: CreatePlan (its field rules, CheckCreatePlan; the quotas and the host charge;
// then BuildPlan: the page rules and pins under the pool's lock, backend preparation),
// UpdatePlan (streamed page-table updates: CheckUpdatePlan's delta rules, the host charge of the
// growth, then ApplyPlanUpdate: the page rules and pins under the pool's lock, the backend's
// update in the stream's order) and DeletePlan.
#include <utility>

#include "server/core/core_state.h"
#include "server/core/request_rules.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<v1::CreatePlanResponse> Core::CreatePlan(SessionRef session_ref,
                                                        const v1::CreatePlanRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::CreatePlanResponse> {
        auto pool = st.AttachedPool(session, request.pool_id());
        if (!pool.ok()) return pool.status();
        auto validated = CheckCreatePlan(request, **pool);
        if (!validated.ok()) return validated.status();
        if (static_cast<int64_t>(session.plans.size()) >= st.options.max_plans_per_session) {
          return QuotaError(absl::StrCat("this session has ", session.plans.size(), " plans"),
                            st.options.max_plans_per_session, "max_plans_per_session",
                            "delete plans it no longer uses (DeletePlan)");
        }
        auto charge =
            st.host.Charge(session.usage, PlanHostBytes(request, *validated),
                           absl::StrCat("a plan of ", request.kv_indices_size(), " page entries"));
        if (!charge.ok()) return charge.status();
        auto stream = st.SessionStream(session);
        if (!stream.ok()) return stream.status();
        auto plan = BuildPlan(*std::move(validated), *pool, session.id, *st.backend, *stream,
                              NewRandomId("plan-"), *std::move(charge), st.host);
        if (!plan.ok()) return plan.status();
        v1::CreatePlanResponse response;
        response.set_plan_id((*plan)->id);
        response.set_batch_size((*plan)->batch_size);
        response.set_qo_tokens((*plan)->qo_tokens);
        response.set_kv_tokens((*plan)->kv_tokens);
        spdlog::debug("session {} created plan {}: batch {}, {} query / {} kv tokens", session.tag,
                      (*plan)->id, (*plan)->batch_size, (*plan)->qo_tokens, (*plan)->kv_tokens);
        const std::string plan_id = (*plan)->id;
        session.plans[plan_id] = *std::move(plan);
        st.plans.fetch_add(1);
        return response;
      });
}

absl::StatusOr<v1::UpdatePlanResponse> Core::UpdatePlan(SessionRef session_ref,
                                                        const v1::UpdatePlanRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::UpdatePlanResponse> {
        auto found = st.FindPlan(session, request.plan_id());
        if (!found.ok()) return found.status();
        Plan& plan = **found;
        v1::UpdatePlanResponse response;
        auto update = CheckUpdatePlan(request, plan);
        if (!update.ok()) return update.status();
        if (update->changes) {
          // Only the growth is charged (a shrinking plan returns bytes once it changed).
          const uint64_t host_bytes = UpdatedPlanHostBytes(plan, *update);
          const uint64_t held = plan.host_charge.bytes();
          HostCharge extra;
          if (host_bytes > held) {
            auto charge =
                st.host.Charge(session.usage, host_bytes - held,
                               absl::StrCat("plan '", plan.id, "' growing to ",
                                            update->spec.kv_indices.size(), " page entries"));
            if (!charge.ok()) return charge.status();
            extra = *std::move(charge);
          }
          auto stream = st.SessionStream(session);
          if (!stream.ok()) return stream.status();
          if (auto s = ApplyPlanUpdate(plan, *std::move(update), session.id, *st.backend, *stream,
                                       host_bytes, std::move(extra), st.host);
              !s.ok()) {
            return s;
          }
          spdlog::debug("session {} updated plan {} ({} deltas): batch {}, {} query / {} kv tokens",
                        session.tag, plan.id, request.deltas_size(), plan.batch_size,
                        plan.qo_tokens, plan.kv_tokens);
        }
        response.set_batch_size(plan.batch_size);
        response.set_qo_tokens(plan.qo_tokens);
        response.set_kv_tokens(plan.kv_tokens);
        return response;
      });
}

absl::StatusOr<v1::DeletePlanResponse> Core::DeletePlan(SessionRef session_ref,
                                                        const v1::DeletePlanRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref,
                        [&](Session& session) -> absl::StatusOr<v1::DeletePlanResponse> {
                          auto plan = st.FindPlan(session, request.plan_id());
                          if (!plan.ok()) return plan.status();
                          UnpinPlan(**plan, session.id);
                          session.plans.erase((*plan)->id);
                          st.plans.fetch_sub(1);
                          return v1::DeletePlanResponse();
                        });
}

}  // namespace attnd::server
