#include "server/core/request_rules.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/cascade.h"
#include "server/core/dtype_convert.h"
#include "server/core/validation.h"

namespace attnd::server {

namespace {

// The cascade levels of a plan (attnd.proto CascadeLevel), checked against the pool and against
// the plan's own table (`plan`, validated): each level's page table, its groups covering the
// batch's query rows in whole requests, its pages not written by the plan's appends. Fills
// plan.spec.cascade_levels and adds the levels' pages to plan.distinct_pages.
absl::Status CheckCascadeLevels(const v1::CreatePlanRequest& request, const Pool& pool,
                                ValidatedPlan& plan) {
  const auto& levels = request.cascade_levels();
  if (levels.size() > kMaxCascadeLevels) {
    return absl::InvalidArgumentError(absl::StrCat("cascade_levels has ", levels.size(),
                                                   " levels, more than the limit of ",
                                                   kMaxCascadeLevels));
  }
  kernels::PlanSpec& spec = plan.spec;
  const int64_t rows = spec.qo_tokens();
  for (int l = 0; l < levels.size(); ++l) {
    const v1::CascadeLevel& level = levels[l];
    const std::string prefix = absl::StrCat("cascade_levels[", l, "].");
    auto kv_len =
        ValidatePageTable({prefix, "group", "num_groups"}, level.kv_indptr(), level.kv_indices(),
                          level.kv_last_page_len(), pool.geometry(), pool.name(), kMaxBatchSize);
    if (!kv_len.ok()) return kv_len.status();
    // qo_indptr: [num_groups + 1], from 0, never decreasing, to qo_tokens, each entry a request
    // boundary of the plan (both lists are non-decreasing: one walk).
    const auto& qo = level.qo_indptr();
    const int64_t groups = static_cast<int64_t>(kv_len->size());
    if (qo.size() != groups + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          prefix, "qo_indptr has ", qo.size(), " entries, expected num_groups + 1 = ", groups + 1));
    }
    size_t boundary = 0;
    for (int g = 0; g <= groups; ++g) {
      if (g > 0 && qo[g] < qo[g - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            prefix, "qo_indptr[", g, "]=", qo[g], " is less than ", prefix, "qo_indptr[", g - 1,
            "]=", qo[g - 1], "; qo_indptr must be non-decreasing"));
      }
      while (boundary < spec.qo_indptr.size() && spec.qo_indptr[boundary] < qo[g]) ++boundary;
      if (boundary == spec.qo_indptr.size() || spec.qo_indptr[boundary] != qo[g]) {
        return absl::InvalidArgumentError(absl::StrCat(
            prefix, "qo_indptr[", g, "]=", qo[g],
            " is not a request boundary of the plan's qo_indptr (a group holds whole requests, "
            "query rows 0..",
            rows, ")"));
      }
    }
    if (qo[0] != 0 || qo[groups] != rows) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "qo_indptr runs from ", qo[0], " to ", qo[groups],
                       "; it must cover the plan's query rows 0..", rows));
    }
    // Read only: no page of a level may be one the plan's appends write.
    for (int i = 0; i < level.kv_indices_size(); ++i) {
      const int32_t page = level.kv_indices(i);
      if (std::binary_search(plan.written_pages.begin(), plan.written_pages.end(), page)) {
        return absl::InvalidArgumentError(absl::StrCat(
            prefix, "kv_indices[", i, "]=", page, ": page ", page,
            " is appended to by the plan's own pages (the last level); a level's pages are "
            "read only"));
      }
    }
    kernels::CascadeLevel& out = spec.cascade_levels.emplace_back();
    out.qo_indptr.assign(qo.begin(), qo.end());
    out.kv_indptr.assign(level.kv_indptr().begin(), level.kv_indptr().end());
    out.kv_indices.assign(level.kv_indices().begin(), level.kv_indices().end());
    out.kv_last_page_len.assign(level.kv_last_page_len().begin(), level.kv_last_page_len().end());
    plan.distinct_pages.insert(plan.distinct_pages.end(), out.kv_indices.begin(),
                               out.kv_indices.end());
  }
  if (!levels.empty()) {
    std::sort(plan.distinct_pages.begin(), plan.distinct_pages.end());
    plan.distinct_pages.erase(std::unique(plan.distinct_pages.begin(), plan.distinct_pages.end()),
                              plan.distinct_pages.end());
  }
  return absl::OkStatus();
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// What a delta of an UpdatePlan names a page as, for messages: "deltas[2].grow.new_pages[0]",
// "deltas[0].join.kv_indices[3]", or a page the grown request had ("deltas[1].grow.request=4:
// its page").
std::string NamedPageField(const PlanUpdate::NamedPage& p) {
  if (p.join) return absl::StrCat("deltas[", p.delta, "].join.kv_indices[", p.position, "]");
  if (p.position >= 0)
    return absl::StrCat("deltas[", p.delta, "].grow.new_pages[", p.position, "]");
  return absl::StrCat("deltas[", p.delta, "].grow.request=", p.request, ": its page");
}

// The request `request` a grow or leave names (`what`: "grow" / "leave"), in the batch of
// `batch` requests before the update and named by no other delta (named_by: the delta naming
// each request, -1 = none).
absl::Status NameRequest(int delta, absl::string_view what, int32_t request, int32_t batch,
                         std::vector<int32_t>& named_by) {
  if (request < 0 || request >= batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("deltas[", delta, "].", what, ".request=", request, " is outside 0..",
                     batch - 1, " (the plan's batch before the update)"));
  }
  if (named_by[request] >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "deltas[", delta, "].", what, ".request=", request, ": request ", request,
        " is also named by deltas[", named_by[request], "]; a request takes one delta per update"));
  }
  named_by[request] = delta;
  return absl::OkStatus();
}

