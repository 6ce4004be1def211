// The live pools by id and by unique name, and the pool memory budget (--max_pool_bytes).
//
// Lock order: registry mutex, then a pool's mutex (never the other way round).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/pool.h"

namespace attnd::server {

class PoolRegistry {
 public:
  explicit PoolRegistry(uint64_t max_bytes) : max_bytes_(max_bytes) {}

  // Claims `name` and `bytes` of the budget for a pool about to be allocated:
  // ALREADY_EXISTS "pool 'x' already exists" for a taken (or being created) name;
  // RESOURCE_EXHAUSTED "pool 'x' needs N bytes but only M of the M' byte pool budget are free".
  absl::Status Reserve(const std::string& name, uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  void CancelReservation(const std::string& name, uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Completes a reservation: the pool becomes visible by id and name.
  void Insert(std::shared_ptr<Pool> pool) ABSL_LOCKS_EXCLUDED(mu_);

  // Null when unknown.
  std::shared_ptr<Pool> FindById(absl::string_view id) const ABSL_LOCKS_EXCLUDED(mu_);
  // Attaches `session_id` (of `principal`) to the pool named `name` (a no-op if attached
  // already), when Pool::MayAttach allows it. NOT_FOUND "pool 'x' does not exist";
  // PERMISSION_DENIED for another principal's pool without its attach token.
  absl::StatusOr<std::shared_ptr<Pool>> AttachByName(absl::string_view name,
                                                     const std::string& session_id,
                                                     std::shared_ptr<SessionUsage> usage,
                                                     const std::string& principal,
                                                     absl::string_view attach_token)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Removes the pool and returns its bytes to the budget if no session is attached any more.
  // Returns whether it was removed. The memory is freed when the last reference drops.
  bool RemoveIfUnused(const std::shared_ptr<Pool>& pool) ABSL_LOCKS_EXCLUDED(mu_);

  std::vector<std::shared_ptr<Pool>> Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t max_bytes() const { return max_bytes_; }
  uint64_t allocated_bytes() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const uint64_t max_bytes_;
  mutable absl::Mutex mu_;
  uint64_t allocated_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // live pools + reservations
  absl::flat_hash_set<std::string> reserved_names_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Pool>> by_id_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Pool>> by_name_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::server
