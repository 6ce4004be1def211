#include "server/core/ids.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace attnd::server {

std::string NewRandomId(absl::string_view prefix) {
  // absl::BitGen is seeded from the OS entropy source; one generator behind a mutex keeps
  // the ids unpredictable without paying for a fresh seed per id.
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  uint64_t hi, lo;
  {
    absl::MutexLock lock(&mu);
    hi = absl::Uniform<uint64_t>(*gen);
    lo = absl::Uniform<uint64_t>(*gen);
  }
  return absl::StrCat(prefix, absl::Hex(hi, absl::kZeroPad16), absl::Hex(lo, absl::kZeroPad16));
}

std::string NewSessionId() {
  static std::atomic<uint64_t> serial{0};
  return NewRandomId(absl::StrCat("s", serial.fetch_add(1) + 1, "-"));
}

std::string SessionLogTag(std::string_view session_id) {
  const size_t dash = session_id.find('-');
  const bool ok = dash != std::string_view::npos && dash >= 2 && dash <= 21 &&
                  session_id[0] == 's' &&
                  std::all_of(session_id.begin() + 1, session_id.begin() + dash,
                              [](char c) { return c >= '0' && c <= '9'; });
  return ok ? std::string(session_id.substr(0, dash)) : std::string("s?");
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walk the whole expected value whatever the input; differences accumulate without branches.
  size_t diff = a.size() ^ b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    const unsigned char other = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(a[i]) ^ other;
  }
  // volatile: keep the compiler from turning the loop into an early-exit memcmp.
  volatile size_t result = diff;
  return result == 0;
}

}  // namespace attnd::server
