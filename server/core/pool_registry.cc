#include "server/core/pool_registry.h"

#include "absl/strings/str_cat.h"

namespace attnd::server {

absl::Status PoolRegistry::Reserve(const std::string& name, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (by_name_.contains(name) || reserved_names_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("pool '", name, "' already exists"));
  }
  const uint64_t available = max_bytes_ - allocated_bytes_;
  if (bytes > available) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pool '", name, "' needs ", bytes, " bytes but only ", available, " of the ", max_bytes_,
        " byte pool budget are available"));
  }
  allocated_bytes_ += bytes;
  reserved_names_.insert(name);
  return absl::OkStatus();
}

void PoolRegistry::CancelReservation(const std::string& name, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  allocated_bytes_ -= bytes;
  reserved_names_.erase(name);
}

void PoolRegistry::Insert(std::shared_ptr<Pool> pool) {
  absl::MutexLock lock(&mu_);
  reserved_names_.erase(pool->name());
  by_name_[pool->name()] = pool;
  by_id_[pool->id()] = std::move(pool);
}

std::shared_ptr<Pool> PoolRegistry::FindById(absl::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

absl::StatusOr<std::shared_ptr<Pool>> PoolRegistry::AttachByName(
    absl::string_view name, const std::string& session_id, std::shared_ptr<SessionUsage> usage,
    const std::string& principal, absl::string_view attach_token) {
  absl::MutexLock lock(&mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat("pool '", name.substr(0, 80), "' does not exist"));
  }
  Pool& pool = *it->second;
  if (!pool.MayAttach(principal, attach_token)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "pool '", pool.name(), "' was created by another principal",
        principal.empty() ? " (this caller presented no identity)" : "",
        ": attaching needs its attach_token (PoolInfo.attach_token, from a session attached to "
        "it)", attach_token.empty() ? "" : "; the one given is not it"));
  }
  absl::MutexLock pool_lock(&pool.mu);
  // A pool in the registry is never closed: RemoveIfUnused closes and removes under mu_.
  pool.Attach(session_id, std::move(usage));
  return it->second;
}

bool PoolRegistry::RemoveIfUnused(const std::shared_ptr<Pool>& pool) {
  absl::MutexLock lock(&mu_);
  {
    absl::MutexLock pool_lock(&pool->mu);
    if (!pool->attachments.empty() || pool->closed) return false;
    pool->closed = true;
  }
  by_id_.erase(pool->id());
  by_name_.erase(pool->name());
  allocated_bytes_ -= pool->total_bytes();
  return true;
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Pool>> pools;
  pools.reserve(by_id_.size());
  for (const auto& [id, pool] : by_id_) pools.push_back(pool);
  return pools;
}

uint64_t PoolRegistry::allocated_bytes() const {
  absl::MutexLock lock(&mu_);
  return allocated_bytes_;
}

}  // namespace attnd::server
