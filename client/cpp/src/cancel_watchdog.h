// Cancels a gRPC call when an armed deadline passes: gives blocking stream reads a timeout.
// One background thread per watchdog; Arm/Disarm from the thread that drives the call.
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/time/time.h"
#include "grpcpp/client_context.h"

namespace attnd::client::internal {

class CancelWatchdog {
 public:
  explicit CancelWatchdog(grpc::ClientContext* context);
  ~CancelWatchdog();
  CancelWatchdog(const CancelWatchdog&) = delete;
  CancelWatchdog& operator=(const CancelWatchdog&) = delete;

  // Cancels the context if Disarm() is not called within `timeout`.
  void Arm(absl::Duration timeout);
  void Disarm();
  // True once the watchdog has cancelled the call.
  bool fired() const;

 private:
  void Loop();

  grpc::ClientContext* const context_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;
  bool stop_ = false;
  bool fired_ = false;
  absl::Time deadline_ = absl::InfiniteFuture();
  std::thread thread_;
};

}  // namespace attnd::client::internal
