#include "server/front/flags.h"

#include <cctype>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <tuple>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/front/access_control.h"

ABSL_FLAG(std::string, listen, "unix:///tmp/attnd.sock",
          "gRPC listen address: unix:///ABSOLUTE/PATH or unix:PATH for a unix socket (a stale "
          "socket file there is removed at start, one a process listens on is an error; its "
          "permissions are --socket_mode), or HOST:PORT for TCP. Env: ATTND_LISTEN.");
ABSL_FLAG(std::string, http_listen, "127.0.0.1:9401",
          "HTTP HOST:PORT for /healthz, /readyz and /metrics (Prometheus); empty disables HTTP. "
          "Env: ATTND_HTTP_LISTEN.");
ABSL_FLAG(std::string, backend, "auto",
          "Attention backend: cuda, cpu, or auto (cuda when a CUDA device can be used, else cpu; "
          "the reason is logged). Env: ATTND_BACKEND.");
ABSL_FLAG(int32_t, device, 0, "CUDA device ordinal of the cuda backend. Env: ATTND_DEVICE.");
ABSL_FLAG(uint64_t, max_pool_bytes, 0,
          "Bytes of backend memory all KV pools together may use; 0 = 90% of the backend's "
          "memory. Env: ATTND_MAX_POOL_BYTES.");
ABSL_FLAG(uint32_t, session_lease_ms, 30000,
          "Default lease of sessions opened with the unary OpenSession: released after this many "
          "milliseconds without a call naming them. Stream sessions end with their stream. "
          "Env: ATTND_SESSION_LEASE_MS.");
ABSL_FLAG(uint64_t, max_message_bytes, 64ull << 20,
          "Largest gRPC message received or sent, bytes (inline tensors travel in messages). "
          "Env: ATTND_MAX_MESSAGE_BYTES.");
ABSL_FLAG(std::string, log_level, "info",
          "Log level: trace, debug, info, warn or error. Env: ATTND_LOG_LEVEL.");
ABSL_FLAG(
    bool, log_json, false,
    "Write logs as one JSON object per line (time, level, thread, msg). Env: ATTND_LOG_JSON.");
ABSL_FLAG(std::string, socket_mode, "0660",
          "Octal permissions of the unix socket file (the socket's access control). "
          "Env: ATTND_SOCKET_MODE.");
ABSL_FLAG(int32_t, threads, 0,
          "Worker threads of the cpu backend; 0 = all cores. Env: ATTND_THREADS.");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token every attnd.v1 call must carry as 'authorization: "
          "Bearer <token>' metadata (>= 16 printable bytes; trailing newline ignored). Unset: the "
          "token comes from the environment variable ATTND_TOKEN, and with neither no token is "
          "required. grpc.health.v1 stays open. Env: ATTND_TOKEN_FILE.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM server certificate (chain): serve gRPC over TLS; needs --tls_key. Env: "
          "ATTND_TLS_CERT.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert. Env: ATTND_TLS_KEY.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS). Env: "
          "ATTND_TLS_CLIENT_CA.");
ABSL_FLAG(bool, allow_unauthenticated_tcp, false,
          "Allow a TCP --listen address other than loopback without a token (a trusted network "
          "only: anyone who reaches the port can use every pool). Env: "
          "ATTND_ALLOW_UNAUTHENTICATED_TCP.");
ABSL_FLAG(int64_t, max_sessions, 4096,
          "Live sessions of the whole daemon; OpenSession beyond it gets RESOURCE_EXHAUSTED. "
          "Env: ATTND_MAX_SESSIONS.");
ABSL_FLAG(int64_t, max_pages_per_session, 0,
          "Page references one session may hold through AllocatePages over all its pools; 0 = "
          "only the pools' size limits it. Env: ATTND_MAX_PAGES_PER_SESSION.");
ABSL_FLAG(int64_t, max_buffers_per_session, 1024,
          "Registered buffers per session. Env: ATTND_MAX_BUFFERS_PER_SESSION.");
ABSL_FLAG(int64_t, max_plans_per_session, 65536,
          "Plans per session. Env: ATTND_MAX_PLANS_PER_SESSION.");
ABSL_FLAG(int64_t, max_inflight_per_session, 64,
          "Commands of one session executing or queued at once (parallel unary calls); beyond "
          "it RESOURCE_EXHAUSTED. Env: ATTND_MAX_INFLIGHT_PER_SESSION.");
ABSL_FLAG(uint32_t, drain_timeout_ms, 10000,
          "On SIGTERM/SIGINT: how long commands in flight may run before the daemon exits "
          "without them (0..600000); the process is gone at most 1 s after it. Env: "
          "ATTND_DRAIN_TIMEOUT_MS.");
