#include "server/core/ids.h"

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

}  // namespace attnd::server
