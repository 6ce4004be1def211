#include "server/front/inflight_calls.h"

#include "absl/time/clock.h"

namespace attnd::server::front {

bool InFlightCalls::WaitUntilIdle(absl::Time deadline) const {
  while (count() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

}  // namespace attnd::server::front
