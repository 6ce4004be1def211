// The first run, as a new user meets it: `attnd --help`, a start that cannot work (a second
// daemon on the same HTTP port, socket or TCP port; a socket in a directory that does not exist)
// and --backend=auto on a machine without a usable GPU. Each failure exits 1 with one message on
// stderr that names the flag and what to do.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon_process.h"
#include "gtest/gtest.h"

namespace attnd::testing {
namespace {

constexpr int kExitFailure = 1;  // server/front/process_exit.h: could not start

AttndRun RunAttnd(const std::vector<std::string>& args) {
  absl::StatusOr<AttndRun> run = RunAttndToExit(args);
  EXPECT_TRUE(run.ok()) << run.status();
  return run.ok() ? *run : AttndRun{};
}

// A private directory for sockets, removed at the end.
class ScratchDir {
 public:
  ScratchDir() {
    char tmpl[] = "/tmp/attnd-first-run-XXXXXX";
    if (mkdtemp(tmpl) != nullptr) path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A TCP listener on 127.0.0.1 held by the test (port 0: any free port).
class HeldPort {
 public:
  HeldPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        listen(fd_, 4) == 0 && getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port_ = ntohs(addr.sin_port);
    }
  }
  ~HeldPort() {
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(FirstRunTest, HelpExitsZeroAndPrintsTheFlagsWithoutSourcePaths) {
  for (const char* help : {"--help", "--helpfull", "-h"}) {
    const AttndRun run = RunAttnd({help});
    EXPECT_EQ(run.exit_code, 0) << help << "\n" << run.err;
    EXPECT_NE(run.out.find("Usage: attnd [--flag=value ...]"), std::string::npos) << run.out;
    EXPECT_NE(run.out.find("  --listen (default: unix:///tmp/attnd.sock)"), std::string::npos);
    EXPECT_NE(run.out.find("  --http_listen (default: 127.0.0.1:9401)"), std::string::npos);
    EXPECT_EQ(run.out.find(".cc"), std::string::npos) << run.out;
    EXPECT_EQ(run.err, "") << help;
  }
}

TEST(FirstRunTest, SecondDaemonOnTheSameHttpPortSaysHowToChooseAnother) {
  absl::StatusOr<std::unique_ptr<DaemonProcess>> first = DaemonProcess::Start();
  ASSERT_TRUE(first.ok()) << first.status();
  ScratchDir dir;
  const std::string http = absl::StrCat("127.0.0.1:", (*first)->http_port());
  const AttndRun run = RunAttnd({absl::StrCat("--listen=unix://", dir.path(), "/second.sock"),
                                 "--http_listen=" + http, "--backend=cpu"});
  EXPECT_EQ(run.exit_code, kExitFailure) << run.err;
  EXPECT_NE(run.err.find(absl::StrCat("--http_listen=", http, ": HTTP cannot listen on ", http,
                                      ": port ", (*first)->http_port(),
                                      " of 127.0.0.1 is in use (another attnd?); choose another "
                                      "port with --http_listen=HOST:PORT")),
            std::string::npos)
      << run.err;
  EXPECT_NE(run.err.find("disable HTTP with --http_listen= "), std::string::npos) << run.err;
  EXPECT_TRUE((*first)->IsRunning());
}

// The default case of a second daemon: the same socket. The first one's socket is not taken.
TEST(FirstRunTest, SecondDaemonOnTheSameSocketLeavesTheFirstOneReachable) {
  absl::StatusOr<std::unique_ptr<DaemonProcess>> first = DaemonProcess::Start();
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string socket = (*first)->target().substr(std::string("unix://").size());
  const AttndRun run =
      RunAttnd({"--listen=" + (*first)->target(), "--http_listen=", "--backend=cpu"});
  EXPECT_EQ(run.exit_code, kExitFailure) << run.err;
  EXPECT_NE(run.err.find(absl::StrCat("--listen=", (*first)->target(), ": unix socket '", socket,
                                      "' is in use: a process listens on it (another attnd?); "
                                      "stop it, or choose another address with "
                                      "--listen=unix:///PATH or --listen=HOST:PORT")),
            std::string::npos)
      << run.err;
  ASSERT_EQ(access(socket.c_str(), F_OK), 0) << "the first daemon's socket was removed";
  auto health = (*first)->NewClient()->CheckHealth();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::HealthStatus::kServing);
}

TEST(FirstRunTest, TcpPortInUseSaysHowToChooseAnother) {
  HeldPort held;
  ASSERT_GT(held.port(), 0);
  const std::string listen = absl::StrCat("127.0.0.1:", held.port());
  const AttndRun run = RunAttnd({"--listen=" + listen, "--http_listen=", "--backend=cpu"});
  EXPECT_EQ(run.exit_code, kExitFailure) << run.err;
  EXPECT_NE(
      run.err.find(absl::StrCat("--listen=", listen, ": gRPC cannot listen: port ", held.port(),
                                " of 127.0.0.1 is in use (another attnd?); choose another "
                                "address with --listen=unix:///PATH or --listen=HOST:PORT")),
      std::string::npos)
      << run.err;
}

TEST(FirstRunTest, SocketInAMissingDirectoryNamesTheDirectory) {
  ScratchDir dir;
  const std::string missing = dir.path() + "/no-such-dir";
  const AttndRun run =
      RunAttnd({"--listen=unix://" + missing + "/attnd.sock", "--http_listen=", "--backend=cpu"});
  EXPECT_EQ(run.exit_code, kExitFailure) << run.err;
  EXPECT_NE(run.err.find(absl::StrCat("--listen=unix://", missing, "/attnd.sock: the directory '",
                                      missing, "' of unix socket '", missing,
                                      "/attnd.sock' does not exist; create it, or choose another "
                                      "address with --listen=")),
            std::string::npos)
      << run.err;
  EXPECT_EQ(run.err.find("address in use"), std::string::npos) << run.err;
}

// --backend=auto without a usable GPU: the log says why in plain words and that the cpu backend
// runs; CUDA's own error (e.g. "CUDA driver version is insufficient for CUDA runtime version"
// where no driver is installed) only in parentheses after it.
TEST(FirstRunTest, AutoBackendSaysPlainlyWhyItUsesTheCpu) {
  DaemonOptions options;
  options.backend = "auto";
  absl::StatusOr<std::unique_ptr<DaemonProcess>> daemon = DaemonProcess::Start(options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string log = (*daemon)->LogTail(1 << 20);
  if (log.find("backend=cuda") != std::string::npos) GTEST_SKIP() << "this machine has a GPU";
  const size_t line = log.find("backend auto: ");
  ASSERT_NE(line, std::string::npos) << log;
  const std::string text = log.substr(line, log.find('\n', line) - line);
  // "...; using the cpu backend (CUDA: <its error>)" (the CUDA part only when built with CUDA).
  const size_t using_cpu = text.find("; using the cpu backend");
  ASSERT_NE(using_cpu, std::string::npos) << text;
  const std::string reason = text.substr(0, using_cpu);
  EXPECT_EQ(reason.find("CUDA driver version"), std::string::npos) << text;
  bool plain = false;
  for (const char* known : {"built without the CUDA backend", "no NVIDIA driver is loaded",
                            "no GPU device is visible", "no CUDA device", "cannot be used"}) {
    plain |= reason.find(known) != std::string::npos;
  }
  EXPECT_TRUE(plain) << text;
  EXPECT_NE(log.find("backend=cpu"), std::string::npos) << log;
}

}  // namespace
}  // namespace attnd::testing
