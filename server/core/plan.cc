#include "server/core/plan.h"

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cascade.h"
#include "server/core/request_rules.h"
#include "server/core/validation.h"

namespace attnd::server {

uint64_t PlanHostBytes(const v1::CreatePlanRequest& request, const ValidatedPlan& validated) {
  // int32 entries: the spec (indices + indptr + last_page_len + qo_indptr), the backend's copy
  // (the CUDA upload image, the CPU plan's spec), the distinct and written page lists.
  const uint64_t indices = static_cast<uint64_t>(request.kv_indices_size());
  const uint64_t per_request = static_cast<uint64_t>(request.kv_indptr_size()) +
                               static_cast<uint64_t>(request.kv_last_page_len_size()) +
                               static_cast<uint64_t>(request.qo_indptr_size());
  uint64_t ints = 4 * indices + 3 * per_request;
  // A custom mask's row-word image (custom_mask.h): in the spec, and in the backend's copy (the
  // CUDA upload image; the CPU plan's spec); once more in a cascade plan's last level.
  const uint64_t mask = validated.spec.custom_mask.bytes();
  const uint64_t mask_copies = request.cascade_levels_size() == 0 ? 2 : 3;
  if (request.cascade_levels_size() == 0) return sizeof(int32_t) * ints + 4096 + mask_copies * mask;
  // A cascade plan (kernels/cascade.h) keeps its spec with the levels and prepares every level
  // as a plan of its own: each level's entries four times (spec, level plan, its backend copy,
  // the distinct pages), the own table once more; and the levels' workspaces (backend memory:
  // host memory on the CPU backend; charged on every backend).
  ints += 2 * indices + 2 * per_request;
  for (const v1::CascadeLevel& level : request.cascade_levels()) {
    ints += 4 * (static_cast<uint64_t>(level.kv_indices_size()) + level.kv_indptr_size() +
                 level.kv_last_page_len_size() + level.qo_indptr_size());
  }
  const kernels::PlanSpec& spec = validated.spec;
  return sizeof(int32_t) * ints + 4096 * (1 + spec.cascade_levels.size()) + mask_copies * mask +
         kernels::CascadeWorkspaceBytes(static_cast<int64_t>(spec.cascade_levels.size()),
                                        spec.qo_tokens(), spec.num_qo_heads, spec.head_dim);
}

absl::StatusOr<std::shared_ptr<Plan>> BuildPlan(ValidatedPlan validated, std::shared_ptr<Pool> pool,
                                                const std::string& session_id,
                                                kernels::Backend& backend, kernels::Stream* stream,
                                                std::string plan_id, HostCharge host_charge,
                                                HostBudget& budget) {
  auto plan = std::make_shared<Plan>();
  plan->id = std::move(plan_id);
  plan->batch_size = validated.spec.batch_size();
  plan->num_qo_heads = validated.spec.num_qo_heads;
  plan->qo_tokens = validated.spec.qo_tokens();
  plan->kv_tokens = validated.kv_tokens;
  plan->cascade_levels = static_cast<int32_t>(validated.spec.cascade_levels.size());
  plan->written_pages = validated.written_pages;
  plan->host_charge = std::move(host_charge);

  {
    absl::MutexLock lock(&pool->mu);
    auto it = pool->attachments.find(session_id);
    if (it == pool->attachments.end()) {
      return absl::PermissionDeniedError(
          absl::StrCat("this session is not attached to pool '", pool->name(), "'"));
    }
    PoolAttachment& mine = it->second;
    if (auto s = CheckPlanPages(validated, mine, pool->allocator, pool->name()); !s.ok()) {
      return s;
    }
    if (auto s = pool->SizeLedgers(mine, budget); !s.ok()) return s;
    // Every page is held by this session, so none is free; a page at its reference limit
    // refuses the pin (RESOURCE_EXHAUSTED) and nothing is pinned.
    if (auto s = pool->allocator.AddReferences(validated.distinct_pages, mine.pinned,
                                               "kv_indices (distinct pages)");
        !s.ok()) {
      return s;
    }
    plan->pinned_pages = std::move(validated.distinct_pages);
  }
  plan->pool = std::move(pool);

  auto prepared = backend.Prepare(std::move(validated.spec), stream);
  if (!prepared.ok()) {
    UnpinPlan(*plan, session_id);
    return absl::Status(prepared.status().code(),
                        absl::StrCat("preparing the plan: ", prepared.status().message()));
  }
  plan->prepared = *std::move(prepared);
  return plan;
}

void UnpinPlan(const Plan& plan, const std::string& session_id) {
  if (plan.pool == nullptr || plan.pinned_pages.empty()) return;
  absl::MutexLock lock(&plan.pool->mu);
  auto it = plan.pool->attachments.find(session_id);
  // A detached session's ledgers were released wholesale already.
  if (it == plan.pool->attachments.end()) return;
  (void)plan.pool->allocator.Release(plan.pinned_pages, it->second.pinned);
}

absl::Status CheckPlanWritable(const Plan& plan, const std::string& session_id) {
  absl::MutexLock lock(&plan.pool->mu);
  auto it = plan.pool->attachments.find(session_id);
  if (it == plan.pool->attachments.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("plan '", plan.id, "': this session is no longer attached to pool '",
                     plan.pool->name(), "'"));
  }
  return CheckPagesUnshared(plan.written_pages, plan.pool->allocator, it->second.held,
                            it->second.pinned);
}

}  // namespace attnd::server
