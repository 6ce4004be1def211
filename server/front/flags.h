// The daemon's command-line flags (Abseil). Every flag can also be set by the environment
// variable ATTND_<FLAG_IN_UPPER_CASE> (ATTND_LISTEN, ATTND_BACKEND, ...); a flag given on the
// command line wins over the environment. `attnd --help` lists them.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace attnd::server::front {

// The validated configuration the flags describe.
struct DaemonConfig {
  std::string listen = "unix:///tmp/attnd.sock";  // gRPC: unix:///PATH, unix:PATH or HOST:PORT
  std::string http_listen = "127.0.0.1:9401";     // HTTP HOST:PORT; empty disables
  std::string backend = "auto";                   // auto | cpu | cuda
  int32_t device = 0;                             // CUDA device ordinal
  uint64_t max_pool_bytes = 0;                    // 0 = 90% of the backend's memory
  absl::Duration session_lease = absl::Seconds(30);
  uint64_t max_message_bytes = 64ull << 20;  // gRPC receive and send limit
  std::string log_level = "info";            // trace | debug | info | warn | error
  bool log_json = false;                     // one JSON object per log line
  uint32_t socket_mode = 0660;               // permissions of the unix socket file
  int32_t threads = 0;                       // CPU backend threads; 0 = all cores
  // Access control (access_control.h). The token itself is not a flag: it comes from
  // --token_file or the environment variable ATTND_TOKEN, so it never shows in `ps`.
  std::string token;     // "" = no token required
  std::string tls_cert;  // PEM files; empty = plaintext
  std::string tls_key;
  std::string tls_client_ca;               // set = mutual TLS
  bool allow_unauthenticated_tcp = false;  // TCP beyond loopback without a token
  // Quotas (CoreOptions has the meaning of each).
  int64_t max_sessions = 4096;
  int64_t max_pages_per_session = 0;
  int64_t max_buffers_per_session = 1024;
  int64_t max_plans_per_session = 1 << 16;
  int64_t max_inflight_per_session = 64;
  absl::Duration max_session_lease = absl::Minutes(10);  // longest lease a client may ask for
  uint64_t max_host_bytes = 0;                           // 0 = a quarter of physical memory
  uint64_t max_session_host_bytes = 1ull << 30;
  // The peer socket (wire API "Identity"): "auto" = the unix --listen path + ".peer" (none for
  // TCP), "" = none, else a path.
  std::string peer_socket = "auto";
  // Shutdown and faults.
  absl::Duration drain_timeout = absl::Seconds(10);  // SIGTERM: longest wait for commands
  bool exit_on_device_error = true;  // a sticky device error ends the process (exit code 3)
  // Test hook: after this many successful attention runs the backend fails the way a sticky
  // device error does (fault_injection_backend.h); 0 = off.
  int64_t testonly_device_fault_after_runs = 0;
  bool grpc_reflection = false;  // serve grpc.reflection.v1alpha (never with a token)
  // File descriptors client buffers may hold open, daemon-wide: set by main from RLIMIT_NOFILE
  // (fd_limits.h BufferFdBudget), not a flag; 0 = no daemon-wide limit.
  int64_t max_open_buffer_fds = 0;
};

// Names of the daemon's flags, in --help order.
const std::vector<std::string>& DaemonFlagNames();

// "listen" -> "ATTND_LISTEN".
std::string EnvironmentVariableFor(std::string_view flag_name);

// Sets each daemon flag whose ATTND_<FLAG> variable is set (looked up through `getenv`, the
// process environment by default). INVALID_ARGUMENT naming the variable when a value does not
// parse.
absl::Status ApplyEnvironmentToFlags(
    const std::function<const char*(const char*)>& getenv = nullptr);

// Reads and validates the current flag values.
absl::StatusOr<DaemonConfig> DaemonConfigFromFlags();

// The usage `attnd --help` prints: what attnd is, how flags and ATTND_* variables combine, and
// every daemon flag (DaemonFlagNames order) with its default and help text; no source paths.
// A non-empty `filter` keeps the flags whose name contains it.
std::string DaemonUsage(std::string_view filter = "");

// The usage text when the command line asks for help: --help, -h, --helpfull, --helpshort (each
// also with one dash), --help=SUBSTRING / --helpmatch=SUBSTRING (only the flags whose name has
// it), --helpon=... and --helppackage (all flags). Arguments after "--" are not looked at.
// Handled here rather than by Abseil, whose --help exits 1 and prints the build's source paths.
std::optional<std::string> HelpRequested(int argc, char** argv);

// The whole start-up sequence: usage message, environment, then the command line (which wins;
// --version prints and exits here; main answers --help first, HelpRequested), then validation.
// Positional arguments are refused.
absl::StatusOr<DaemonConfig> ParseDaemonFlags(int argc, char** argv);

}  // namespace attnd::server::front