ABSL_FLAG(bool, exit_on_device_error, true,
          "When the backend reports a sticky device error: go NOT_SERVING, end the streams and "
          "exit with code 3 after a short clean-up, so that Kubernetes or systemd restarts the "
          "daemon. false keeps it running NOT_SERVING (every GPU command fails) for debugging. "
          "Env: ATTND_EXIT_ON_DEVICE_ERROR.");
ABSL_FLAG(int64_t, testonly_device_fault_after_runs, 0,
          "TEST HOOK, not for production: after this many successful attention runs the backend "
          "is put into a sticky device error (CUDA: a trapping kernel; CPU: emulated), to test "
          "how the daemon reports it. 0 = off. Env: ATTND_TESTONLY_DEVICE_FAULT_AFTER_RUNS.");
ABSL_FLAG(bool, grpc_reflection, false,
          "Serve gRPC server reflection (grpc.reflection.v1alpha, for grpcurl and the like). It "
          "answers without a token, so it is refused together with --token_file/ATTND_TOKEN. "
          "Env: ATTND_GRPC_REFLECTION.");

ABSL_FLAG(uint32_t, max_session_lease_ms, 600000,
          "Longest lease a unary session may ask for (OpenSessionRequest.lease_ms is lowered to "
          "it), so abandoned sessions cannot keep their quota for long. Env: "
          "ATTND_MAX_SESSION_LEASE_MS.");
ABSL_FLAG(uint64_t, max_host_bytes, 0,
          "Host memory the daemon may spend on its clients' behalf (plan page tables, pool "
          "page bookkeeping, page ledgers, the messages of commands in flight with their inline "
          "tensors) in total; beyond it RESOURCE_EXHAUSTED. 0 = a quarter of the machine's "
          "physical memory. gRPC's transport buffers have a backstop quota of twice this plus 4 x "
          "--max_message_bytes. Env: ATTND_MAX_HOST_BYTES.");
ABSL_FLAG(uint64_t, max_session_host_bytes, 1ull << 30,
          "Host memory of that kind one session may use. Env: ATTND_MAX_SESSION_HOST_BYTES.");
ABSL_FLAG(std::string, peer_socket, "auto",
          "The peer socket where client processes present their kernel credentials and pass "
          "shared-memory descriptors (see the wire API's \"Identity\"): auto = the unix --listen "
          "path + \".peer\" (none with TCP), empty = none, else a path. Its permissions are "
          "--socket_mode. Env: ATTND_PEER_SOCKET.");

#ifndef ATTND_VERSION
#define ATTND_VERSION "0.0.0-dev"
#endif

