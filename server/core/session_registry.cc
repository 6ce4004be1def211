#include "server/core/session_registry.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnd::server {
namespace {

absl::Time DeadlineFor(const Session& session, absl::Time now) {
  return session.binding == SessionBinding::kLeased ? now + session.lease
                                                    : absl::InfiniteFuture();
}

}  // namespace

void SessionRegistry::Add(std::shared_ptr<Session> session, absl::Time now) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = DeadlineFor(*session, now);
  std::string id = session->id;
  sessions_.insert_or_assign(std::move(id), Entry{std::move(session), deadline});
}

absl::StatusOr<std::shared_ptr<Session>> SessionRegistry::FindAndRenew(absl::string_view id,
                                                                       absl::Time now,
                                                                       const Filter& reachable) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || !reachable(*it->second.session)) {
    return absl::NotFoundError("no such session");
  }
  it->second.deadline = DeadlineFor(*it->second.session, now);
  return it->second.session;
}

std::shared_ptr<Session> SessionRegistry::Remove(absl::string_view id, const Filter& reachable) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || !reachable(*it->second.session)) return nullptr;
  std::shared_ptr<Session> session = std::move(it->second.session);
  sessions_.erase(it);
  return session;
}

std::vector<std::shared_ptr<Session>> SessionRegistry::RemoveExpired(absl::Time now) {
  std::vector<std::shared_ptr<Session>> expired;
  absl::MutexLock lock(&mu_);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.deadline < now) {
      expired.push_back(std::move(it->second.session));
      sessions_.erase(it++);
    } else {
      ++it;
    }
  }
  return expired;
}

int SessionRegistry::EndLeasesIf(const Filter& select) {
  absl::MutexLock lock(&mu_);
  int ended = 0;
  for (auto& [id, entry] : sessions_) {
    if (select(*entry.session)) {
      entry.deadline = absl::InfinitePast();
      ++ended;
    }
  }
  return ended;
}

std::vector<std::shared_ptr<Session>> SessionRegistry::RemoveAll() {
  std::vector<std::shared_ptr<Session>> all;
  absl::MutexLock lock(&mu_);
  for (auto& [id, entry] : sessions_) all.push_back(std::move(entry.session));
  sessions_.clear();
  return all;
}

int64_t SessionRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

}  // namespace attnd::server