// A grow's or a join's qo_len for a request of `kv_len` tokens after the update: decode plans
// take 0 or 1 (their one row), prefill plans 0..kv_len. The request's rows.
absl::StatusOr<int64_t> CheckQoLen(bool decode, int delta, absl::string_view what, int32_t qo_len,
                                   int64_t kv_len) {
  if (decode) {
    if (qo_len != 0 && qo_len != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("deltas[", delta, "].", what, ".qo_len=", qo_len,
                       ": a decode plan's requests have exactly one query row (leave it 0, or 1)"));
    }
    return 1;
  }
  if (qo_len < 0 || qo_len > kv_len) {
    return absl::InvalidArgumentError(absl::StrCat("deltas[", delta, "].", what, ".qo_len=", qo_len,
                                                   " is outside 0..", kv_len,
                                                   " (the request's kv_len after the update)"));
  }
  return qo_len;
}

}  // namespace

absl::StatusOr<PlanUpdate> CheckUpdatePlan(const v1::UpdatePlanRequest& request, const Plan& plan) {
  if (plan.cascade_levels > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("plan '", plan.id, "' is a cascade plan (", plan.cascade_levels,
                     " cascade_levels); cascade plans cannot be updated: create a new plan"));
  }
  const kernels::PlanSpec& old = plan.prepared->spec();
  if (!old.custom_mask.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("plan '", plan.id,
                     "' has a custom_mask; plans with a custom mask cannot be updated: create a "
                     "new plan"));
  }
  PlanUpdate update;
  if (request.deltas_size() == 0) return update;  // nothing to change
  update.changes = true;
  const PoolGeometry& pool = plan.pool->geometry();
  const std::string& pool_name = plan.pool->name();
  const bool decode = old.kind == kernels::AttentionKind::kDecode;
  const int32_t batch = old.batch_size();
  const int32_t page_size = old.page_size;
  std::vector<int32_t> named_by(static_cast<size_t>(batch), -1);
  // Per grow (by delta index): the request's kv_len and query rows after the update.
  struct Grown {
    int64_t kv_len = 0;
    int64_t qo_len = 0;
  };
  absl::flat_hash_map<int, Grown> grown;
  int64_t kv_tokens = plan.kv_tokens;
  int64_t entries = static_cast<int64_t>(old.kv_indices.size());
  int32_t leaving = 0, joining = 0;
  auto name_pages = [&](const auto& pages, int delta, bool join, int32_t request) {
    for (int k = 0; k < pages.size(); ++k) {
      update.named.push_back({pages[k], delta, k, join, request});
      ++update.entry_changes[pages[k]];
    }
  };
  for (int i = 0; i < request.deltas_size(); ++i) {
    const v1::PlanDelta& delta = request.deltas(i);
    const std::string prefix = absl::StrCat("deltas[", i, "].");
    switch (delta.change_case()) {
      case v1::PlanDelta::kGrow: {
        const v1::PlanDelta::Grow& g = delta.grow();
        if (auto s = NameRequest(i, "grow", g.request(), batch, named_by); !s.ok()) return s;
        const int32_t r = g.request();
        if (g.num_tokens() < 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              prefix, "grow.num_tokens=", g.num_tokens(),
              " must be >= 0 (a request's length never shrinks; it may leave and join again)"));
        }
        const int64_t before = old.kv_len(r);
        const int64_t after = before + g.num_tokens();
        if (after > kInt32Max) {
          return absl::InvalidArgumentError(
              absl::StrCat(prefix, "grow.num_tokens=", g.num_tokens(), ": request ", r,
                           " would have kv_len=", after, ", more than ", kInt32Max));
        }
        const int64_t have = static_cast<int64_t>(old.kv_indptr[r + 1]) - old.kv_indptr[r];
        const int64_t need = (after + page_size - 1) / page_size;
        if (g.new_pages_size() != need - have) {
          return absl::InvalidArgumentError(absl::StrCat(
              prefix, "grow.new_pages has ", g.new_pages_size(), " entries; request ", r,
              " grows from kv_len ", before, " (", have, " pages) to ", after,
              " and needs exactly ", need - have, " new pages (page_size ", page_size, ")"));
        }
        const absl::Span<const int32_t> pages(g.new_pages().data(), g.new_pages_size());
        if (auto s = ValidatePageIds(pages, absl::StrCat(prefix, "grow.new_pages"), pool.num_pages,
                                     pool_name);
            !s.ok()) {
          return s;
        }
        auto qo_len = CheckQoLen(decode, i, "grow", g.qo_len(), after);
        if (!qo_len.ok()) return qo_len.status();
        grown[i] = {after, *qo_len};
        name_pages(g.new_pages(), i, /*join=*/false, r);
        kv_tokens += g.num_tokens();
        entries += g.new_pages_size();
        break;
      }
      case v1::PlanDelta::kLeave: {
        const int32_t r = delta.leave().request();
        if (auto s = NameRequest(i, "leave", r, batch, named_by); !s.ok()) return s;
        for (int32_t e = old.kv_indptr[r]; e < old.kv_indptr[r + 1]; ++e) {
          --update.entry_changes[old.kv_indices[e]];
        }
        kv_tokens -= old.kv_len(r);
        entries -= old.kv_indptr[r + 1] - old.kv_indptr[r];
        ++leaving;
        break;
      }
      case v1::PlanDelta::kJoin: {
        const v1::PlanDelta::Join& j = delta.join();
        if (j.kv_indices_size() == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(prefix, "join.kv_indices is empty; a request needs >= 1 page"));
        }
        const absl::Span<const int32_t> pages(j.kv_indices().data(), j.kv_indices_size());
        if (auto s = ValidatePageIds(pages, absl::StrCat(prefix, "join.kv_indices"), pool.num_pages,
                                     pool_name);
            !s.ok()) {
          return s;
        }
        if (j.kv_last_page_len() < 1 || j.kv_last_page_len() > page_size) {
          return absl::InvalidArgumentError(
              absl::StrCat(prefix, "join.kv_last_page_len=", j.kv_last_page_len(),
                           " is outside 1..page_size (", page_size, ")"));
        }
        const int64_t kv_len =
            static_cast<int64_t>(j.kv_indices_size() - 1) * page_size + j.kv_last_page_len();
        if (kv_len > kInt32Max) {
          return absl::InvalidArgumentError(
              absl::StrCat(prefix, "join.kv_indices has ", j.kv_indices_size(),
                           " pages: kv_len=", kv_len, ", more than ", kInt32Max));
        }
        if (auto qo_len = CheckQoLen(decode, i, "join", j.qo_len(), kv_len); !qo_len.ok()) {
          return qo_len.status();
        }
        name_pages(j.kv_indices(), i, /*join=*/true, /*request=*/-1);
        kv_tokens += kv_len;
        entries += j.kv_indices_size();
        ++joining;
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("deltas[", i, "] sets no change (grow, leave or join)"));
    }
  }
  const int64_t new_batch = static_cast<int64_t>(batch) - leaving + joining;
  if (new_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the update leaves the plan without requests (all ", batch,
                     " leave); delete the plan (DeletePlan) instead"));
  }
  if (new_batch > kMaxBatchSize) {
    return absl::InvalidArgumentError(absl::StrCat("the update gives the plan ", new_batch,
                                                   " requests, more than the limit of ",
                                                   kMaxBatchSize));
  }
  if (entries > kInt32Max) {
    return absl::InvalidArgumentError(absl::StrCat("the updated plan would have ", entries,
                                                   " page entries, more than ", kInt32Max));
  }

  // The updated table: the requests that stay, in order, then the joined ones; and the pages
  // the changed requests' appends write before (`was_written`) and after (`writes`).
  kernels::PlanSpec& spec = update.spec;
  spec.kind = old.kind;
  spec.num_qo_heads = old.num_qo_heads;
  spec.num_kv_heads = old.num_kv_heads;
  spec.head_dim = old.head_dim;
  spec.page_size = page_size;
  spec.kv_dtype = old.kv_dtype;
  spec.q_dtype = old.q_dtype;
  spec.kv_indptr.reserve(static_cast<size_t>(new_batch) + 1);
  spec.qo_indptr.reserve(static_cast<size_t>(new_batch) + 1);
  spec.kv_last_page_len.reserve(static_cast<size_t>(new_batch));
  spec.kv_indices.reserve(static_cast<size_t>(entries));
  spec.kv_indptr.push_back(0);
  spec.qo_indptr.push_back(0);
  int64_t qo_tokens = 0;
  std::vector<int32_t> was_written;
  struct Write {
    PlanUpdate::NamedPage page;
    int32_t writer;  // the request of the updated plan
  };
  std::vector<Write> writes;
  // Ends the row of a request whose pages were appended from `list_begin`: its last page's
  // tokens and query rows. When `changed` (by delta `delta`: a grow of `request` or a join),
  // the pages it writes go to `writes`; those at slots from `first_new` on are the delta's own
  // (grow.new_pages / join.kv_indices from index 0).
  auto add_request = [&](int64_t kv_len, int64_t qo_len, bool changed, int delta, bool join,
                         int32_t request, int64_t list_begin, int64_t first_new) -> absl::Status {
    const int64_t pages = static_cast<int64_t>(spec.kv_indices.size()) - list_begin;
    spec.kv_last_page_len.push_back(static_cast<int32_t>(kv_len - (pages - 1) * page_size));
    qo_tokens += qo_len;
    if (qo_tokens > kInt32Max) {
      return absl::InvalidArgumentError(absl::StrCat("the updated plan would have ", qo_tokens,
                                                     " query rows, more than ", kInt32Max));
    }
    spec.qo_indptr.push_back(static_cast<int32_t>(qo_tokens));
    spec.kv_indptr.push_back(static_cast<int32_t>(spec.kv_indices.size()));
    if (!changed) return absl::OkStatus();
    const SlotRange slots = WrittenSlots(kv_len, qo_len, page_size);
    const int32_t writer = static_cast<int32_t>(spec.kv_last_page_len.size()) - 1;
    for (int64_t slot = slots.first; slot <= slots.last; ++slot) {
      const int32_t position = static_cast<int32_t>(slot >= first_new ? slot - first_new : -1);
      writes.push_back(
          {{spec.kv_indices[list_begin + slot], delta, position, join, request}, writer});
    }
    return absl::OkStatus();
  };
  for (int32_t b = 0; b < batch; ++b) {
    const int i = named_by[b];
    const int64_t kv_len = old.kv_len(b);
    const int64_t qo_len = static_cast<int64_t>(old.qo_indptr[b + 1]) - old.qo_indptr[b];
    if (i >= 0) {  // a grown or leaving request no longer writes what it wrote
      const SlotRange slots = WrittenSlots(kv_len, qo_len, page_size);
      for (int64_t slot = slots.first; slot <= slots.last; ++slot) {
        was_written.push_back(old.kv_indices[old.kv_indptr[b] + slot]);
      }
    }
    if (i >= 0 && request.deltas(i).has_leave()) continue;
    const int64_t list_begin = static_cast<int64_t>(spec.kv_indices.size());
    spec.kv_indices.insert(spec.kv_indices.end(), old.kv_indices.begin() + old.kv_indptr[b],
                           old.kv_indices.begin() + old.kv_indptr[b + 1]);
    absl::Status s;
    if (i >= 0) {
      const v1::PlanDelta::Grow& g = request.deltas(i).grow();
      const int64_t have = old.kv_indptr[b + 1] - old.kv_indptr[b];
      spec.kv_indices.insert(spec.kv_indices.end(), g.new_pages().begin(), g.new_pages().end());
      const Grown& after = grown[i];
      s = add_request(after.kv_len, after.qo_len, /*changed=*/true, i, /*join=*/false, b,
                      list_begin, have);
    } else {
      s = add_request(kv_len, qo_len, /*changed=*/false, -1, false, b, list_begin, 0);
    }
    if (!s.ok()) return s;
  }
  for (int i = 0; i < request.deltas_size(); ++i) {
    if (!request.deltas(i).has_join()) continue;
    const v1::PlanDelta::Join& j = request.deltas(i).join();
    const int64_t list_begin = static_cast<int64_t>(spec.kv_indices.size());
    spec.kv_indices.insert(spec.kv_indices.end(), j.kv_indices().begin(), j.kv_indices().end());
    const int64_t kv_len =
        static_cast<int64_t>(j.kv_indices_size() - 1) * page_size + j.kv_last_page_len();
    const int64_t qo_len = decode ? 1 : j.qo_len();
    if (auto s = add_request(kv_len, qo_len, /*changed=*/true, i, /*join=*/true, -1, list_begin, 0);
        !s.ok()) {
      return s;
    }
  }
  if (qo_tokens < 1) {
    return absl::InvalidArgumentError(
        "the updated plan has no query rows (every request's qo_len is 0)");
  }
  update.batch_size = static_cast<int32_t>(new_batch);
  update.qo_tokens = qo_tokens;
  update.kv_tokens = kv_tokens;

  // The plan's page index: kept by the plan after its first update, built now before it.
  const PlanPageIndex* index = plan.page_index.get();
  if (index == nullptr) {
    update.new_index = std::make_unique<PlanPageIndex>(
        PlanPageIndex::Build(old, plan.pinned_pages, plan.written_pages));
    index = update.new_index.get();
  }
  // Written pages: one request each. A page the changed requests wrote and still write stays.
  const absl::flat_hash_set<int32_t> was(was_written.begin(), was_written.end());
  absl::flat_hash_map<int32_t, int32_t> writer;  // page -> request of the updated plan
  for (const Write& write : writes) {
    const PlanUpdate::NamedPage& w = write.page;
    auto [it, inserted] = writer.try_emplace(w.page, write.writer);
    if (!inserted) {
      if (it->second == write.writer) continue;  // the request names the page twice
      return absl::InvalidArgumentError(absl::StrCat(
          NamedPageField(w), "=", w.page, ": page ", w.page, " would be appended to by requests ",
          it->second, " and ", write.writer, " of the updated plan"));
    }
    if (was.contains(w.page)) continue;
    if (index->written.contains(w.page)) {
      return absl::InvalidArgumentError(
          absl::StrCat(NamedPageField(w), "=", w.page, ": page ", w.page,
                       " is appended to by another request of the plan"));
    }
    update.newly_written.push_back(w);
  }
  for (const int32_t page : was) {
    if (!writer.contains(page)) update.no_longer_written.push_back(page);
  }
  // Pins: pages whose entries go from none to some, or from some to none.
  for (const auto& [page, change] : update.entry_changes) {
    if (change == 0) continue;
    auto it = index->uses.find(page);
    const int32_t before = it == index->uses.end() ? 0 : it->second.entries;
    const int32_t after = before + change;
    if (before == 0 && after > 0) update.pin.push_back(page);
    if (before > 0 && after == 0) update.unpin.push_back(page);
  }
  return update;
}

