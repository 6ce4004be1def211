// Starts the real attnd executable as a child process for integration tests.
//
// Each DaemonProcess gets a fresh temporary directory holding its unix socket and its log file
// (stdout + stderr), a free HTTP port on 127.0.0.1, and is stopped (SIGTERM, then SIGKILL after a
// grace period) and cleaned up when destroyed. Start() returns once grpc.health.v1 reports
// SERVING, or an error that includes the tail of the daemon's log.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/client/client.h"

namespace attnd::testing {

struct DaemonOptions {
  // The attnd binary. Empty = $ATTND_BIN if set, else the path compiled in (ATTND_DAEMON_PATH).
  std::string binary;
  // --backend. Empty = $ATTND_IT_BACKEND if set (e.g. "cuda" on a GPU host), else "cpu".
  std::string backend;
  uint32_t session_lease_ms = 30000;
  uint64_t max_message_bytes = 64ull << 20;
  std::string log_level = "info";
  std::vector<std::string> extra_flags;  // e.g. "--threads=2"
  // Runs the daemon through this command, e.g. {"prlimit", "--nofile=64:4096", "--"} (it must
  // exec the daemon, so that the pid stays the daemon's). Looked up in PATH.
  std::vector<std::string> command_prefix;
  // Called with the socket's path right after the process was spawned (before it is SERVING).
  std::function<void(const std::string& socket_path)> on_spawned;
  absl::Duration start_timeout = absl::Seconds(30);
};

class DaemonProcess {
 public:
  static absl::StatusOr<std::unique_ptr<DaemonProcess>> Start(const DaemonOptions& options = {});
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // "unix:///tmp/attnd-it-XXXX/attnd.sock"
  const std::string& target() const { return target_; }
  int http_port() const { return http_port_; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

  // A new client of this daemon (max message size large enough for every test).
  std::unique_ptr<client::Client> NewClient() const;
  // True while the child has not exited.
  bool IsRunning();
  // The last `max_bytes` of the log, for failure messages.
  std::string LogTail(size_t max_bytes = 4000) const;
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the wait status (or -1). Idempotent.
  int Stop(absl::Duration grace = absl::Seconds(10));
  // Waits up to `timeout` for the daemon to exit by itself: its wait status, or -1 if it still
  // runs.
  int WaitForExit(absl::Duration timeout);

 private:
  DaemonProcess() = default;
  std::string dir_;
  std::string target_;
  std::string log_path_;
  int http_port_ = 0;
  pid_t pid_ = -1;
  int wait_status_ = -1;
};

// A run of the attnd binary that is expected to end by itself (--help, a start that fails).
struct AttndRun {
  int exit_code = -1;  // -1: killed by a signal, or killed after the timeout
  std::string out;     // stdout
  std::string err;     // stderr
};
// Runs DaemonBinaryPath() with `args` (stdin /dev/null) until it exits, SIGKILL after `timeout`.
absl::StatusOr<AttndRun> RunAttndToExit(const std::vector<std::string>& args,
                                        absl::Duration timeout = absl::Seconds(30));

// The backend the tests ask for: $ATTND_IT_BACKEND or "cpu".
std::string TestBackend();

// The attnd binary the tests run.
std::string DaemonBinaryPath();

// A TCP port on 127.0.0.1 that was free a moment ago.
absl::StatusOr<int> PickFreePort();

}  // namespace attnd::testing
