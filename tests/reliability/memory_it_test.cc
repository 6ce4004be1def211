// Host memory against a real daemon: a flood of large inline messages over many streams must not
// stay held once it is over (the streams used to keep each one's largest message), and the host
// budgets refuse, over the wire, what would exceed them. Prints "MEMORY ..." lines (RSS figures)
// for docs/security.md.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "attnd/client/attnd_client.h"
#include "daemon_fixture.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace attnd::testing {
namespace {

// A line of /proc/<pid>/status in KiB: "VmRSS" (resident now) or "VmHWM" (the peak).
int64_t StatusKiB(pid_t pid, const std::string& key) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}
int64_t RssKiB(pid_t pid) { return StatusKiB(pid, "VmRSS"); }

// Sends `per_stream` Runs of a `bytes` inline q on each session at once (refused: over the host
// budget, or no such plan); returns how many came back NOT_FOUND and how many RESOURCE_EXHAUSTED.
std::pair<int, int> Flood(std::vector<std::unique_ptr<client::Session>>& sessions, int per_stream,
                          size_t bytes) {
  std::atomic<int> not_found{0}, exhausted{0};
  std::vector<std::thread> threads;
  for (auto& session : sessions) {
    threads.emplace_back([&, s = session.get()] {
      v1::RunRequest big;
      big.set_plan_id("plan-does-not-exist");
      big.mutable_q()->set_dtype(v1::DTYPE_FLOAT16);
      big.mutable_q()->add_shape(1);
      big.mutable_q()->set_inline_data(std::string(bytes, '\x01'));
      for (int r = 0; r < per_stream && s->is_open(); ++r) {
        const absl::StatusCode code = s->Run(big).status().code();
        if (code == absl::StatusCode::kNotFound) ++not_found;
        if (code == absl::StatusCode::kResourceExhausted) ++exhausted;
      }
    });
  }
  for (auto& t : threads) t.join();
  return {not_found.load(), exhausted.load()};
}

class MemoryTest : public DaemonTest {
 protected:
  static void SetUpTestSuite() {
    DaemonOptions options;
    options.extra_flags = {"--max_session_host_bytes=4194304"};
    StartDaemon(options);
  }
};

// 8 streams send 48 MiB inline tensors (refused at once: each message is over the session's
// host budget, and the plan does not exist); afterwards the daemon's RSS is back near where it
// started. Before the fix each stream kept its largest request alive (~400 MB here).
TEST_F(MemoryTest, AFloodOfLargeMessagesIsNotKept) {
  constexpr int kStreams = 8, kPerStream = 4;
  constexpr size_t kBytes = 48u << 20;
  std::vector<std::unique_ptr<client::Session>> sessions;
  for (int i = 0; i < kStreams; ++i) {
    auto s = client_->OpenSession(absl::StrCat("flood-", i));
    ATTND_ASSERT_OK(s);
    sessions.push_back(*std::move(s));
  }
  const int64_t before = RssKiB(daemon().pid());
  ASSERT_GT(before, 0);
  EXPECT_EQ(Flood(sessions, kPerStream, kBytes).second, kStreams * kPerStream);
  // Freed heap memory goes back within a maintenance tick (1 s).
  int64_t after = RssKiB(daemon().pid());
  for (int i = 0; i < 30 && after - before >= 64 * 1024; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    after = RssKiB(daemon().pid());
  }
  std::printf(
      "MEMORY flood: %d x %zu MiB inline over %d open streams; daemon RSS %lld KiB before, "
      "%lld KiB after\n",
      kStreams * kPerStream, kBytes >> 20, kStreams, static_cast<long long>(before),
      static_cast<long long>(after));
  // The streams are still open: nothing of their messages may stay behind.
  EXPECT_LT(after - before, 160 * 1024) << "the daemon kept " << (after - before) << " KiB";
  for (auto& s : sessions) {  // every stream still answers
    EXPECT_EQ(s->DescribePool("p-none").status().code(), absl::StatusCode::kNotFound);
  }
}

// --max_session_host_bytes over the wire: a plan whose page table would pass it is refused with
// RESOURCE_EXHAUSTED naming the flag, and the session goes on.
TEST_F(MemoryTest, HostBudgetRefusesOversizedPlansOverTheWire) {
  auto s = client_->OpenSession("host-budget");
  ATTND_ASSERT_OK(s);
  ModelShape shape;
  auto pool = (*s)->CreatePool(MakePoolSpec(shape, UniqueName("host-budget")));
  ATTND_ASSERT_OK(pool);
  auto page = (*s)->AllocatePages(pool->pool_id(), 1);
  ATTND_ASSERT_OK(page);
  client::PlanSpec spec;
  spec.pool_id = pool->pool_id();
  spec.num_qo_heads = shape.qo_heads;
  spec.kv_indptr = {0, 400000};
  spec.kv_indices.assign(400000, page->page_ids[0]);  // 1.6 MB on the wire, ~6 MB of tables
  spec.kv_last_page_len = {1};
  EXPECT_TRUE(StatusIs((*s)->CreatePlan(spec), absl::StatusCode::kResourceExhausted,
                       {"--max_session_host_bytes"}));
  spec.kv_indptr = {0, 1};
  spec.kv_indices = {page->page_ids[0]};
  ATTND_EXPECT_OK((*s)->CreatePlan(spec));
}

// A message in flight is host memory of its session (and of the daemon) from when it is read
// until its reply is written: a Run whose inline q would pass --max_session_host_bytes (4 MiB
// here) is refused naming the flag, over the Session stream and unary calls alike, and the
// session goes on (a small message right after runs).
TEST_F(MemoryTest, MessagesCountAgainstTheSessionsHostBudget) {
  auto s = client_->OpenSession("message-budget");
  ATTND_ASSERT_OK(s);
  v1::RunRequest big;
  big.set_plan_id("plan-does-not-exist");
  big.mutable_q()->set_dtype(v1::DTYPE_FLOAT16);
  big.mutable_q()->add_shape(1);
  big.mutable_q()->set_inline_data(std::string(6u << 20, '\x01'));
  EXPECT_TRUE(StatusIs((*s)->Run(big).status(), absl::StatusCode::kResourceExhausted,
                       {"--max_session_host_bytes", "request message"}));
  big.mutable_q()->set_inline_data(std::string(64, '\x01'));
  EXPECT_EQ((*s)->Run(big).status().code(), absl::StatusCode::kNotFound);  // reached the command

  auto leased = client_->OpenUnarySession("message-budget-unary");
  ATTND_ASSERT_OK(leased);
  big.mutable_q()->set_inline_data(std::string(6u << 20, '\x01'));
  EXPECT_TRUE(StatusIs((*leased)->Run(big).status(), absl::StatusCode::kResourceExhausted,
                       {"--max_session_host_bytes", "request message"}));
}

}  // namespace
}  // namespace attnd::testing