absl::Status CheckPlanUpdatePages(const PlanUpdate& update, const PoolAttachment& mine,
                                  const PageAllocator& allocator, absl::string_view pool_name) {
  for (const PlanUpdate::NamedPage& p : update.named) {
    if (mine.held.count(p.page) <= 0) return PageNotHeldError(NamedPageField(p), p.page, pool_name);
  }
  for (const PlanUpdate::NamedPage& p : update.newly_written) {
    if (auto s = CheckPagesUnshared({p.page}, allocator, mine.held, mine.pinned); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat(NamedPageField(p), "=", p.page, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ValidatedPlan> CheckCreatePlan(const v1::CreatePlanRequest& request,
                                              const Pool& pool) {
  auto plan = ValidatePlan(request, pool.geometry(), pool.name());
  if (!plan.ok()) return plan.status();
  if (auto s = CheckCascadeLevels(request, pool, *plan); !s.ok()) return s;
  return plan;
}

absl::Status CheckPlanPages(const ValidatedPlan& plan, const PoolAttachment& mine,
                            const PageAllocator& allocator, absl::string_view pool_name) {
  if (auto s = CheckPagesHeld(plan.spec.kv_indices, "kv_indices", mine.held, pool_name); !s.ok()) {
    return s;
  }
  for (size_t l = 0; l < plan.spec.cascade_levels.size(); ++l) {
    if (auto s = CheckPagesHeld(plan.spec.cascade_levels[l].kv_indices,
                                absl::StrCat("cascade_levels[", l, "].kv_indices"), mine.held,
                                pool_name);
        !s.ok()) {
      return s;
    }
  }
  return CheckPagesUnshared(plan.written_pages, allocator, mine.held, mine.pinned);
}
namespace {

// Room a reply needs around its payload (field tags, lengths, the Session stream's envelope).
constexpr uint64_t kReplyOverheadBytes = 256;

bool HasData(const v1::Tensor& t) { return t.data_case() != v1::Tensor::DATA_NOT_SET; }

absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// `completion` is a Completion value, and `wait_event_id` (if set) names an event of this
// session: returns the event (null when none is named).
absl::StatusOr<kernels::Event*> CheckCompletion(EventMap& events, const std::string& wait_event_id,
                                                v1::Completion completion) {
  if (completion != v1::COMPLETION_SYNC && completion != v1::COMPLETION_ASYNC) {
    return absl::InvalidArgumentError(
        absl::StrCat("completion=", static_cast<int>(completion), " is not a Completion value"));
  }
  if (wait_event_id.empty()) return nullptr;
  auto it = events.find(wait_event_id);
  if (it == events.end()) return NotOwnedError("wait_event_id", wait_event_id, kNoSuchEvent);
  return it->second.get();
}

// Bytes of the tensors a Run or RunRagged returns inline (o when it names no buffer, lse likewise
// when asked for), from the shapes its plan or its q gives: what the reply will carry, known
// before anything runs.
template <typename Request>
uint64_t InlineOutputBytes(const Request& request, int64_t qo_tokens, int64_t num_qo_heads,
                           int64_t head_dim) {
  const uint64_t rows = static_cast<uint64_t>(qo_tokens) * static_cast<uint64_t>(num_qo_heads);
  uint64_t bytes = 0;
  if (!HasData(request.o())) {
    // o has q's dtype (an unknown one is refused later; count it as the widest).
    const uint64_t elem =
        request.q().dtype() == v1::DTYPE_FLOAT16 || request.q().dtype() == v1::DTYPE_BFLOAT16 ? 2
                                                                                              : 4;
    bytes += rows * static_cast<uint64_t>(head_dim) * elem;
  }
  if (request.options().return_lse() && !HasData(request.lse())) bytes += rows * sizeof(float);
  return bytes;
}

constexpr std::string_view kInlineOutputsAdvice =
    "write o and lse to registered buffers instead of receiving them inline";

// COMPLETION_ASYNC replies before the work is done: o (and lse when asked for) must go to
// registered buffers.
template <typename Request>
absl::Status CheckAsyncOutputs(const Request& request, bool async) {
  if (async && request.o().data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "completion=COMPLETION_ASYNC needs o in a registered buffer (inline outputs would need "
        "a synchronous copy); set o.buffer or use COMPLETION_SYNC");
  }
  if (async && request.options().return_lse() && request.lse().data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "completion=COMPLETION_ASYNC with options.return_lse needs lse in a registered buffer");
  }
  return absl::OkStatus();
}

// o (and lse with options.return_lse) of a Run or RunRagged: buffer slices of q's shape and
// dtype, or inline in `response`; lse given without return_lse is refused.
template <typename Request, typename Response>
absl::Status BindAttentionOutputs(TensorBindings& bindings, const Request& request,
                                  kernels::DType q_dtype, const std::vector<int64_t>& q_shape,
                                  Response* response, int* o_index, int* lse_index) {
  const bool want_lse = request.options().return_lse();
  if (!want_lse && HasData(request.lse())) {
    return absl::InvalidArgumentError("lse is set but options.return_lse is false");
  }
  auto o = bindings.AddOutput(HasData(request.o()) ? &request.o() : nullptr, "o", q_dtype, q_shape,
                              response->mutable_o());
  if (!o.ok()) return o.status();
  *o_index = *o;
  if (want_lse) {
    auto lse = bindings.AddOutput(HasData(request.lse()) ? &request.lse() : nullptr, "lse",
                                  kernels::DType::kFloat32, {q_shape[0], q_shape[1]},
                                  response->mutable_lse());
    if (!lse.ok()) return lse.status();
    *lse_index = *lse;
  }
  if (HasData(request.o())) response->clear_o();  // o goes to the client's buffer
  return absl::OkStatus();
}

// k and v: both or neither, [qo_tokens, num_kv_heads, head_dim] in the pool's kv dtype, or on an
// fp8 pool both in float32, float16 or bfloat16 (quantized on the way in; *rows_dtype says which).
absl::Status BindKv(TensorBindings& bindings, const Plan& plan, const v1::Tensor& k,
                    const v1::Tensor& v, bool required, int* k_index, int* v_index,
                    kernels::DType* rows_dtype) {
  *k_index = *v_index = -1;
  const bool has_k = HasData(k), has_v = HasData(v);
  if (!has_k && !has_v && !required) return absl::OkStatus();
  if (!has_k) {
    return absl::InvalidArgumentError(required ? "k has no data: set inline_data or buffer"
                                               : "v is set but k is not; give both or neither");
  }
  if (!has_v) {
    return absl::InvalidArgumentError(required ? "v has no data: set inline_data or buffer"
                                               : "k is set but v is not; give both or neither");
  }
  const PoolGeometry& g = plan.pool->geometry();
  const std::vector<int64_t> shape = {plan.qo_tokens, g.num_kv_heads, g.head_dim};
  *rows_dtype = g.kv_dtype;  // anything else is refused by AddInput, naming k.dtype
  if (auto t = FromProtoDType(k.dtype(), "k.dtype");
      t.ok() && kernels::AppendRowsAccepted(g.kv_dtype, *t)) {
    *rows_dtype = *t;
  }
  auto ki = bindings.AddInput(k, "k", *rows_dtype, shape);
  if (!ki.ok()) return ki.status();
  auto vi = bindings.AddInput(v, "v", *rows_dtype, shape);
  if (!vi.ok()) return vi.status();
  *k_index = *ki;
  *v_index = *vi;
  return absl::OkStatus();
}

// Inline sinks larger than this are refused: the CUDA kernels take sink * log2(e), which must
// stay finite (and a sink that large outweighs every logit anyway).
constexpr float kMaxSinkMagnitude = 1e30f;

// sinks (RunRequest / RunRaggedRequest): unset, or float32 [num_qo_heads], inline or a buffer
// slice (checked as q is). Inline values must be finite and at most kMaxSinkMagnitude in
// magnitude; a slice's values are read when the run executes (after wait_event_id), not here.
absl::Status BindSinks(TensorBindings& bindings, const v1::Tensor& sinks, int64_t num_qo_heads,
                       int* index) {
  *index = -1;
  if (!HasData(sinks)) return absl::OkStatus();
  auto bound = bindings.AddInput(sinks, "sinks", kernels::DType::kFloat32, {num_qo_heads});
  if (!bound.ok()) return bound.status();
  if (sinks.data_case() == v1::Tensor::kInlineData) {
    const std::string& bytes = sinks.inline_data();  // num_qo_heads floats (AddInput checked)
    for (int64_t h = 0; h < num_qo_heads; ++h) {
      float x;
      std::memcpy(&x, bytes.data() + h * sizeof(float), sizeof(float));
      if (!std::isfinite(x) || std::fabs(x) > kMaxSinkMagnitude) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sinks[", h, "]=", x, " must be finite with |sinks[h]| <= ", kMaxSinkMagnitude));
      }
    }
  }
  *index = *bound;
  return absl::OkStatus();
}

// A tensor of a merge, by its field name, and its binding.
struct MergeTensor {
  absl::string_view name;
  const v1::Tensor* tensor;
  int index = -1;
};

std::string Placement(const MergeTensor& t, uint64_t bytes) {
  return absl::StrCat(t.name, " (buffer '", Echo(t.tensor->buffer().buffer_id()),
                      "', offset_bytes=", t.tensor->buffer().offset_bytes(), ", ", bytes,
                      " bytes)");
}

// An output of a merge shares no byte with an input, unless it is exactly that input's bytes (in
// place: every row reads its inputs before it writes), nor with another output.
absl::Status CheckMergeOverlaps(const TensorBindings& bindings,
                                std::span<const MergeTensor> outputs,
                                std::span<const MergeTensor> inputs) {
  const auto overlap = [](const TensorBindings::SliceBytes& a,
                          const TensorBindings::SliceBytes& b) {
    return a.first != nullptr && b.first != nullptr && a.bytes > 0 && b.bytes > 0 &&
           a.first < b.first + b.bytes && b.first < a.first + a.bytes;
  };
  for (size_t o = 0; o < outputs.size(); ++o) {
    if (outputs[o].index < 0) continue;
    const TensorBindings::SliceBytes out = bindings.slice_bytes(outputs[o].index);
    for (const MergeTensor& in : inputs) {
      const TensorBindings::SliceBytes other = bindings.slice_bytes(in.index);
      if (!overlap(out, other) || (out.first == other.first && out.bytes == other.bytes)) {
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          Placement(outputs[o], out.bytes), " overlaps ", Placement(in, other.bytes),
          ": an output must be exactly an input's bytes (in place) or share none with it"));
    }
    for (size_t p = o + 1; p < outputs.size(); ++p) {
      if (outputs[p].index < 0) continue;
      const TensorBindings::SliceBytes other = bindings.slice_bytes(outputs[p].index);
      if (!overlap(out, other)) continue;
      return absl::InvalidArgumentError(absl::StrCat(Placement(outputs[o], out.bytes), " overlaps ",
                                                     Placement(outputs[p], other.bytes)));
    }
  }
  return absl::OkStatus();
}

// The rules MergeState and MergeStates share. `inputs` are (v, s) pairs in order: v_a, s_a, v_b,
// s_b for MergeState (the pair form), v, s for MergeStates (with_states).
template <typename Request, typename Response>
absl::StatusOr<MergeCall> CheckMerge(const RequestScope& scope, std::string_view command,
                                     const Request& request, std::span<MergeTensor> inputs,
                                     bool with_states, TensorBindings& bindings,
                                     Response* response) {
  MergeCall call;
  auto wait_on = CheckCompletion(scope.events, request.wait_event_id(), request.completion());
  if (!wait_on.ok()) return wait_on.status();
  call.wait_on = *wait_on;
  call.async = request.completion() == v1::COMPLETION_ASYNC;
  const bool want_s = !request.omit_s();
  if (!want_s && HasData(request.s_out())) {
    return absl::InvalidArgumentError("s_out is set but omit_s is true: unset one of them");
  }
  if (call.async && request.v_out().data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "completion=COMPLETION_ASYNC needs v_out in a registered buffer (inline outputs would "
        "need a synchronous copy); set v_out.buffer or use COMPLETION_SYNC");
  }
  if (call.async && want_s && request.s_out().data_case() != v1::Tensor::kBuffer) {
    return absl::InvalidArgumentError(
        "completion=COMPLETION_ASYNC needs s_out in a registered buffer, or omit_s");
  }

  auto shape = ValidateMergeInput(*inputs[0].tensor, inputs[0].name, with_states);
  if (!shape.ok()) return shape.status();
  const int64_t rows = shape->seq_len, heads = shape->num_heads, dim = shape->head_dim;
  const uint64_t cells = static_cast<uint64_t>(rows) * static_cast<uint64_t>(heads);
  uint64_t inline_bytes = 0;
  if (!HasData(request.v_out())) {
    inline_bytes += cells * static_cast<uint64_t>(dim) * kernels::DTypeSize(shape->dtype);
  }
  if (want_s && !HasData(request.s_out())) inline_bytes += cells * sizeof(float);
  if (auto s = CheckReplyFits(scope, command, inline_bytes,
                              "write v_out and s_out to registered buffers instead of receiving "
                              "them inline");
      !s.ok()) {
    return s;
  }

  std::vector<int64_t> v_shape = {rows, heads, dim}, s_shape = {rows, heads};
  if (with_states) {
    v_shape.insert(v_shape.begin() + 1, shape->num_states);
    s_shape.insert(s_shape.begin() + 1, shape->num_states);
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool is_v = i % 2 == 0;
    auto index =
        bindings.AddInput(*inputs[i].tensor, inputs[i].name,
                          is_v ? shape->dtype : kernels::DType::kFloat32, is_v ? v_shape : s_shape);
    if (!index.ok()) return index.status();
    inputs[i].index = *index;
  }
  MergeTensor outputs[2] = {{"v_out", &request.v_out()}, {"s_out", &request.s_out()}};
  auto v_out = bindings.AddOutput(HasData(request.v_out()) ? &request.v_out() : nullptr, "v_out",
                                  shape->dtype, {rows, heads, dim}, response->mutable_v());
  if (!v_out.ok()) return v_out.status();
  if (HasData(request.v_out())) outputs[0].index = *v_out;
  if (want_s) {
    auto s_out = bindings.AddOutput(HasData(request.s_out()) ? &request.s_out() : nullptr, "s_out",
                                    kernels::DType::kFloat32, {rows, heads}, response->mutable_s());
    if (!s_out.ok()) return s_out.status();
    call.s_out = *s_out;
    if (HasData(request.s_out())) outputs[1].index = *s_out;
  }
  if (auto s = CheckMergeOverlaps(bindings, outputs, inputs); !s.ok()) return s;
  // Outputs that go to the client's buffers are not in the reply.
  if (HasData(request.v_out())) response->clear_v();
  if (!want_s || HasData(request.s_out())) response->clear_s();

  call.v_in = inputs[0].index;
  call.s_in = inputs[1].index;
  if (!with_states) {
    call.v_in_b = inputs[2].index;
    call.s_in_b = inputs[3].index;
  }
  call.v_out = *v_out;
  kernels::MergeStatesParams& p = call.params;
  p.dtype = shape->dtype;
  p.num_rows = static_cast<int32_t>(rows);
  p.num_states = static_cast<int32_t>(shape->num_states);
  p.num_heads = static_cast<int32_t>(heads);
  p.head_dim = static_cast<int32_t>(dim);
  return call;
}

}  // namespace

