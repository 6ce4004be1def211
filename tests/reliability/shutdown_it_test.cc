// SIGTERM ends a real daemon within its drain (--drain_timeout_ms) + 1 s, with exit code 0, in
// the cases that used to overrun it: after large messages (gRPC's TCP backup poller kept the exit
// waiting 10 s after "shutdown complete"), with a Run that outlives the drain (grpc::Server's
// shutdown waited for its thread), and with HTTP clients holding connections (the HTTP server's
// stop waited out their keep-alive and read timeouts).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace attnd::testing {
namespace {

constexpr int kDrainMs = 1500;
constexpr int kHeadDim = 128;

// A pool, pages and a plan over them whose inline Run moves `tokens` x `qo_heads` x 128 floats
// in and out. Decode: one page per request (cheap to compute); prefill: one request of `tokens`
// query and KV tokens (quadratic: seconds on the CPU backend).
struct BigRun {
  client::RunArgs run;
  size_t q_bytes = 0;
};

absl::StatusOr<BigRun> MakeBigRun(client::SessionApi& session, v1::AttentionKind kind, int tokens,
                                  int qo_heads) {
  constexpr int kPageSize = 16;
  const int pages = kind == v1::ATTENTION_KIND_DECODE ? tokens : tokens / kPageSize;
  client::PoolSpec pool_spec;
  pool_spec.name = absl::StrCat("big-", getpid(), "-", kind);
  pool_spec.head_dim = kHeadDim;
  pool_spec.page_size = kPageSize;
  pool_spec.kv_dtype = v1::DTYPE_FLOAT32;
  pool_spec.num_pages = pages;
  auto pool = session.CreatePool(pool_spec);
  if (!pool.ok()) return pool.status();
  auto grant = session.AllocatePages(pool->pool_id(), pages);
  if (!grant.ok()) return grant.status();
  client::PlanSpec plan;
  plan.pool_id = pool->pool_id();
  plan.kind = kind;
  plan.num_qo_heads = qo_heads;
  if (kind == v1::ATTENTION_KIND_DECODE) {
    plan.kv_indptr.push_back(0);
    for (int b = 0; b < tokens; ++b) {
      plan.kv_indices.push_back(grant->page_ids[b]);
      plan.kv_indptr.push_back(b + 1);
      plan.kv_last_page_len.push_back(kPageSize);
    }
  } else {
    plan.kv_indptr = {0, pages};
    plan.kv_indices = grant->page_ids;
    plan.kv_last_page_len = {kPageSize};
    plan.qo_indptr = {0, tokens};
  }
  auto created = session.CreatePlan(plan);
  if (!created.ok()) return created.status();
  BigRun big;
  big.q_bytes = size_t{4} * tokens * qo_heads * kHeadDim;
  auto q = client::MakeTensorFromBytes(std::string(big.q_bytes, '\0'), {tokens, qo_heads, kHeadDim},
                                       v1::DTYPE_FLOAT32);
  if (!q.ok()) return q.status();
  big.run.plan_id = created->plan_id;
  big.run.q = *std::move(q);
  return big;
}

absl::StatusOr<std::unique_ptr<DaemonProcess>> StartWithDrain(std::vector<std::string> extra = {}) {
  DaemonOptions options;
  options.extra_flags = {absl::StrCat("--drain_timeout_ms=", kDrainMs), "--threads=1"};
  options.extra_flags.insert(options.extra_flags.end(), extra.begin(), extra.end());
  return DaemonProcess::Start(options);
}

const absl::Duration kBound = absl::Milliseconds(kDrainMs) + absl::Seconds(1);

// SIGTERM: the daemon must exit by itself with code 0 within the drain + 1 s.
void ExpectSigtermExitsCleanlyInTime(DaemonProcess& daemon) {
  const absl::Time start = absl::Now();
  const int status = daemon.Stop(absl::Seconds(30));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(WIFEXITED(status)) << "wait status " << status << "\n" << daemon.LogTail();
  EXPECT_EQ(WEXITSTATUS(status), 0) << daemon.LogTail();
  EXPECT_LT(took, kBound) << daemon.LogTail();
}

// A daemon with a short drain and a unary session in it with a BigRun ready.
class BigRunTest : public ::testing::Test {
 protected:
  void StartWithRun(v1::AttentionKind kind, int tokens, int qo_heads) {
    auto daemon = StartWithDrain();
    ATTND_ASSERT_OK(daemon);
    daemon_ = *std::move(daemon);
    client_ = daemon_->NewClient();
    auto session = client_->OpenUnarySession("big-runs");
    ATTND_ASSERT_OK(session);
    session_ = *std::move(session);
    auto big = MakeBigRun(*session_, kind, tokens, qo_heads);
    ATTND_ASSERT_OK(big);
    big_ = *std::move(big);
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<client::UnarySession> session_;
  BigRun big_;
};

TEST_F(BigRunTest, SigtermAfterLargeMessagesExitsWithinTheDrain) {
  // 2048 x 32 x 128 floats: 32 MiB in and 32 MiB out per Run.
  ASSERT_NO_FATAL_FAILURE(StartWithRun(v1::ATTENTION_KIND_DECODE, 2048, 32));
  ASSERT_GE(big_.q_bytes, size_t{32} << 20);
  for (int i = 0; i < 4; ++i) {
    auto out = session_->Run(big_.run);
    ATTND_ASSERT_OK(out);
    ASSERT_EQ(out->o().inline_data().size(), big_.q_bytes);
  }
  ExpectSigtermExitsCleanlyInTime(*daemon_);
}

TEST_F(BigRunTest, SigtermWithALongRunInFlightExitsWithinTheDrain) {
  // One prefill request of 8192 tokens x 8 heads, no causal mask: ~70 GFLOP on one thread, far
  // longer than the drain (the daemon exits under it, so the test does not wait for it).
  ASSERT_NO_FATAL_FAILURE(StartWithRun(v1::ATTENTION_KIND_PREFILL, 8192, 8));
  std::atomic<bool> finished{false};
  absl::Status run_status;
  std::thread runner([&] {
    run_status = session_->Run(big_.run).status();
    finished = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  const bool in_flight = !finished;
  ExpectSigtermExitsCleanlyInTime(*daemon_);
  runner.join();
  EXPECT_TRUE(in_flight) << "the Run finished before SIGTERM; make it longer";
  EXPECT_FALSE(run_status.ok()) << "the Run completed within the drain; make it longer";
}

// While the drain waits for a running command, other sessions' calls are still served (or end
// UNAVAILABLE / CANCELLED once the server stops): their identity stays valid until then.
TEST_F(BigRunTest, CallsDuringTheDrainAreServedOrUnavailable) {
  ASSERT_NO_FATAL_FAILURE(StartWithRun(v1::ATTENTION_KIND_PREFILL, 8192, 8));
  auto other = client_->OpenUnarySession("during-the-drain");
  ATTND_ASSERT_OK(other);
  std::thread runner([&] { (void)session_->Run(big_.run); });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_EQ(kill(daemon_->pid(), SIGTERM), 0);
  absl::SleepFor(absl::Milliseconds(300));  // draining: the Run holds it
  ModelShape shape;
  const absl::Status during = (*other)->CreatePool(MakePoolSpec(shape, "during-drain")).status();
  EXPECT_TRUE(during.ok() || absl::IsUnavailable(during) || absl::IsCancelled(during)) << during;
  ExpectSigtermExitsCleanlyInTime(*daemon_);
  runner.join();
}

// A TCP connection to the daemon's HTTP port on 127.0.0.1.
int ConnectHttp(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

TEST(ShutdownTest, SigtermWithHttpClientsHoldingConnectionsExitsWithinTheDrain) {
  auto daemon = StartWithDrain();
  ATTND_ASSERT_OK(daemon);
  // A scraper keeping its connection alive after one request, and a client that sent half a
  // request.
  const int keep_alive = ConnectHttp((*daemon)->http_port());
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
  ASSERT_EQ(send(keep_alive, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  char buffer[4096];
  ASSERT_GT(recv(keep_alive, buffer, sizeof(buffer), 0), 0);
  const int half = ConnectHttp((*daemon)->http_port());
  ASSERT_EQ(send(half, "GET /met", 8, MSG_NOSIGNAL), 8);
  absl::SleepFor(absl::Milliseconds(100));
  ExpectSigtermExitsCleanlyInTime(**daemon);
  close(keep_alive);
  close(half);
  // Nothing waited for a deadline: the HTTP server did not hold the exit.
  EXPECT_EQ((*daemon)->LogTail().find("deadline; exiting now"), std::string::npos)
      << (*daemon)->LogTail();
}

}  // namespace
}  // namespace attnd::testing
