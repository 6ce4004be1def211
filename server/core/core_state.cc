// The Core's hub (core_state.h): the State's constructor, its lookups and its release paths, and
// the error shapes the commands share.
#include "server/core/core_state.h"

#include <unistd.h>

#include "spdlog/spdlog.h"

namespace attnd::server {
namespace {

uint64_t EffectiveHostBudget(const CoreOptions& options) {
  if (options.max_host_bytes != 0) return options.max_host_bytes;
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return uint64_t{4} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 4;
}

}  // namespace

uint64_t EffectivePoolBudget(const CoreOptions& options, const kernels::BackendInfo& info) {
  if (options.max_pool_bytes != 0) return options.max_pool_bytes;
  return info.memory_total_bytes / 10 * 9;
}

absl::Status QuotaError(std::string_view what, int64_t limit, std::string_view flag,
                        std::string_view advice) {
  return absl::ResourceExhaustedError(absl::StrCat("quota: ", Absl(what), " (limit ", limit, ", --",
                                                   Absl(flag), "); ", Absl(advice)));
}

absl::Status NoSuchSessionError(absl::string_view session_id) {
  return absl::NotFoundError(absl::StrCat("session ",
                                          SessionLogTag({session_id.data(), session_id.size()}),
                                          " does not exist, has expired, or is not this "
                                          "caller's"));
}

bool Reachable(const Session& session, const SessionRef& ref) {
  if (ref.unary_caller == nullptr) return true;
  return session.binding == SessionBinding::kLeased && session.owner == *ref.unary_caller;
}

Core::State::State(const CoreOptions& options, std::unique_ptr<kernels::Backend> backend_in)
    : options(options),
      backend(std::move(backend_in)),
      pools(EffectivePoolBudget(options, backend->info())),
      host(EffectiveHostBudget(options), options.max_session_host_bytes),
      peers(options.max_peers, options.max_fds_per_peer,
            options.max_pending_fds > 0 ? options.max_pending_fds
                                        : options.max_peers * options.max_fds_per_peer) {}

absl::Status Core::State::InflightQuotaError(const Session& session, int64_t inflight) const {
  return QuotaError(
      absl::StrCat("session ", session.tag, " has ", inflight - 1, " commands in flight"),
      options.max_inflight_per_session, "max_inflight_per_session",
      "wait for answers before sending more, or use the Session stream");
}

absl::StatusOr<std::shared_ptr<Pool>> Core::State::AttachedPool(Session& session,
                                                                absl::string_view pool_id) {
  auto it = session.pools.find(pool_id);
  if (it != session.pools.end()) return it->second;
  if (std::shared_ptr<Pool> pool = pools.FindById(pool_id)) {
    return absl::PermissionDeniedError(absl::StrCat("pool_id='", pool_id,
                                                    "': this session is not attached to pool '",
                                                    pool->name(), "'; call AttachPool first"));
  }
  return NotOwnedError("pool_id", pool_id, " does not exist");
}

absl::Status Core::State::ReservePageReferences(SessionUsage& usage, int64_t count,
                                                std::string_view who) {
  if (TryReserve(usage.page_references, count, options.max_pages_per_session)) {
    return absl::OkStatus();
  }
  return QuotaError(absl::StrCat(Absl(who), " holds ", usage.page_references.load(),
                                 " page references and would receive ", count, " more"),
                    options.max_pages_per_session, "max_pages_per_session",
                    "free pages it no longer uses (FreePages)");
}

absl::StatusOr<std::shared_ptr<Plan>> Core::State::FindPlan(Session& session,
                                                            absl::string_view plan_id) {
  auto plan = FindOwned(session.plans, plan_id, "plan_id", " is not a plan of this session");
  if (!plan.ok()) return plan.status();
  return **plan;
}

absl::StatusOr<kernels::Stream*> Core::State::SessionStream(Session& session) {
  if (session.stream == nullptr) {
    auto stream = backend->CreateStream();
    if (!stream.ok()) return stream.status();
    session.stream = *std::move(stream);
  }
  return session.stream.get();
}

absl::StatusOr<Core::State::StreamTarget> Core::State::FindStreamTarget(Session& session,
                                                                        v1::Completion completion) {
  auto stream = SessionStream(session);
  if (!stream.ok()) return stream.status();
  const bool synchronize = completion != v1::COMPLETION_ASYNC;
  return StreamTarget{
      *stream, ExecContext{*backend, *stream, session.staging, session.buffers, synchronize}};
}

absl::StatusOr<Core::State::LayerTarget> Core::State::FindLayerTarget(Session& session,
                                                                      absl::string_view plan_id,
                                                                      v1::Completion completion) {
  auto plan = FindPlan(session, plan_id);
  if (!plan.ok()) return plan.status();
  auto target = FindStreamTarget(session, completion);
  if (!target.ok()) return target.status();
  return LayerTarget{*std::move(plan), target->stream, target->ctx};
}

absl::StatusOr<kernels::Event*> Core::State::CompletionEvent(Session& session) {
  if (session.completion_event == nullptr) {
    auto event = backend->CreateIpcEvent();
    if (!event.ok()) return event.status();
    session.completion_event = *std::move(event);
  }
  return session.completion_event.get();
}

absl::Status Core::State::FinishAsync(Session& session, kernels::Stream* stream) {
  if (backend->host_accessible()) return backend->Synchronize(stream);
  auto event = CompletionEvent(session);
  if (!event.ok()) return backend->Synchronize(stream);  // no event: complete synchronously
  return backend->RecordEvent(**event, stream);
}

void Core::State::Detach(Session& session, const std::shared_ptr<Pool>& pool) {
  for (auto it = session.plans.begin(); it != session.plans.end();) {
    if (it->second->pool == pool) {
      session.plans.erase(it++);
      plans.fetch_sub(1);
    } else {
      ++it;
    }
  }
  {
    absl::MutexLock lock(&pool->mu);
    pool->Detach(session.id);
  }
  session.pools.erase(pool->id());
  if (pools.RemoveIfUnused(pool)) {
    spdlog::info("pool '{}' ({}) released: its last session ({}) detached", pool->name(),
                 pool->id(), session.tag);
  }
}

void Core::State::Release(Session& session, const char* reason) {
  absl::MutexLock lock(&session.mu);  // waits for an in-flight command of the session
  if (session.closed) return;
  session.closed = true;
  const size_t num_plans = session.plans.size();
  const size_t num_buffers = session.buffers.size();
  // Async work of the session may still read its buffers and pages: let it finish first.
  if (session.stream != nullptr) (void)backend->Synchronize(session.stream.get());
  while (!session.pools.empty()) {
    std::shared_ptr<Pool> pool = session.pools.begin()->second;
    Detach(session, pool);
  }
  plans.fetch_sub(static_cast<int64_t>(session.plans.size()));
  session.plans.clear();
  session.ragged_plan.reset();
  session.ragged_charge = HostCharge();
  buffers.fetch_sub(static_cast<int64_t>(session.buffers.size()));
  session.buffers.clear();
  session.events.clear();
  session.completion_event.reset();
  session.stream.reset();
  session.staging = StagingArea();
  spdlog::info("session {} ('{}') closed ({}): released {} plan(s), {} buffer(s)", session.tag,
               session.client_name, reason, num_plans, num_buffers);
}

}  // namespace attnd::server
