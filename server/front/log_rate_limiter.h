// Bounds how often one source may write a log line. The daemon logs every failed command at warn;
// a client sending bad commands in a loop must not turn that into a flood (one client wrote
// 640 MiB of log in 9 s), so failed-command lines are limited per (session, method) and in total
// per window, and what was dropped is reported as one "suppressed N similar errors" line.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace attnd::server::front {

class LogRateLimiter {
 public:
  struct Options {
    int64_t lines_per_key = 5;    // per key and window
    int64_t lines_in_total = 50;  // all keys together, per window
    absl::Duration window = absl::Seconds(1);
    size_t max_keys = 4096;  // beyond it, new keys share one entry
  };
  LogRateLimiter() : LogRateLimiter(Options()) {}
  explicit LogRateLimiter(Options options) : options_(options) {}

  // Whether a line of `key` may be written at `now`. When it may, `*suppressed` is how many of
  // the key's lines were dropped since its last one (to be reported first), else 0.
  bool Admit(std::string_view key, absl::Time now, uint64_t* suppressed);

  // The (key, count) of lines dropped and not reported yet, of keys whose window is over; then
  // forgets keys idle for a while. Called periodically.
  std::vector<std::pair<std::string, uint64_t>> TakeUnreported(absl::Time now);

  // The key of keys beyond max_keys.
  static constexpr std::string_view kOverflowKey = "(other sessions)";

 private:
  struct Entry {
    absl::Time window_start = absl::InfinitePast();
    int64_t lines = 0;        // written in this window
    uint64_t suppressed = 0;  // dropped, not reported yet
  };

  const Options options_;
  std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  absl::Time total_window_start_ = absl::InfinitePast();
  int64_t total_lines_ = 0;
};

}  // namespace attnd::server::front
