#include "server/front/maintenance_loop.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

namespace attnd::server::front {

MaintenanceLoop::MaintenanceLoop(Core& core, BackendHealthMonitor& health, CommandRunner& runner,
                                 absl::Duration interval)
    : core_(core), health_(health), runner_(runner), interval_(interval), thread_([this] {
        Loop();
      }) {}

MaintenanceLoop::~MaintenanceLoop() { Stop(); }

void MaintenanceLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MaintenanceLoop::RunOnce() {
  const int expired = core_.ExpireIdleSessions(absl::Now());
  if (expired > 0) spdlog::info("expired {} idle leased session(s)", expired);
  health_.Polled(core_.Health());
  runner_.ReportSuppressedFailures();
  ReturnFreedHeapMemory();
}

void MaintenanceLoop::ReturnFreedHeapMemory() {
  // Large inline messages are assembled from many slices that malloc serves from per-thread
  // arenas; once freed, glibc keeps those pages mapped (only the main heap's top is trimmed on
  // its own). After a flood of big requests that is hundreds of MB per daemon, held for ever.
  // Hand free arena memory back when enough of it accumulated.
  constexpr size_t kTrimAboveBytes = size_t{32} << 20;
  const struct mallinfo2 info = mallinfo2();
  if (info.fordblks > kTrimAboveBytes) malloc_trim(0);
}

void MaintenanceLoop::Loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    lock.unlock();
    RunOnce();
    lock.lock();
    wake_.wait_for(lock, absl::ToChronoNanoseconds(interval_), [this] { return stop_; });
  }
}

}  // namespace attnd::server::front
