#include "server/front/process_exit.h"

#include <grpc/grpc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#if defined(__SANITIZE_ADDRESS__)
#define ATTND_LEAK_CHECK_AT_EXIT 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define ATTND_LEAK_CHECK_AT_EXIT 1
#endif
#endif
#ifdef ATTND_LEAK_CHECK_AT_EXIT
#include <sanitizer/lsan_interface.h>
#endif

namespace attnd::server::front {
namespace {

void FlushLogs() {
  if (auto logger = spdlog::default_logger(); logger != nullptr) logger->flush();
  std::fflush(stdout);
  std::fflush(stderr);
}

// Ends the process at `deadline` unless destroyed first.
class ExitWatchdog {
 public:
  ExitWatchdog(absl::Time deadline, int exit_code)
      : thread_([this, deadline, exit_code] {
          std::unique_lock<std::mutex> lock(mutex_);
          if (wake_.wait_until(lock, absl::ToChronoTime(deadline), [this] { return done_; })) {
            return;
          }
          spdlog::error("shutdown still not done at its deadline; exiting now (code {})",
                        exit_code);
          FlushLogs();
          _exit(exit_code);
        }) {}
  ~ExitWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

void HoldGrpcLibrary() { grpc_init(); }

void ExitNow(int exit_code) {
  FlushLogs();
#ifdef ATTND_LEAK_CHECK_AT_EXIT
  __lsan_do_leak_check();  // what returning from main would have checked
#endif
  _exit(exit_code);
}

void ShutdownAndExit(std::unique_ptr<Daemon> daemon, absl::Duration drain, int exit_code) {
  {
    ExitWatchdog watchdog(absl::Now() + drain + absl::Milliseconds(800), exit_code);
    if (daemon->Shutdown(drain)) {
      daemon.reset();
    } else {
      // Reachable, so that the leak check does not report it.
      static Daemon* const still_running = daemon.release();
      (void)still_running;
    }
  }
  ExitNow(exit_code);
}

}  // namespace attnd::server::front
