// A validated, prepared plan: one batch's page table on one pool, with the page references it
// pins so that FreePages after planning cannot let a page be reallocated under a run.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/pool.h"
#include "server/core/validation.h"

namespace attnd::server {

struct Plan {
  std::string id;
  std::shared_ptr<Pool> pool;
  std::unique_ptr<kernels::PreparedPlan> prepared;
  std::vector<int32_t> pinned_pages;   // distinct pages, one reference each in the owner's
                                       // PoolAttachment::pinned ledger
  std::vector<int32_t> written_pages;  // pages that appends write (must stay unshared)
  int32_t batch_size = 0;
  int32_t num_qo_heads = 0;
  int64_t qo_tokens = 0;
  int64_t kv_tokens = 0;
  int32_t cascade_levels = 0;  // shared levels of a cascade plan (kernels/cascade.h); 0: none
  HostCharge host_charge;      // the host memory of the page table and its copies
};

// Host memory a plan of this request takes (the validated page table, the backend's copy, the
// pinned and written page lists; a cascade plan's levels and its workspaces), charged before it
// is built.
uint64_t PlanHostBytes(const v1::CreatePlanRequest& request, const ValidatedPlan& validated);

// Builds the plan of a checked request (CheckCreatePlan, request_rules.h): checks its pages
// against the session's references (CheckPlanPages) and pins them under the pool's lock, then
// prepares it on the backend; `host_charge` (PlanHostBytes, already charged) moves into the plan.
// On any error nothing stays pinned. The caller has resolved the pool and the attachment.
absl::StatusOr<std::shared_ptr<Plan>> BuildPlan(ValidatedPlan validated, std::shared_ptr<Pool> pool,
                                                const std::string& session_id,
                                                kernels::Backend& backend, kernels::Stream* stream,
                                                std::string plan_id, HostCharge host_charge,
                                                HostBudget& budget);

// Drops the plan's pins (if the session is still attached to the pool).
void UnpinPlan(const Plan& plan, const std::string& session_id);

// Re-checks, right before an append, that no other session gained a reference to a page the
// plan writes (e.g. by a ForkPages after planning).
absl::Status CheckPlanWritable(const Plan& plan, const std::string& session_id);

}  // namespace attnd::server
