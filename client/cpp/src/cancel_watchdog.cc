#include "cancel_watchdog.h"

namespace attnd::client::internal {

CancelWatchdog::CancelWatchdog(grpc::ClientContext* context)
    : context_(context), thread_([this] { Loop(); }) {}

CancelWatchdog::~CancelWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void CancelWatchdog::Arm(absl::Duration timeout) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = true;
    deadline_ = absl::Now() + timeout;
  }
  cv_.notify_all();
}

void CancelWatchdog::Disarm() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = false;
}

bool CancelWatchdog::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

void CancelWatchdog::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!armed_) {
      cv_.wait(lock, [this] { return stop_ || armed_; });
      continue;
    }
    const absl::Time deadline = deadline_;
    if (absl::Now() >= deadline) {
      armed_ = false;
      fired_ = true;
      context_->TryCancel();  // thread-safe; the blocked Read/Write returns false
      continue;
    }
    // Wake on re-arm, disarm or stop; otherwise re-check at the deadline.
    cv_.wait_for(lock, absl::ToChronoNanoseconds(deadline - absl::Now()));
  }
}

}  // namespace attnd::client::internal
