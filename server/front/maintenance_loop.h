// The daemon's background thread: every interval it expires idle leased sessions
// (Core::ExpireIdleSessions), polls Core::Health() into the BackendHealthMonitor and reports the
// failed-command log lines the CommandRunner's rate limit dropped.
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/time/time.h"
#include "server/core/core.h"
#include "server/front/backend_health.h"
#include "server/front/command_runner.h"

namespace attnd::server::front {

class MaintenanceLoop {
 public:
  // Starts the thread; `core`, `health` and `runner` must outlive the loop.
  MaintenanceLoop(Core& core, BackendHealthMonitor& health, CommandRunner& runner,
                  absl::Duration interval = absl::Seconds(1));
  ~MaintenanceLoop();  // stops and joins
  MaintenanceLoop(const MaintenanceLoop&) = delete;
  MaintenanceLoop& operator=(const MaintenanceLoop&) = delete;

  // Stops the thread promptly (does not wait for the interval); idempotent.
  void Stop();
  // One round, also called by the thread.
  void RunOnce();

 private:
  void Loop();
  // Gives free heap memory back to the system when much of it has accumulated.
  static void ReturnFreedHeapMemory();

  Core& core_;
  BackendHealthMonitor& health_;
  CommandRunner& runner_;
  const absl::Duration interval_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace attnd::server::front
