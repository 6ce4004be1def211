// A validated, prepared plan: one batch's page table on one pool, with the page references it
// pins so that FreePages after planning cannot let a page be reallocated under a run.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/pool.h"
#include "server/core/validation.h"

namespace attnd::server {

// The pages of an updated plan's table (UpdatePlan), built by its first update and kept current
// by every later one, so that an update finds the pins and the written pages it changes from the
// pages its deltas name, without a pass over the whole table.
struct PlanPageIndex {
  struct Use {
    int32_t entries = 0;  // entries of the plan's kv_indices naming the page (>= 1)
    int32_t slot = 0;     // its position in Plan::pinned_pages
  };
  absl::flat_hash_map<int32_t, Use> uses;         // every distinct page of the table
  absl::flat_hash_map<int32_t, int32_t> written;  // page -> its position in Plan::written_pages
  // The index of a table whose distinct pages are `pinned` and written pages `written`.
  static PlanPageIndex Build(const kernels::PlanSpec& spec, const std::vector<int32_t>& pinned,
                             const std::vector<int32_t>& written);
  // Host memory of an index of `distinct` pages, `written` of them written (charged with the
  // plan).
  static uint64_t HostBytes(size_t distinct, size_t written);
};

struct Plan {
  std::string id;
  std::shared_ptr<Pool> pool;
  std::unique_ptr<kernels::PreparedPlan> prepared;
  std::vector<int32_t> pinned_pages;   // distinct pages, one reference each in the owner's
                                       // PoolAttachment::pinned ledger (unordered after an update)
  std::vector<int32_t> written_pages;  // pages that appends write (must stay unshared)
  int32_t batch_size = 0;
  int32_t num_qo_heads = 0;
  int64_t qo_tokens = 0;
  int64_t kv_tokens = 0;
  int32_t cascade_levels = 0;  // shared levels of a cascade plan (kernels/cascade.h); 0: none
  HostCharge host_charge;      // the host memory of the page table and its copies
  std::unique_ptr<PlanPageIndex> page_index;  // built by the plan's first UpdatePlan
};

// A checked UpdatePlan (CheckUpdatePlan, request_rules.h; attnd.proto PlanDelta): the updated
// table and everything that changes with it, decided before anything changes.
struct PlanUpdate {
  bool changes = false;    // false: no deltas (nothing below is set)
  kernels::PlanSpec spec;  // the updated table
  int32_t batch_size = 0;
  int64_t qo_tokens = 0;
  int64_t kv_tokens = 0;
  // A page a delta names, where it names it (for CheckPlanUpdatePages' messages).
  struct NamedPage {
    int32_t page = 0;
    int32_t delta = 0;     // index in UpdatePlanRequest.deltas
    int32_t position = 0;  // in grow.new_pages or join.kv_indices; -1: a page the request had
    bool join = false;     // join.kv_indices (else grow.new_pages / the grown request's own page)
    int32_t request = -1;  // the grow's request (its index before the update); -1 for a join
  };
  std::vector<NamedPage> named;          // every page of grow.new_pages and join.kv_indices
  std::vector<NamedPage> newly_written;  // pages the plan's appends start to write
  std::vector<int32_t> no_longer_written;
  std::vector<int32_t> pin;    // pages the plan starts to use: pinned before the table changes
  std::vector<int32_t> unpin;  // pages it stops using: unpinned once it changed
  // Entries naming each page the deltas touch, after the update minus before (pages of `pin`
  // and `unpin` included).
  absl::flat_hash_map<int32_t, int32_t> entry_changes;
  // The plan's index when it has none yet (its first update), built by the check.
  std::unique_ptr<PlanPageIndex> new_index;
};

// The host memory of a plan after `update` (PlanHostBytes' rule for its table, with the page
// index and the backend's second image), which the caller charges before applying it.
uint64_t UpdatedPlanHostBytes(const Plan& plan, const PlanUpdate& update);

// Applies a checked update to `plan` (a plan of `session_id`): under the pool's lock, checks its
// named pages (CheckPlanUpdatePages) and pins the pages it adds; then the backend updates the
// prepared plan in `stream`'s order (Backend::UpdatePlan); then the pages it no longer uses are
// unpinned and the plan's fields, index and host charge (`extra_charge`: the growth of its
// UpdatedPlanHostBytes, charged) follow. On any error nothing changed (the pins taken are
// dropped again).
absl::Status ApplyPlanUpdate(Plan& plan, PlanUpdate update, const std::string& session_id,
                             kernels::Backend& backend, kernels::Stream* stream,
                             uint64_t host_bytes, HostCharge extra_charge, HostBudget& budget);

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
