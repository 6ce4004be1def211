#include "server/core/plan.h"

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cascade.h"
#include "server/core/request_rules.h"
#include "server/core/validation.h"

namespace attnd::server {

namespace {

// int32 entries of a table of `indices` page entries and `per_request` indptr, last_page_len
// and qo_indptr entries: the spec, `backend_copies` copies in the backend (the CUDA upload
// image, and its second image once the plan was updated; the CPU plan's spec), the distinct and
// written page lists.
uint64_t TableInts(uint64_t indices, uint64_t per_request, uint64_t backend_copies) {
  return (3 + backend_copies) * indices + (2 + backend_copies) * per_request;
}

}  // namespace

uint64_t PlanHostBytes(const v1::CreatePlanRequest& request, const ValidatedPlan& validated) {
  const uint64_t indices = static_cast<uint64_t>(request.kv_indices_size());
  const uint64_t per_request = static_cast<uint64_t>(request.kv_indptr_size()) +
                               static_cast<uint64_t>(request.kv_last_page_len_size()) +
                               static_cast<uint64_t>(request.qo_indptr_size());
  uint64_t ints = TableInts(indices, per_request, 1);
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

namespace {

// Drops one pin of `session_id` per listed page of `pool` (if the session is still attached).
void ReleasePins(Pool& pool, const std::string& session_id, absl::Span<const int32_t> pages) {
  if (pages.empty()) return;
  absl::MutexLock lock(&pool.mu);
  auto it = pool.attachments.find(session_id);
  // A detached session's ledgers were released wholesale already.
  if (it == pool.attachments.end()) return;
  (void)pool.allocator.Release(pages, it->second.pinned);
}

// Removes the page at `slot` of `pages` by moving the last page there; `moved(page, slot)` is
// told where that page went.
template <typename Moved>
void SwapRemove(std::vector<int32_t>& pages, int32_t slot, Moved moved) {
  const int32_t last = static_cast<int32_t>(pages.size()) - 1;
  if (slot != last) {
    pages[slot] = pages[last];
    moved(pages[slot], slot);
  }
  pages.pop_back();
}

}  // namespace

void UnpinPlan(const Plan& plan, const std::string& session_id) {
  if (plan.pool == nullptr) return;
  ReleasePins(*plan.pool, session_id, plan.pinned_pages);
}

PlanPageIndex PlanPageIndex::Build(const kernels::PlanSpec& spec,
                                   const std::vector<int32_t>& pinned,
                                   const std::vector<int32_t>& written) {
  PlanPageIndex index;
  index.uses.reserve(pinned.size());
  for (size_t slot = 0; slot < pinned.size(); ++slot) {
    index.uses[pinned[slot]] = {0, static_cast<int32_t>(slot)};
  }
  for (const int32_t page : spec.kv_indices) ++index.uses[page].entries;
  index.written.reserve(written.size());
  for (size_t slot = 0; slot < written.size(); ++slot) {
    index.written[written[slot]] = static_cast<int32_t>(slot);
  }
  return index;
}

uint64_t PlanPageIndex::HostBytes(size_t distinct, size_t written) {
  // Hash-map slots (key, value, control byte) at up to half occupancy after growth.
  return 32 * static_cast<uint64_t>(distinct) + 16 * static_cast<uint64_t>(written);
}

uint64_t UpdatedPlanHostBytes(const Plan& plan, const PlanUpdate& update) {
  const kernels::PlanSpec& spec = update.spec;
  const uint64_t indices = spec.kv_indices.size();
  const uint64_t per_request =
      spec.kv_indptr.size() + spec.kv_last_page_len.size() + spec.qo_indptr.size();
  const size_t distinct = plan.pinned_pages.size() + update.pin.size() - update.unpin.size();
  const size_t written =
      plan.written_pages.size() + update.newly_written.size() - update.no_longer_written.size();
  return sizeof(int32_t) * TableInts(indices, per_request, 2) + 4096 +
         PlanPageIndex::HostBytes(distinct, written);
}

absl::Status ApplyPlanUpdate(Plan& plan, PlanUpdate update, const std::string& session_id,
                             kernels::Backend& backend, kernels::Stream* stream,
                             uint64_t host_bytes, HostCharge extra_charge, HostBudget& budget) {
  Pool& pool = *plan.pool;
  {
    absl::MutexLock lock(&pool.mu);
    auto it = pool.attachments.find(session_id);
    if (it == pool.attachments.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "plan '", plan.id, "': this session is no longer attached to pool '", pool.name(), "'"));
    }
    PoolAttachment& mine = it->second;
    if (auto s = CheckPlanUpdatePages(update, mine, pool.allocator, pool.name()); !s.ok()) {
      return s;
    }
    if (auto s = pool.SizeLedgers(mine, budget); !s.ok()) return s;
    if (auto s = pool.allocator.AddReferences(update.pin, mine.pinned, "the pages the update adds");
        !s.ok()) {
      return s;
    }
  }
  // The table changes in the stream's order; the old one stays valid for work enqueued before.
  if (auto s = backend.UpdatePlan(plan.prepared, std::move(update.spec), stream); !s.ok()) {
    ReleasePins(pool, session_id, update.pin);
    return absl::Status(s.code(), absl::StrCat("updating the plan: ", s.message()));
  }
  ReleasePins(pool, session_id, update.unpin);

  // The page lists and their index follow the table.
  if (update.new_index != nullptr) plan.page_index = std::move(update.new_index);
  PlanPageIndex& index = *plan.page_index;
  for (const auto& [page, change] : update.entry_changes) {
    if (change == 0) continue;
    auto it = index.uses.find(page);
    if (it == index.uses.end()) {  // newly pinned
      index.uses[page] = {change, static_cast<int32_t>(plan.pinned_pages.size())};
      plan.pinned_pages.push_back(page);
      continue;
    }
    it->second.entries += change;
    if (it->second.entries > 0) continue;
    const int32_t slot = it->second.slot;
    index.uses.erase(it);
    SwapRemove(plan.pinned_pages, slot,
               [&](int32_t moved, int32_t to) { index.uses[moved].slot = to; });
  }
  for (const int32_t page : update.no_longer_written) {
    auto it = index.written.find(page);
    if (it == index.written.end()) continue;
    const int32_t slot = it->second;
    index.written.erase(it);
    SwapRemove(plan.written_pages, slot,
               [&](int32_t moved, int32_t to) { index.written[moved] = to; });
  }
  for (const PlanUpdate::NamedPage& w : update.newly_written) {
    index.written[w.page] = static_cast<int32_t>(plan.written_pages.size());
    plan.written_pages.push_back(w.page);
  }
  plan.batch_size = update.batch_size;
  plan.qo_tokens = update.qo_tokens;
  plan.kv_tokens = update.kv_tokens;
  plan.host_charge.Absorb(std::move(extra_charge));
  plan.host_charge.ReleaseAbove(host_bytes);
  return absl::OkStatus();
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
