#include "server/front/log_rate_limiter.h"

namespace attnd::server::front {

bool LogRateLimiter::Admit(std::string_view key, absl::Time now, uint64_t* suppressed) {
  *suppressed = 0;
  std::lock_guard<std::mutex> lock(mutex_);
  if (now - total_window_start_ >= options_.window) {
    total_window_start_ = now;
    total_lines_ = 0;
  }
  auto it = entries_.find(std::string(key));
  if (it == entries_.end()) {
    const bool full = entries_.size() >= options_.max_keys;
    it = entries_.try_emplace(std::string(full ? kOverflowKey : key)).first;
  }
  Entry& entry = it->second;
  if (now - entry.window_start >= options_.window) {
    entry.window_start = now;
    entry.lines = 0;
  }
  if (entry.lines >= options_.lines_per_key || total_lines_ >= options_.lines_in_total) {
    ++entry.suppressed;
    return false;
  }
  ++entry.lines;
  ++total_lines_;
  *suppressed = entry.suppressed;
  entry.suppressed = 0;
  return true;
}

std::vector<std::pair<std::string, uint64_t>> LogRateLimiter::TakeUnreported(absl::Time now) {
  std::vector<std::pair<std::string, uint64_t>> unreported;
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& entry = it->second;
    const absl::Duration idle = now - entry.window_start;
    if (entry.suppressed > 0 && idle >= options_.window) {
      unreported.emplace_back(it->first, entry.suppressed);
      entry.suppressed = 0;
    }
    if (entry.suppressed == 0 && idle >= 10 * options_.window) {
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  return unreported;
}

}  // namespace attnd::server::front