absl::Status CheckReplyFits(const RequestScope& scope, std::string_view what, uint64_t bytes,
                            std::string_view advice) {
  const uint64_t max_message_bytes = scope.max_message_bytes;
  if (max_message_bytes != 0 && bytes + kReplyOverheadBytes > max_message_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(Absl(what), ": the reply would be up to ", bytes + kReplyOverheadBytes,
                     " bytes, over --max_message_bytes=", max_message_bytes, "; ", Absl(advice)));
  }
  if (scope.host == nullptr || bytes == 0) return absl::OkStatus();
  auto charge = scope.host->Charge(
      scope.usage, bytes, absl::StrCat("the inline outputs of the ", Absl(what), " reply"));
  if (!charge.ok()) return charge.status();
  if (scope.reply_charge != nullptr) *scope.reply_charge = *std::move(charge);
  return absl::OkStatus();
}

absl::StatusOr<RunCall> CheckRun(const RequestScope& scope, const Plan& plan,
                                 const v1::RunRequest& request, TensorBindings& bindings,
                                 v1::RunResponse* response) {
  RunCall call;
  call.appends = HasData(request.k()) || HasData(request.v());
  if (call.appends) {
    if (auto s = CheckPlanWritable(plan, scope.session_id); !s.ok()) return s;
  }
  call.async = request.completion() == v1::COMPLETION_ASYNC;
  if (auto s = CheckAsyncOutputs(request, call.async); !s.ok()) return s;
  if (auto s = CheckReplyFits(scope, "Run",
                              InlineOutputBytes(request, plan.qo_tokens, plan.num_qo_heads,
                                                plan.pool->geometry().head_dim),
                              kInlineOutputsAdvice);
      !s.ok()) {
    return s;
  }
  auto wait_on = CheckCompletion(scope.events, request.wait_event_id(), request.completion());
  if (!wait_on.ok()) return wait_on.status();
  call.wait_on = *wait_on;

  const PoolGeometry& g = plan.pool->geometry();
  if (auto s = ValidateLayer(request.layer(), g.num_layers); !s.ok()) return s;
  if (!HasData(request.q())) {
    return absl::InvalidArgumentError("q has no data: set inline_data or buffer");
  }
  auto q_dtype = ValidateQueryDType(request.q(), scope.backend);
  if (!q_dtype.ok()) return q_dtype.status();
  call.q_dtype = *q_dtype;
  if (const std::optional<kernels::DType>& want = plan.prepared->spec().q_dtype;
      want.has_value() && *want != call.q_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q.dtype=", ProtoDTypeName(request.q().dtype()),
        " but the plan was created with q_dtype=", ProtoDTypeName(ToProtoDType(*want))));
  }
  auto options = ValidateOptions(request.options(), plan.batch_size);
  if (!options.ok()) return options.status();
  call.options = *options;
  if (plan.cascade_levels > 0) {
    if (auto s = kernels::CheckCascadeOptions(call.options); !s.ok()) return s;
  }

  const std::vector<int64_t> q_shape = {plan.qo_tokens, plan.num_qo_heads, g.head_dim};
  auto q_index = bindings.AddInput(request.q(), "q", call.q_dtype, q_shape);
  if (!q_index.ok()) return q_index.status();
  call.q = *q_index;
  if (auto s = BindKv(bindings, plan, request.k(), request.v(), /*required=*/false, &call.k,
                      &call.v, &call.kv_new_dtype);
      !s.ok()) {
    return s;
  }
  if (auto s = BindSinks(bindings, request.sinks(), plan.num_qo_heads, &call.sinks); !s.ok()) {
    return s;
  }
  if (auto s = BindAttentionOutputs(bindings, request, call.q_dtype, q_shape, response, &call.o,
                                    &call.lse);
      !s.ok()) {
    return s;
  }
  return call;
}

