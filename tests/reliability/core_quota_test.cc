// Quotas of the Core (CoreOptions max_*): each limit is enforced with RESOURCE_EXHAUSTED naming
// the limit and its flag, and freeing what was held makes room again.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/core/core.h"
#include "tests/unit/server/core/core_test_util.h"

namespace attnd::server::testing {
namespace {

void ExpectQuota(const absl::Status& status, const std::string& flag) {
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_NE(status.message().find("--" + flag), std::string::npos) << status;
  EXPECT_NE(status.message().find("limit"), std::string::npos) << status;
}

TEST(CoreQuotaTest, MaxSessionsRefusesTheNextOpenUntilOneCloses) {
  CoreOptions options;
  options.max_sessions = 3;
  auto core = MakeCore(options);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(Open(*core));
  auto fourth = core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kLeased);
  ExpectQuota(fourth.status(), "max_sessions");
  ASSERT_TRUE(core->CloseSession(ids[0]).ok());
  EXPECT_TRUE(core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kLeased).ok());
}

TEST(CoreQuotaTest, MaxPagesPerSessionCountsEveryPoolAndFreeingMakesRoom) {
  CoreOptions options;
  options.max_pages_per_session = 10;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  const std::string other = Open(*core);
  const v1::PoolInfo a = CreatePool(*core, s, {.name = "qa", .num_pages = 32});
  const v1::PoolInfo b = CreatePool(*core, s, {.name = "qb", .num_pages = 32});
  const std::vector<int32_t> in_a = Allocate(*core, s, a.pool_id(), 6);
  ASSERT_EQ(in_a.size(), 6u);
  ASSERT_EQ(Allocate(*core, s, b.pool_id(), 4).size(), 4u);
  v1::AllocatePagesRequest one;
  one.set_pool_id(b.pool_id());
  one.set_count(1);
  const auto refused = core->AllocatePages(s, one);
  ExpectQuota(refused.status(), "max_pages_per_session");
  EXPECT_NE(refused.status().message().find("holds 10"), std::string::npos) << refused.status();
  // Nothing was taken by the refused call.
  EXPECT_EQ(FreePagesOf(*core, s, b.pool_id()), 28);
  // Another session has its own quota.
  v1::AttachPoolRequest attach;
  attach.set_name("qa");
  ASSERT_TRUE(core->AttachPool(other, attach).ok());
  EXPECT_EQ(Allocate(*core, other, a.pool_id(), 10).size(), 10u);
  // Freeing makes room again.
  v1::FreePagesRequest free_request;
  free_request.set_pool_id(a.pool_id());
  free_request.add_page_ids(in_a[0]);
  ASSERT_TRUE(core->FreePages(s, free_request).ok());
  EXPECT_TRUE(core->AllocatePages(s, one).ok());
}

TEST(CoreQuotaTest, MaxPlansPerSession) {
  CoreOptions options;
  options.max_plans_per_session = 2;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s, {.name = "qp"});
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 1);
  const v1::CreatePlanRequest plan =
      PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {pages}, {1}, {});
  auto first = core->CreatePlan(s, plan);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(core->CreatePlan(s, plan).ok());
  ExpectQuota(core->CreatePlan(s, plan).status(), "max_plans_per_session");
  v1::DeletePlanRequest del;
  del.set_plan_id(first->plan_id());
  ASSERT_TRUE(core->DeletePlan(s, del).ok());
  EXPECT_TRUE(core->CreatePlan(s, plan).ok());
}

TEST(CoreQuotaTest, MaxBuffersPerSession) {
  CoreOptions options;
  options.max_buffers_per_session = 2;
  auto core = MakeCore(options);
  const Identity peer = AddTestPeer(*core);
  const std::string s = Open(*core, SessionBinding::kStream, "test", 0, peer);
  TestMemfd memfd(4096);
  auto first = RegisterMemfd(*core, s, peer, memfd, 4096);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(RegisterMemfd(*core, s, peer, memfd, 4096).ok());
  ExpectQuota(RegisterMemfd(*core, s, peer, memfd, 4096).status(), "max_buffers_per_session");
  v1::UnregisterBufferRequest unregister;
  unregister.set_buffer_id(*first);
  ASSERT_TRUE(core->UnregisterBuffer(s, unregister).ok());
  EXPECT_TRUE(RegisterMemfd(*core, s, peer, memfd, 4096).ok());
}

TEST(CoreQuotaTest, MaxInflightPerSessionRefusesCommandsBeyondTheLimit) {
  CoreOptions options;
  options.max_inflight_per_session = 2;
  auto core = MakeCore(options);
  const std::string s = Open(*core, SessionBinding::kLeased);
  const v1::PoolInfo pool = CreatePool(*core, s, {.name = "qi", .num_pages = 4096});
  // Many threads hammer one session with cheap commands; some must be refused, never more than
  // the limit run at once, and every refusal names the flag.
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      v1::DescribePoolRequest describe;
      describe.set_pool_id(pool.pool_id());
      for (int i = 0; i < 300; ++i) {
        const auto r = core->DescribePool(s, describe);
        if (r.ok()) {
          ++ok;
        } else if (r.status().code() == absl::StatusCode::kResourceExhausted &&
                   r.status().message().find("--max_inflight_per_session") != std::string::npos) {
          ++refused;
        } else {
          ++other;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(ok.load() + refused.load(), 8 * 300);
  // A lone command afterwards goes through (the counter went back to 0).
  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  EXPECT_TRUE(core->DescribePool(s, describe).ok());
}

TEST(CoreQuotaTest, InvalidLimitsAreRefusedAtCreate) {
  for (int which = 0; which < 5; ++which) {
    CoreOptions options;
    options.max_pool_bytes = 1 << 20;
    switch (which) {
      case 0: options.max_sessions = 0; break;
      case 1: options.max_pages_per_session = -1; break;
      case 2: options.max_buffers_per_session = 0; break;
      case 3: options.max_plans_per_session = 0; break;
      case 4: options.max_inflight_per_session = 0; break;
    }
    auto backend = kernels::CreateCpuBackend(kernels::CpuBackendOptions{.num_threads = 1});
    ASSERT_TRUE(backend.ok());
    auto core = Core::Create(options, *std::move(backend));
    EXPECT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument) << which;
  }
}

}  // namespace
}  // namespace attnd::server::testing
