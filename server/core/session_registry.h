// The live sessions by id, with the lease deadlines of leased (unary) sessions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/session.h"

namespace attnd::server {

class SessionRegistry {
 public:
  void Add(std::shared_ptr<Session> session, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a caller may reach a session (Core's Reachable); checked before anything changes.
  using Filter = std::function<bool(const Session&)>;

  // The session, with its lease renewed to now + lease (leased sessions), if `reachable`
  // accepts it. NOT_FOUND otherwise (unknown, or not reachable: neither is renewed).
  absl::StatusOr<std::shared_ptr<Session>> FindAndRenew(absl::string_view id, absl::Time now,
                                                        const Filter& reachable)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Takes the session out of the registry if `reachable` accepts it; null otherwise. The caller
  // releases it.
  std::shared_ptr<Session> Remove(absl::string_view id, const Filter& reachable)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends the lease of every session `select` accepts (RemoveExpired takes them next); returns
  // how many.
  int EndLeasesIf(const Filter& select) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes out every leased session whose deadline is before `now`.
  std::vector<std::shared_ptr<Session>> RemoveExpired(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<std::shared_ptr<Session>> RemoveAll() ABSL_LOCKS_EXCLUDED(mu_);
  int64_t size() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    std::shared_ptr<Session> session;
    absl::Time deadline;  // InfiniteFuture for stream-bound sessions
  };
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> sessions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::server