namespace attnd::server::front {

const std::vector<std::string>& DaemonFlagNames() {
  static const std::vector<std::string> names = {"listen",
                                                 "http_listen",
                                                 "backend",
                                                 "device",
                                                 "max_pool_bytes",
                                                 "session_lease_ms",
                                                 "max_message_bytes",
                                                 "log_level",
                                                 "log_json",
                                                 "socket_mode",
                                                 "threads",
                                                 "token_file",
                                                 "tls_cert",
                                                 "tls_key",
                                                 "tls_client_ca",
                                                 "allow_unauthenticated_tcp",
                                                 "max_sessions",
                                                 "max_pages_per_session",
                                                 "max_buffers_per_session",
                                                 "max_plans_per_session",
                                                 "max_inflight_per_session",
                                                 "max_session_lease_ms",
                                                 "max_host_bytes",
                                                 "max_session_host_bytes",
                                                 "peer_socket",
                                                 "drain_timeout_ms",
                                                 "exit_on_device_error",
                                                 "testonly_device_fault_after_runs",
                                                 "grpc_reflection"};
  return names;
}

std::string EnvironmentVariableFor(std::string_view flag_name) {
  return "ATTND_" + absl::AsciiStrToUpper(std::string(flag_name));
}

absl::Status ApplyEnvironmentToFlags(const std::function<const char*(const char*)>& getenv) {
  for (const std::string& name : DaemonFlagNames()) {
    const std::string variable = EnvironmentVariableFor(name);
    const char* value = getenv ? getenv(variable.c_str()) : std::getenv(variable.c_str());
    if (value == nullptr) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) {
      return absl::InternalError(absl::StrCat("flag --", name, " is not registered"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(variable, "='", value, "' is not a valid --", name, ": ", error));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DaemonConfig> DaemonConfigFromFlags() {
  DaemonConfig config;
  config.listen = absl::GetFlag(FLAGS_listen);
  config.http_listen = absl::GetFlag(FLAGS_http_listen);
  config.backend = absl::AsciiStrToLower(absl::GetFlag(FLAGS_backend));
  config.device = absl::GetFlag(FLAGS_device);
  config.max_pool_bytes = absl::GetFlag(FLAGS_max_pool_bytes);
  config.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  config.log_level = absl::AsciiStrToLower(absl::GetFlag(FLAGS_log_level));
  config.log_json = absl::GetFlag(FLAGS_log_json);
  config.threads = absl::GetFlag(FLAGS_threads);
  const uint32_t lease_ms = absl::GetFlag(FLAGS_session_lease_ms);

  if (config.listen.empty()) return absl::InvalidArgumentError("--listen is empty");
  if (config.backend != "auto" && config.backend != "cpu" && config.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend='", config.backend, "' is not one of auto, cpu, cuda"));
  }
  if (config.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--device=", config.device, " is negative"));
  }
  if (lease_ms == 0) return absl::InvalidArgumentError("--session_lease_ms must be > 0");
  config.session_lease = absl::Milliseconds(lease_ms);
  // gRPC takes the limit as an int.
  if (config.max_message_bytes < 4096 || config.max_message_bytes > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("--max_message_bytes=", config.max_message_bytes,
                                                   " is outside 4096..", INT_MAX));
  }
  static const char* const kLevels[] = {"trace", "debug", "info", "warn", "error"};
  bool level_ok = false;
  for (const char* level : kLevels) level_ok |= config.log_level == level;
  if (!level_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log_level='", config.log_level, "' is not one of trace, debug, info, warn, error"));
  }
  const std::string mode_text = absl::GetFlag(FLAGS_socket_mode);
  char* end = nullptr;
  const unsigned long mode =
      mode_text.empty() ? ULONG_MAX : std::strtoul(mode_text.c_str(), &end, 8);
  if (mode_text.empty() || *end != '\0' || mode > 07777) {
    return absl::InvalidArgumentError(
        absl::StrCat("--socket_mode='", mode_text, "' is not an octal mode like 0660"));
  }
  config.socket_mode = static_cast<uint32_t>(mode);
  if (config.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--threads=", config.threads, " is negative"));
  }
  absl::StatusOr<std::string> token = LoadToken(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return token.status();
  config.token = *std::move(token);
  config.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  config.tls_key = absl::GetFlag(FLAGS_tls_key);
  config.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key must be given together");
  }
  if (!config.tls_client_ca.empty() && config.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  config.allow_unauthenticated_tcp = absl::GetFlag(FLAGS_allow_unauthenticated_tcp);
  config.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  config.max_pages_per_session = absl::GetFlag(FLAGS_max_pages_per_session);
  config.max_buffers_per_session = absl::GetFlag(FLAGS_max_buffers_per_session);
  config.max_plans_per_session = absl::GetFlag(FLAGS_max_plans_per_session);
  config.max_inflight_per_session = absl::GetFlag(FLAGS_max_inflight_per_session);
  const uint32_t max_lease_ms = absl::GetFlag(FLAGS_max_session_lease_ms);
  if (max_lease_ms < lease_ms) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_session_lease_ms=", max_lease_ms, " is shorter than --session_lease_ms=", lease_ms));
  }
  config.max_session_lease = absl::Milliseconds(max_lease_ms);
  config.max_host_bytes = absl::GetFlag(FLAGS_max_host_bytes);
  config.max_session_host_bytes = absl::GetFlag(FLAGS_max_session_host_bytes);
  config.peer_socket = absl::GetFlag(FLAGS_peer_socket);
  for (const auto& [name, value, minimum] :
       {std::tuple<const char*, int64_t, int64_t>{"max_sessions", config.max_sessions, 1},
        {"max_pages_per_session", config.max_pages_per_session, 0},
        {"max_buffers_per_session", config.max_buffers_per_session, 1},
        {"max_plans_per_session", config.max_plans_per_session, 1},
        {"max_inflight_per_session", config.max_inflight_per_session, 1}}) {
    if (value < minimum) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, "=", value, " must be at least ", minimum));
    }
  }
  const uint32_t drain_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  if (drain_ms > 600000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--drain_timeout_ms=", drain_ms, " is outside 0..600000"));
  }
  config.drain_timeout = absl::Milliseconds(drain_ms);
  config.exit_on_device_error = absl::GetFlag(FLAGS_exit_on_device_error);
  config.testonly_device_fault_after_runs = absl::GetFlag(FLAGS_testonly_device_fault_after_runs);
  if (config.testonly_device_fault_after_runs < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--testonly_device_fault_after_runs=", config.testonly_device_fault_after_runs,
                     " is negative"));
  }
  config.grpc_reflection = absl::GetFlag(FLAGS_grpc_reflection);
  if (config.grpc_reflection && !config.token.empty()) {
    return absl::InvalidArgumentError(
        "--grpc_reflection cannot be combined with a token (--token_file or ATTND_TOKEN): "
        "reflection answers without one, and only grpc.health.v1 is open to callers without it");
  }
  return config;
}

