// Faults against a real daemon: load-generator clients SIGKILLed at random points (mid-stream,
// mid-allocation, mid-run), garbage bytes on the socket, deadlines that expire mid-command, and
// SIGTERM under load. After each, the daemon still serves correct results and every page the
// dead held is free again. The counts are printed as "FAULTS ..." lines for docs/security.md.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "daemon_fixture.h"
#include "gtest/gtest.h"
#include "test_util.h"

extern char** environ;

namespace attnd::testing {
namespace {

constexpr int64_t kPoolPages = 512;
constexpr uint32_t kLeaseMs = 1500;

// The load generator's model (bench/load_generator/load_generator.cc, Model()).
ModelShape LoadGeneratorModel() {
  ModelShape shape;
  shape.layers = 2;
  shape.kv_heads = 2;
  shape.qo_heads = 4;
  shape.head_dim = 64;
  shape.page_size = 8;
  shape.num_pages = kPoolPages;
  return shape;
}

struct Child {
  pid_t pid = -1;
  std::string out;
};

Child SpawnLoadGenerator(const std::string& target, const std::string& pool, int sessions,
                         double seconds, uint32_t seed, const std::string& out,
                         bool tolerate_disconnect = false) {
  Child child;
  child.out = out;
  std::vector<std::string> args = {ATTND_LOAD_GENERATOR_PATH, "--target=" + target,
                                   "--pool=" + pool, absl::StrCat("--sessions=", sessions),
                                   absl::StrCat("--duration_s=", seconds),
                                   absl::StrCat("--seed=", seed)};
  if (tolerate_disconnect) args.push_back("--tolerate_disconnect");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  EXPECT_EQ(posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return child;
}

// The child's wait status, or -1 if it is still running after `timeout`.
int WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  int status = 0;
  while (absl::Now() < end) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

class FaultTest : public DaemonTest {
 public:
  static void SetUpTestSuite() {
    DaemonOptions options;
    options.session_lease_ms = kLeaseMs;
    options.extra_flags = {"--threads=2"};
    StartDaemon(options);
  }

 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    if (HasFatalFailure()) return;
    auto holder = client_->OpenSession("fault-holder");
    ATTND_ASSERT_OK(holder);
    holder_ = *std::move(holder);
    pool_name_ = UniqueName("faults");
    auto pool = holder_->CreatePool(MakePoolSpec(LoadGeneratorModel(), pool_name_));
    ATTND_ASSERT_OK(pool);
    pool_id_ = pool->pool_id();
    char dir[] = "/tmp/attnd-faults-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    DaemonTest::TearDown();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  int64_t WaitForFreePages(int64_t want, absl::Duration timeout = absl::Seconds(15)) {
    const absl::Time deadline = absl::Now() + timeout;
    int64_t free_pages = -1;
    while (true) {
      auto pool = holder_->DescribePool(pool_id_);
      if (pool.ok()) free_pages = pool->free_pages();
      if (free_pages == want || absl::Now() > deadline) return free_pages;
      absl::SleepFor(absl::Milliseconds(50));
    }
  }

  // A fresh session attached to the pool computes correct attention (the daemon is sane).
  void ExpectCorrectResults() {
    ExpectServing();
    auto s = client_->OpenSession("fault-check");
    ATTND_ASSERT_OK(s);
    ATTND_ASSERT_OK((*s)->AttachPool(pool_name_));
    Workload workload(s->get(), LoadGeneratorModel(), pool_id_, 7);
    ATTND_ASSERT_OK(workload.Prefill({5, 17, 33}));
    ATTND_ASSERT_OK(workload.DecodeStep());
    ATTND_ASSERT_OK(workload.DecodeStep());
    ATTND_ASSERT_OK(workload.FreeAll());
  }

  std::unique_ptr<client::Session> holder_;
  std::string pool_name_, pool_id_, dir_;
};

TEST_F(FaultTest, ClientsKilledAtRandomPointsReleaseEverything) {
  std::mt19937 rng(20240607);
  int killed = 0;
  const int rounds = 8;
  for (int round = 0; round < rounds; ++round) {
    std::vector<Child> children;
    for (int c = 0; c < 2; ++c) {
      children.push_back(SpawnLoadGenerator(daemon().target(), pool_name_, 3, 30, rng(),
                                            absl::StrCat(dir_, "/lg-", round, "-", c, ".out")));
    }
    // Anywhere from connecting to mid-workload: mid-stream, mid-allocation, mid-run.
    absl::SleepFor(absl::Milliseconds(std::uniform_int_distribution<int>(50, 1500)(rng)));
    for (Child& child : children) {
      kill(child.pid, SIGKILL);
      ASSERT_NE(WaitChild(child.pid, absl::Seconds(10)), -1);
      ++killed;
    }
    ASSERT_TRUE(daemon().IsRunning()) << daemon().LogTail();
  }
  EXPECT_EQ(WaitForFreePages(kPoolPages), kPoolPages) << "pages of killed clients leaked";
  ExpectCorrectResults();
  EXPECT_EQ(WaitForFreePages(kPoolPages), kPoolPages);
  std::printf("FAULTS clients_killed=%d\n", killed);
}

TEST_F(FaultTest, GarbageBytesOnTheSocketDoNotHurtTheDaemon) {
  const std::string path = daemon().target().substr(std::string("unix://").size());
  std::mt19937 rng(99);
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  std::vector<std::string> payloads = {
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
      preface,                                              // preface, then nothing
      preface + std::string("\xff\xff\xff\x01\x00\x00\x00\x00\x01", 9),  // huge bogus frame
      preface + std::string("\x00\x00\x04\x00\x01\x00\x00\x00\x01" "abcd", 13),  // DATA on idle
      std::string(1 << 16, '\0'),
      "",  // connect and close at once
  };
  for (int i = 0; i < 40; ++i) {
    std::string random(std::uniform_int_distribution<int>(1, 8192)(rng), '\0');
    for (char& c : random) c = static_cast<char>(rng());
    payloads.push_back(i % 2 == 0 ? random : preface + random);
  }
  int sent = 0;
  for (const std::string& payload : payloads) {
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    if (!payload.empty()) {
      const ssize_t n = send(fd, payload.data(), payload.size(), MSG_NOSIGNAL);
      (void)n;  // the daemon may hang up mid-way; that is its right
    }
    // Read whatever the daemon answers (a GOAWAY, or nothing) without waiting long.
    timeval tv{0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[256];
    (void)recv(fd, buf, sizeof(buf), 0);
    close(fd);
    ++sent;
  }
  ASSERT_TRUE(daemon().IsRunning()) << daemon().LogTail();
  ExpectCorrectResults();
  EXPECT_EQ(WaitForFreePages(kPoolPages), kPoolPages);
  std::printf("FAULTS garbage_connections=%d\n", sent);
}

TEST_F(FaultTest, ExpiredDeadlinesMidCommandLeakNothing) {
  // A unary session whose calls have deadlines too short to finish (past, or 100 to 900 µs): some expire
  // before they are sent, some complete on the daemon after the client gave up (pages the client
  // never learnt of). The session's lease
  // must return them all.
  client::ClientOptions options;
  options.target = daemon().target();
  int expired = 0;
  {
    auto patient = client::Client::Create(options);
    ATTND_ASSERT_OK(patient);
    auto session = (*patient)->OpenUnarySession("deadline", kLeaseMs);
    ATTND_ASSERT_OK(session);
    ATTND_ASSERT_OK((*session)->AttachPool(pool_name_));
    const std::string id = (*session)->session_id();
    auto stub = v1::Attnd::NewStub((*patient)->channel());
    for (int i = 0; i < 200; ++i) {
      grpc::ClientContext context;
      context.AddMetadata(client::kSessionMetadataKey, id);
      // i % 10 == 0: a deadline already past (expires for sure); else 100 to 900 µs.
      context.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::microseconds(i % 10 == 0 ? -1000 : (i % 10) * 100));
      v1::AllocatePagesRequest request;
      request.set_pool_id(pool_id_);
      request.set_count(1);
      v1::AllocatePagesResponse response;
      const grpc::Status status = stub->AllocatePages(&context, request, &response);
      if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) ++expired;
      else ASSERT_TRUE(status.ok()) << status.error_message();
    }
    // Streams with a short per-command deadline, abandoned mid-command.
    client::ClientOptions hasty = options;
    hasty.default_deadline = absl::Milliseconds(2);
    auto hasty_client = client::Client::Create(hasty);
    ATTND_ASSERT_OK(hasty_client);
    for (int i = 0; i < 20; ++i) {
      auto s = (*hasty_client)->OpenSession("hasty");
      if (!s.ok()) {
        ++expired;
        continue;
      }
      if (!(*s)->AttachPool(pool_name_).ok()) ++expired;
      if (!(*s)->AllocatePages(pool_id_, 2).ok()) ++expired;
      (*s)->Abort();
    }
    (*session)->Release();  // the client "dies": no CloseSession; the lease must clean up
  }
  EXPECT_GE(expired, 20) << "the past deadlines did not expire";
  EXPECT_EQ(WaitForFreePages(kPoolPages, absl::Milliseconds(kLeaseMs) + absl::Seconds(10)),
            kPoolPages);
  ExpectCorrectResults();
  std::printf("FAULTS deadlines_expired=%d\n", expired);
}

// Its own daemon: SIGTERM while load generators run. In-flight commands finish or fail cleanly
// (UNAVAILABLE/CANCELLED), the daemon exits 0 well within its drain time, no client hangs.
TEST(FaultShutdownTest, SigtermUnderLoadExitsCleanly) {
  DaemonOptions options;
  options.extra_flags = {"--threads=2"};
  auto daemon = DaemonProcess::Start(options);
  ATTND_ASSERT_OK(daemon);
  char dir[] = "/tmp/attnd-sigterm-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  auto client = (*daemon)->NewClient();
  auto holder = client->OpenSession("holder");
  ATTND_ASSERT_OK(holder);
  const std::string pool = "sigterm-pool";
  ATTND_ASSERT_OK((*holder)->CreatePool(MakePoolSpec(LoadGeneratorModel(), pool)));
  std::vector<Child> children;
  for (int c = 0; c < 3; ++c) {
    children.push_back(SpawnLoadGenerator((*daemon)->target(), pool, 3, 60, 100 + c,
                                          absl::StrCat(dir, "/lg-", c, ".out"), true));
  }
  absl::SleepFor(absl::Seconds(2));
  const absl::Time start = absl::Now();
  const int status = (*daemon)->Stop(absl::Seconds(20));
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "wait status " << status << "\n" << (*daemon)->LogTail();
  EXPECT_LT(took, absl::Seconds(12)) << (*daemon)->LogTail();
  for (const Child& child : children) {
    const int child_status = WaitChild(child.pid, absl::Seconds(30));
    if (child_status == -1) {
      kill(child.pid, SIGKILL);
      waitpid(child.pid, nullptr, 0);
    }
    EXPECT_NE(child_status, -1) << "a client hung after the daemon stopped";
    EXPECT_TRUE(WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0)
        << "load generator: " << ReadFile(child.out);
  }
  std::printf("FAULTS sigterm_under_load=1 drain_ms=%lld\n",
              static_cast<long long>(absl::ToInt64Milliseconds(took)));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace attnd::testing