absl::StatusOr<AppendKvCall> CheckAppendKv(const RequestScope& scope, const Plan& plan,
                                           const v1::AppendKvRequest& request,
                                           TensorBindings& bindings) {
  AppendKvCall call;
  if (auto s = CheckPlanWritable(plan, scope.session_id); !s.ok()) return s;
  auto wait_on = CheckCompletion(scope.events, request.wait_event_id(), request.completion());
  if (!wait_on.ok()) return wait_on.status();
  call.wait_on = *wait_on;
  call.async = request.completion() == v1::COMPLETION_ASYNC;
  if (auto s = ValidateLayer(request.layer(), plan.pool->geometry().num_layers); !s.ok()) {
    return s;
  }
  if (auto s = BindKv(bindings, plan, request.k(), request.v(), /*required=*/true, &call.k, &call.v,
                      &call.kv_new_dtype);
      !s.ok()) {
    return s;
  }
  return call;
}

absl::StatusOr<MergeCall> CheckMergeState(const RequestScope& scope,
                                          const v1::MergeStateRequest& request,
                                          TensorBindings& bindings,
                                          v1::MergeStateResponse* response) {
  MergeTensor inputs[4] = {{"v_a", &request.v_a()},
                           {"s_a", &request.s_a()},
                           {"v_b", &request.v_b()},
                           {"s_b", &request.s_b()}};
  return CheckMerge(scope, "MergeState", request, inputs, /*with_states=*/false, bindings,
                    response);
}

