// Counts commands being executed right now, so graceful shutdown can wait for exactly those
// (and not for idle streams or health watches, which would hold grpc::Server::Shutdown until its
// deadline). Lock-free on the request path: one atomic increment and decrement per command.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"

namespace attnd::server::front {

class InFlightCalls {
 public:
  class Scope {
   public:
    explicit Scope(InFlightCalls& owner) : owner_(&owner) {
      owner_->count_.fetch_add(1, std::memory_order_acq_rel);
    }
    ~Scope() { owner_->count_.fetch_sub(1, std::memory_order_acq_rel); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    InFlightCalls* owner_;
  };

  int64_t count() const { return count_.load(std::memory_order_acquire); }

  // Waits (polling every millisecond: it runs once, at shutdown) until no command is in flight
  // or `deadline` passes. True when idle was reached.
  bool WaitUntilIdle(absl::Time deadline) const;

 private:
  std::atomic<int64_t> count_{0};
};

}  // namespace attnd::server::front