namespace {

constexpr const char kProgramDescription[] =
    "GPU attention-offload daemon (paged KV-cache pools + attention kernels over gRPC).";
constexpr const char kEnvironmentNote[] =
    "Every flag can also be set by an environment variable ATTND_<FLAG> (e.g. "
    "ATTND_LISTEN=unix:///run/attnd.sock, ATTND_BACKEND=cpu); the command line wins.";

// `text` wrapped at `width` columns, every line indented by `indent`, ending in a newline.
std::string Wrapped(std::string_view text, size_t indent, size_t width) {
  std::string out;
  std::string line;
  for (absl::string_view word :
       absl::StrSplit(absl::string_view(text.data(), text.size()), ' ', absl::SkipEmpty())) {
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      absl::StrAppend(&out, std::string(indent, ' '), line, "\n");
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  if (!line.empty()) absl::StrAppend(&out, std::string(indent, ' '), line, "\n");
  return out;
}

}  // namespace

std::string DaemonUsage(std::string_view filter) {
  constexpr size_t kWidth = 100;
  std::string out =
      Wrapped(absl::StrCat("attnd ", ATTND_VERSION, ": ", kProgramDescription), 0, kWidth);
  absl::StrAppend(&out, "\nUsage: attnd [--flag=value ...]\n\n",
                  Wrapped(kEnvironmentNote, 0, kWidth), "\nFlags:\n");
  const absl::string_view wanted(filter.data(), filter.size());
  int listed = 0;
  for (const std::string& name : DaemonFlagNames()) {
    if (!wanted.empty() && !absl::StrContains(name, wanted)) continue;
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    const std::string default_value = flag->DefaultValue();
    absl::StrAppend(&out, "  --", name,
                    " (default: ", default_value.empty() ? "empty" : default_value, ")\n",
                    Wrapped(flag->Help(), 6, kWidth));
    ++listed;
  }
  if (listed == 0) absl::StrAppend(&out, "  (no flag name contains '", wanted, "')\n");
  absl::StrAppend(
      &out, "\n",
      Wrapped("Also: --flagfile=FILE reads flags from FILE (one --flag=value per line); --version "
              "prints the version; --help=SUBSTRING lists the flags whose name contains it.",
              0, kWidth),
      Wrapped(
          "Exit codes: 0 stopped by SIGTERM or SIGINT (and --help), 1 could not start (backend, "
          "listen address), 2 bad flags or environment, 3 sticky device error "
          "(--exit_on_device_error).",
          0, kWidth));
  return out;
}

std::optional<std::string> HelpRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "-")) continue;
    absl::ConsumePrefix(&arg, "-");
    const size_t equals = arg.find('=');
    const absl::string_view name = arg.substr(0, equals);
    const absl::string_view value =
        equals == absl::string_view::npos ? absl::string_view() : arg.substr(equals + 1);
    if (name == "help" || name == "helpmatch") {
      return DaemonUsage(std::string_view(value.data(), value.size()));
    }
    if (name == "h" || name == "helpfull" || name == "helpshort" || name == "helpon" ||
        name == "helppackage") {
      return DaemonUsage();
    }
  }
  return std::nullopt;
}

absl::StatusOr<DaemonConfig> ParseDaemonFlags(int argc, char** argv) {
  // absl refuses a second SetProgramUsageMessage; configure usage once per process.
  static std::once_flag usage_once;
  std::call_once(usage_once, [] {
    // --help lists the flags of this file (absl's default would look for a file named main).
    absl::FlagsUsageConfig usage;
    usage.contains_help_flags = [](absl::string_view file) {
      return absl::EndsWith(file, "server/front/flags.cc");
    };
    usage.contains_helpshort_flags = usage.contains_help_flags;
    usage.version_string = [] { return std::string("attnd ") + ATTND_VERSION + "\n"; };
    // Abseil's own listing is only a fallback (main answers --help through HelpRequested): shown
    // without the build machine's source paths.
    usage.normalize_filename = [](absl::string_view file) {
      const size_t server = file.rfind("server/front/");
      return std::string(server == absl::string_view::npos ? file : file.substr(server));
    };
    absl::SetFlagsUsageConfig(usage);
    absl::SetProgramUsageMessage(absl::StrCat(kProgramDescription, "\n\n", kEnvironmentNote,
                                              "\n\nUsage: attnd [--flag=value ...]"));
  });
  if (absl::Status env = ApplyEnvironmentToFlags(); !env.ok()) return env;
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::vector<std::string> extra(positional.begin() + 1, positional.end());
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected positional arguments: ", absl::StrJoin(extra, " "),
                     " (flags are --name=value)"));
  }
  return DaemonConfigFromFlags();
}

}  // namespace attnd::server::front
