#include "daemon_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace attnd::testing {

std::string DaemonBinaryPath() {
  if (const char* env = std::getenv("ATTND_BIN"); env != nullptr && *env != '\0') return env;
  return ATTND_DAEMON_PATH;
}

std::string TestBackend() {
  if (const char* env = std::getenv("ATTND_IT_BACKEND"); env != nullptr && *env != '\0') return env;
  return "cpu";
}

absl::StatusOr<int> PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("bind/getsockname: ", std::strerror(err)));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Spawns `args` (args[0] looked up in PATH) with stdin /dev/null, stdout into `out_path` and
// stderr into `err_path` (both into one file when they are the same path).
absl::StatusOr<pid_t> Spawn(std::vector<std::string> args, const std::string& out_path,
                            const std::string& err_path) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (err_path == out_path) {
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
  }
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("posix_spawn(", argv[0], "): ", std::strerror(rc)));
  }
  return pid;
}

}  // namespace

absl::StatusOr<AttndRun> RunAttndToExit(const std::vector<std::string>& args,
                                        absl::Duration timeout) {
  char dir_template[] = "/tmp/attnd-run-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  const std::string dir = dir_template;
  const std::string out_path = dir + "/stdout";
  const std::string err_path = dir + "/stderr";
  std::vector<std::string> all = {DaemonBinaryPath()};
  all.insert(all.end(), args.begin(), args.end());
  absl::StatusOr<pid_t> spawned = Spawn(std::move(all), out_path, err_path);
  if (!spawned.ok()) {
    std::filesystem::remove_all(dir);
    return spawned.status();
  }
  const pid_t pid = *spawned;
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  AttndRun run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.out = ReadFile(out_path);
  run.err = ReadFile(err_path);
  std::filesystem::remove_all(dir);
  return run;
}

absl::StatusOr<std::unique_ptr<DaemonProcess>> DaemonProcess::Start(const DaemonOptions& options) {
  std::unique_ptr<DaemonProcess> daemon(new DaemonProcess());
  char dir_template[] = "/tmp/attnd-it-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  daemon->dir_ = dir_template;
  const std::string socket_path = daemon->dir_ + "/attnd.sock";
  daemon->target_ = "unix://" + socket_path;
  daemon->log_path_ = daemon->dir_ + "/attnd.log";
  absl::StatusOr<int> port = PickFreePort();
  if (!port.ok()) return port.status();
  daemon->http_port_ = *port;

  const std::string binary = options.binary.empty() ? DaemonBinaryPath() : options.binary;
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("attnd binary ", binary, " is not executable: ", std::strerror(errno)));
  }
  std::vector<std::string> args = {
      binary,
      absl::StrCat("--listen=unix://", socket_path),
      absl::StrCat("--http_listen=127.0.0.1:", daemon->http_port_),
      absl::StrCat("--backend=", options.backend.empty() ? TestBackend() : options.backend),
      absl::StrCat("--session_lease_ms=", options.session_lease_ms),
      absl::StrCat("--max_message_bytes=", options.max_message_bytes),
      absl::StrCat("--log_level=", options.log_level),
  };
  args.insert(args.end(), options.extra_flags.begin(), options.extra_flags.end());
  args.insert(args.begin(), options.command_prefix.begin(), options.command_prefix.end());
  absl::StatusOr<pid_t> pid = Spawn(std::move(args), daemon->log_path_, daemon->log_path_);
  if (!pid.ok()) return pid.status();
  daemon->pid_ = *pid;
  if (options.on_spawned) options.on_spawned(socket_path);

  // Wait for SERVING over grpc.health.v1.
  std::unique_ptr<client::Client> client = daemon->NewClient();
  const absl::Time deadline = absl::Now() + options.start_timeout;
  absl::Status last = absl::UnavailableError("not started");
  while (absl::Now() < deadline) {
    if (!daemon->IsRunning()) {
      return absl::InternalError(absl::StrCat("attnd exited during start-up (wait status ",
                                              daemon->wait_status_, "); log:\n",
                                              daemon->LogTail()));
    }
    if (access(socket_path.c_str(), F_OK) == 0) {
      absl::StatusOr<client::HealthStatus> health = client->CheckHealth();
      if (health.ok() && *health == client::HealthStatus::kServing) return daemon;
      last =
          health.ok() ? absl::UnavailableError(client::HealthStatusName(*health)) : health.status();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("attnd not SERVING after ", absl::FormatDuration(options.start_timeout),
                   " (last: ", last.ToString(), "); log:\n", daemon->LogTail()));
}

std::unique_ptr<client::Client> DaemonProcess::NewClient() const {
  client::ClientOptions options;
  options.target = target_;
  options.default_deadline = absl::Seconds(60);
  options.max_message_bytes = 512ll << 20;
  options.client_name = "attnd-integration-test";
  absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Create(options);
  return client.ok() ? *std::move(client) : nullptr;
}

bool DaemonProcess::IsRunning() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    wait_status_ = status;
    pid_ = -1;
  }
  return false;
}

std::string DaemonProcess::LogTail(size_t max_bytes) const {
  std::ifstream in(log_path_);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

int DaemonProcess::WaitForExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (IsRunning()) {
    if (absl::Now() >= deadline) return -1;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return wait_status_;
}

int DaemonProcess::Stop(absl::Duration grace) {
  if (!IsRunning()) return wait_status_;
  kill(pid_, SIGTERM);
  if (const int status = WaitForExit(grace); status != -1) return status;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  wait_status_ = status;
  pid_ = -1;
  return wait_status_;
}

DaemonProcess::~DaemonProcess() {
  Stop();
  if (!dir_.empty()) {
    std::error_code ignored;
    if (std::getenv("ATTND_KEEP_TEST_DIRS") == nullptr) std::filesystem::remove_all(dir_, ignored);
  }
}

}  // namespace attnd::testing