absl::StatusOr<MergeCall> CheckMergeStates(const RequestScope& scope,
                                           const v1::MergeStatesRequest& request,
                                           TensorBindings& bindings,
                                           v1::MergeStatesResponse* response) {
  MergeTensor inputs[2] = {{"v", &request.v()}, {"s", &request.s()}};
  return CheckMerge(scope, "MergeStates", request, inputs, /*with_states=*/true, bindings,
                    response);
}

absl::StatusOr<RaggedRunCall> CheckRunRagged(const RequestScope& scope,
                                             const v1::RunRaggedRequest& request,
                                             TensorBindings& bindings,
                                             v1::RunRaggedResponse* response) {
  RaggedRunCall call;
  call.async = request.completion() == v1::COMPLETION_ASYNC;
  if (auto s = CheckAsyncOutputs(request, call.async); !s.ok()) return s;
  auto wait_on = CheckCompletion(scope.events, request.wait_event_id(), request.completion());
  if (!wait_on.ok()) return wait_on.status();
  call.wait_on = *wait_on;

  auto shape = ValidateRaggedShape(request.q(), request.k(), scope.backend);
  if (!shape.ok()) return shape.status();
  call.shape = *shape;
  const absl::Span<const int32_t> qo_indptr(request.qo_indptr().data(), request.qo_indptr_size());
  const absl::Span<const int32_t> kv_indptr(request.kv_indptr().data(), request.kv_indptr_size());
  if (auto s = ValidateRaggedIndptrs(qo_indptr, kv_indptr, *shape); !s.ok()) return s;
  call.batch_size = static_cast<int32_t>(qo_indptr.size()) - 1;
  auto options = ValidateOptions(request.options(), call.batch_size);
  if (!options.ok()) return options.status();
  call.options = *options;
  if (auto s = CheckReplyFits(
          scope, "RunRagged",
          InlineOutputBytes(request, shape->qo_tokens, shape->num_qo_heads, shape->head_dim),
          kInlineOutputsAdvice);
      !s.ok()) {
    return s;
  }

  const std::vector<int64_t> q_shape = {shape->qo_tokens, shape->num_qo_heads, shape->head_dim};
  const std::vector<int64_t> kv_shape = {shape->kv_tokens, shape->num_kv_heads, shape->head_dim};
  auto q = bindings.AddInput(request.q(), "q", shape->dtype, q_shape);
  if (!q.ok()) return q.status();
  call.q = *q;
  auto k = bindings.AddInput(request.k(), "k", shape->dtype, kv_shape);
  if (!k.ok()) return k.status();
  call.k = *k;
  auto v = bindings.AddInput(request.v(), "v", shape->dtype, kv_shape);
  if (!v.ok()) return v.status();
  call.v = *v;
  if (auto s = BindSinks(bindings, request.sinks(), shape->num_qo_heads, &call.sinks); !s.ok()) {
    return s;
  }
  if (auto s = BindAttentionOutputs(bindings, request, shape->dtype, q_shape, response, &call.o,
                                    &call.lse);
      !s.ok()) {
    return s;
  }
  return call;
}

kernels::PlanSpec RaggedPlanOf(const RaggedRunCall& call, const v1::RunRaggedRequest& request) {
  return kernels::RaggedPlanSpec({request.qo_indptr().begin(), request.qo_indptr().end()},
                                 {request.kv_indptr().begin(), request.kv_indptr().end()},
                                 static_cast<int32_t>(call.shape.num_qo_heads),
                                 static_cast<int32_t>(call.shape.num_kv_heads),
                                 static_cast<int32_t>(call.shape.head_dim), call.shape.dtype);
}

uint64_t RaggedPlanHostBytes(const RaggedRunCall& call) {
  // kv_indices (one per K/V row), kv_last_page_len, kv_indptr and qo_indptr, held by the plan
  // and once more by its backend's upload image.
  const uint64_t ints =
      static_cast<uint64_t>(call.shape.kv_tokens) + 3 * static_cast<uint64_t>(call.batch_size) + 2;
  return 2 * ints * sizeof(int32_t);
}

}  // namespace attnd::server
