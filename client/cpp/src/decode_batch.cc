// DecodeBatch (decode_batch.h): the batch's bookkeeping and its steps as CreatePlan / UpdatePlan.
#include "attnd/client/decode_batch.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attnd::client {

DecodeBatch::DecodeBatch(SessionApi& session, std::string pool_id, int32_t page_size, PlanSpec plan)
    : session_(session),
      pool_id_(std::move(pool_id)),
      page_size_(page_size),
      plan_(std::move(plan)) {
  plan_.pool_id = pool_id_;
  plan_.kind = v1::ATTENTION_KIND_DECODE;
}

DecodeBatch::~DecodeBatch() {
  if (!plan_id_.empty()) (void)session_.DeletePlan(plan_id_);
  for (Request& r : requests_) Release(r);
}

absl::StatusOr<int64_t> DecodeBatch::Join(std::vector<int32_t> pages, int32_t kv_len,
                                          bool owns_pages) {
  const int64_t need =
      kv_len < 1 ? 0 : (static_cast<int64_t>(kv_len) + page_size_ - 1) / page_size_;
  if (kv_len < 1 || static_cast<int64_t>(pages.size()) != need) {
    return absl::InvalidArgumentError(absl::StrCat("Join: kv_len=", kv_len, " needs ", need,
                                                   " pages of ", page_size_, " tokens, got ",
                                                   pages.size()));
  }
  Request r;
  r.handle = next_handle_++;
  r.pages = std::move(pages);
  r.kv_len = kv_len;
  r.owns_pages = owns_pages;
  requests_.push_back(std::move(r));
  return requests_.back().handle;
}

absl::Status DecodeBatch::Leave(int64_t handle) {
  for (auto it = requests_.begin(); it != requests_.end(); ++it) {
    if (it->handle != handle) continue;
    if (!it->in_plan) {
      Release(*it);
      requests_.erase(it);
    } else {
      it->leaving = true;
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("no request with handle ", handle, " in the batch"));
}

absl::Status DecodeBatch::Step() {
  int32_t need = 0;
  for (const Request& r : requests_) need += !r.leaving && r.kv_len % page_size_ == 0;
  std::vector<int32_t> fresh;
  if (need > 0) {
    auto grant = session_.AllocatePages(pool_id_, need);
    if (!grant.ok()) return grant.status();
    fresh = grant->page_ids;
  }
  size_t next = 0;
  for (Request& r : requests_) {
    r.new_pages.clear();
    if (!r.leaving && r.kv_len % page_size_ == 0) r.new_pages.push_back(fresh[next++]);
  }
  absl::Status status;
  if (plan_id_.empty()) {
    PlanSpec spec = plan_;
    spec.kv_indptr = {0};
    spec.kv_indices.clear();
    spec.kv_last_page_len.clear();
    for (const Request& r : requests_) {
      if (r.leaving) continue;
      spec.kv_indices.insert(spec.kv_indices.end(), r.pages.begin(), r.pages.end());
      spec.kv_indices.insert(spec.kv_indices.end(), r.new_pages.begin(), r.new_pages.end());
      spec.kv_indptr.push_back(static_cast<int32_t>(spec.kv_indices.size()));
      spec.kv_last_page_len.push_back(LastLen(r));
    }
    auto created = session_.CreatePlan(spec);
    status = created.status();
    if (created.ok()) plan_id_ = created->plan_id;
  } else {
    std::vector<PlanDeltaSpec> deltas;
    int32_t index = 0;
    for (const Request& r : requests_) {
      if (!r.in_plan) continue;
      if (r.leaving) {
        deltas.push_back(PlanLeave{.request = index});
      } else {
        // qo_len 0: a decode request keeps its one query row
        deltas.push_back(PlanGrow{.request = index, .num_tokens = 1, .new_pages = r.new_pages});
      }
      ++index;
    }
    for (const Request& r : requests_) {
      if (r.in_plan || r.leaving) continue;
      std::vector<int32_t> table = r.pages;
      table.insert(table.end(), r.new_pages.begin(), r.new_pages.end());
      deltas.push_back(PlanJoin{.kv_indices = std::move(table), .kv_last_page_len = LastLen(r)});
    }
    status = session_.UpdatePlan(plan_id_, deltas).status();
  }
  if (!status.ok()) {  // nothing changed on the daemon: give the pages back
    for (Request& r : requests_) r.new_pages.clear();
    if (!fresh.empty()) (void)session_.FreePages(pool_id_, fresh);
    return status;
  }
  for (auto it = requests_.begin(); it != requests_.end();) {
    if (it->leaving) {
      Release(*it);
      it = requests_.erase(it);
      continue;
    }
    it->pages.insert(it->pages.end(), it->new_pages.begin(), it->new_pages.end());
    it->new_pages.clear();
    it->kv_len += 1;
    it->in_plan = true;
    ++it;
  }
  ++steps_;
  return absl::OkStatus();
}

absl::StatusOr<v1::RunResponse> DecodeBatch::Run(RunArgs args) {
  if (plan_id_.empty()) return absl::FailedPreconditionError("DecodeBatch::Run before Step()");
  args.plan_id = plan_id_;
  return session_.Run(std::move(args));
}

absl::StatusOr<RunOutput> DecodeBatch::RunAndDecode(RunArgs args) {
  if (plan_id_.empty()) return absl::FailedPreconditionError("DecodeBatch::Run before Step()");
  args.plan_id = plan_id_;
  return session_.RunAndDecode(std::move(args));
}

std::vector<int64_t> DecodeBatch::handles() const {
  std::vector<int64_t> out;
  for (const Request& r : requests_) {
    if (r.in_plan) out.push_back(r.handle);
  }
  return out;
}

absl::StatusOr<int32_t> DecodeBatch::kv_len(int64_t handle) const {
  const Request* r = Find(handle);
  if (r == nullptr) return absl::NotFoundError(absl::StrCat("no request with handle ", handle));
  return r->kv_len;
}

absl::StatusOr<std::vector<int32_t>> DecodeBatch::pages(int64_t handle) const {
  const Request* r = Find(handle);
  if (r == nullptr) return absl::NotFoundError(absl::StrCat("no request with handle ", handle));
  return r->pages;
}

const DecodeBatch::Request* DecodeBatch::Find(int64_t handle) const {
  auto it = std::find_if(requests_.begin(), requests_.end(),
                         [&](const Request& r) { return r.handle == handle; });
  return it == requests_.end() ? nullptr : &*it;
}

int32_t DecodeBatch::LastLen(const Request& r) const {
  const int32_t pages = static_cast<int32_t>(r.pages.size() + r.new_pages.size());
  return r.kv_len + 1 - (pages - 1) * page_size_;
}

void DecodeBatch::Release(Request& r) {
  if (r.owns_pages && !r.pages.empty()) (void)session_.FreePages(pool_id_, r.pages);
  r.pages.clear();
}

}  // namespace attnd::client
