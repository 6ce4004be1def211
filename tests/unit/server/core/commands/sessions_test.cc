// Session commands through Core (server/core/commands/sessions.cc): open, close, identities,
// leases, client names, isolation between sessions and clean-up.
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

TEST(CoreSessionsTest, OpenCloseAndUnknownSessions) {
  auto core = MakeCore();
  const std::string a = Open(*core);
  const std::string b = Open(*core);
  EXPECT_NE(a, b);
  EXPECT_GE(a.size(), 32u);  // 128 random bits in hex
  EXPECT_EQ(core->Stats().sessions, 2);

  ASSERT_TRUE(core->CloseSession(a).ok());
  EXPECT_EQ(core->Stats().sessions, 1);
  // Errors name the session by its log tag ("s12"), never by the id itself (a secret).
  const std::string tag = a.substr(0, a.find('-'));
  EXPECT_STATUS(core->CloseSession(a), kNotFound, HasSubstr("session " + tag + " "));
  EXPECT_STATUS(core->CreatePool(a, PoolRequest({})).status(), kNotFound,
                HasSubstr("does not exist"));
  EXPECT_THAT(std::string(core->CreatePool(a, PoolRequest({})).status().message()),
              ::testing::Not(HasSubstr(a)));
  EXPECT_STATUS(core->CreatePool("s-nonexistent", PoolRequest({})).status(), kNotFound,
                HasSubstr("session s? does not exist"));
}

// A stream-bound session is reachable only from its stream: a unary call naming its id gets the
// same NOT_FOUND as an unknown id, and nothing happens to it. A unary session answers only to
// the identity that opened it.

TEST(CoreSessionsTest, SessionIdsAreNotCredentials) {
  auto core = MakeCore();
  const Identity alice{"uid:1000", "pk-alice"}, mallory{"uid:1001", "pk-mallory"};
  const std::string stream = Open(*core, SessionBinding::kStream, "engine", 0, alice);
  const v1::PoolInfo pool = CreatePool(*core, stream);
  const std::vector<int32_t> pages = Allocate(*core, stream, pool.pool_id(), 2);
  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(pages[0]);
  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  for (const Identity* caller : {&alice, &mallory}) {
    EXPECT_STATUS(core->FreePages(SessionRef::Unary(stream, *caller), free).status(), kNotFound,
                  HasSubstr("does not exist"));
    EXPECT_STATUS(core->DescribePool(SessionRef::Unary(stream, *caller), describe).status(),
                  kNotFound, HasSubstr("does not exist"));
    EXPECT_STATUS(core->CloseSession(SessionRef::Unary(stream, *caller)), kNotFound,
                  HasSubstr("does not exist"));
  }
  EXPECT_EQ(FreePagesOf(*core, stream, pool.pool_id()), 14);  // untouched, still open

  const std::string leased = Open(*core, SessionBinding::kLeased, "unary", 0, alice);
  ASSERT_TRUE(AttachByName(*core, leased).ok());
  EXPECT_STATUS(core->DescribePool(SessionRef::Unary(leased, mallory), describe).status(),
                kNotFound, HasSubstr("does not exist"));
  EXPECT_STATUS(core->CloseSession(SessionRef::Unary(leased, mallory)), kNotFound,
                HasSubstr("does not exist"));
  // The same uid from another process (another peer key) is another caller too.
  EXPECT_EQ(core->DescribePool(SessionRef::Unary(leased, Identity{"uid:1000", "pk-other"}),
                               describe)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(core->DescribePool(SessionRef::Unary(leased, alice), describe).ok());
  EXPECT_TRUE(core->CloseSession(SessionRef::Unary(leased, alice)).ok());
}

// On the daemon (unary_sessions_need_identity), a unary session needs a caller identity.

TEST(CoreSessionsTest, UnarySessionsNeedAnIdentityOnTheDaemon) {
  CoreOptions options;
  options.unary_sessions_need_identity = true;
  auto core = MakeCore(options);
  auto anonymous = core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kLeased, {});
  EXPECT_STATUS(anonymous.status(), kUnauthenticated, HasSubstr("x-attnd-peer"));
  EXPECT_TRUE(core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kStream, {}).ok());
  EXPECT_TRUE(core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kLeased,
                                Identity{"uid:1000", "pk-1"})
                  .ok());
}

// The lease a client asks for is capped (--max_session_lease_ms): 4,096 sessions with a lease
// of 2^32-1 ms would hold the daemon's session quota for seven weeks.

TEST(CoreSessionsTest, RequestedLeasesAreCapped) {
  CoreOptions options;
  options.max_session_lease = absl::Seconds(90);
  auto core = MakeCore(options);
  v1::OpenSessionRequest request;
  request.set_lease_ms(std::numeric_limits<uint32_t>::max());
  auto leased = core->OpenSession(request, SessionBinding::kLeased, TestOwner());
  ASSERT_TRUE(leased.ok()) << leased.status();
  EXPECT_EQ(leased->lease_ms(), 90000u);
  request.set_lease_ms(5000);
  leased = core->OpenSession(request, SessionBinding::kLeased, TestOwner());
  EXPECT_EQ(leased->lease_ms(), 5000u);
}

// Client names go to log lines: control characters are escaped, so "\n[fake] ..." cannot forge
// a line, and the name is cut.

TEST(CoreSessionsTest, ClientNamesAreEscapedAndCut) {
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  {
    auto core = MakeCore();
    v1::OpenSessionRequest request;
    request.set_client_name("engine\n[2026-12-01 00:00:00.000] [info] forged" +
                            std::string(500, 'x'));
    ASSERT_TRUE(core->OpenSession(request, SessionBinding::kStream).ok());
  }
  spdlog::set_default_logger(previous);
  const std::string log = captured.str();
  EXPECT_THAT(log, HasSubstr("engine\\x0a[2026-12-01"));
  EXPECT_THAT(log, HasSubstr("...(546 bytes)"));
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_FALSE(line.rfind("[2026-12-01 00:00:00.000] [info] forged", 0) == 0) << line;
  }
}

// ServerInfo says what CreatePool accepts: on the CPU backend any page size in
// 1..max_page_size (page_sizes is empty), and tensors need only element alignment.

TEST(CoreSessionsTest, LeaseInForceIsReported) {
  CoreOptions options;
  options.session_lease = absl::Seconds(7);
  auto core = MakeCore(options);
  v1::OpenSessionRequest request;
  auto leased = core->OpenSession(request, SessionBinding::kLeased);
  ASSERT_TRUE(leased.ok());
  EXPECT_EQ(leased->lease_ms(), 7000u);
  request.set_lease_ms(1234);
  leased = core->OpenSession(request, SessionBinding::kLeased);
  EXPECT_EQ(leased->lease_ms(), 1234u);
}

TEST(CoreSessionsTest, SessionsCannotUseEachOthersPagesPlansOrBuffers) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  ASSERT_TRUE(AttachByName(*core, b).ok());
  const std::vector<int32_t> a_pages = Allocate(*core, a, pool.pool_id(), 2);
  const std::vector<int32_t> b_pages = Allocate(*core, b, pool.pool_id(), 1);

  // b plans over a's page: refused, naming the index and the page.
  auto stolen = PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {{b_pages[0], a_pages[1]}},
                            {1}, {});
  EXPECT_STATUS(core->CreatePlan(b, stolen).status(), kPermissionDenied,
                HasSubstr("kv_indices[1]=" + std::to_string(a_pages[1])),
                HasSubstr("of pool 'pool' is not held by this session"));
  // b frees a's page: refused, and a's page stays allocated.
  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(a_pages[0]);
  EXPECT_EQ(core->FreePages(b, free).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(FreePagesOf(*core, a, pool.pool_id()), 13);

  // a's plan is invisible to b.
  auto plan = core->CreatePlan(
      a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {{a_pages[0]}}, {3}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({1, 2, 64});
  EXPECT_TRUE(core->Run(a, run).ok());
  EXPECT_STATUS(core->Run(b, run).status(), kNotFound, HasSubstr("is not a plan of this session"));
  v1::DeletePlanRequest del;
  del.set_plan_id(plan->plan_id());
  EXPECT_EQ(core->DeletePlan(b, del).status().code(), absl::StatusCode::kNotFound);
  v1::AppendKvRequest append;
  append.set_plan_id(plan->plan_id());
  EXPECT_EQ(core->AppendKv(b, append).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(core->DeletePlan(a, del).ok());
  EXPECT_EQ(core->DeletePlan(a, del).status().code(), absl::StatusCode::kNotFound);
}

TEST(CoreSessionsTest, ClosingASessionReleasesItsPagesAndPlans) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  ASSERT_TRUE(AttachByName(*core, b).ok());
  const std::vector<int32_t> pages = Allocate(*core, a, pool.pool_id(), 5);
  ASSERT_TRUE(core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                              {{pages[0], pages[1]}}, {2}, {}))
                  .ok());
  EXPECT_EQ(core->Stats().plans, 1);
  EXPECT_EQ(FreePagesOf(*core, b, pool.pool_id()), 11);
  ASSERT_TRUE(core->CloseSession(a).ok());
  EXPECT_EQ(FreePagesOf(*core, b, pool.pool_id()), 16);
  EXPECT_EQ(core->Stats().plans, 0);
  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  EXPECT_EQ(core->DescribePool(b, describe)->pool().attached_sessions(), 1);
}

TEST(CoreSessionsTest, LeaseExpiryClosesIdleLeasedSessionsOnly) {
  CoreOptions options;
  options.session_lease = absl::Seconds(30);
  auto core = MakeCore(options);
  const std::string leased = Open(*core, SessionBinding::kLeased);
  const std::string stream = Open(*core, SessionBinding::kStream);
  const v1::PoolInfo pool = CreatePool(*core, stream);
  ASSERT_TRUE(AttachByName(*core, leased).ok());
  Allocate(*core, leased, pool.pool_id(), 6);
  EXPECT_EQ(FreePagesOf(*core, stream, pool.pool_id()), 10);

  // Not yet expired.
  EXPECT_EQ(core->ExpireIdleSessions(absl::Now() + absl::Seconds(10)), 0);
  EXPECT_EQ(core->Stats().sessions, 2);
  // Past the lease: only the leased session goes, and its pages come back.
  EXPECT_EQ(core->ExpireIdleSessions(absl::Now() + absl::Minutes(5)), 1);
  EXPECT_EQ(core->Stats().sessions, 1);
  EXPECT_EQ(FreePagesOf(*core, stream, pool.pool_id()), 16);
  EXPECT_EQ(core->CreatePool(leased, PoolRequest({})).status().code(), absl::StatusCode::kNotFound);
}

TEST(CoreSessionsTest, CallsRenewTheLease) {
  CoreOptions options;
  options.session_lease = absl::Seconds(2);
  auto core = MakeCore(options);
  const std::string s = Open(*core, SessionBinding::kLeased);
  const absl::Time opened = absl::Now();
  absl::SleepFor(absl::Milliseconds(1500));
  CreatePool(*core, s);  // renews to now + 2 s
  // Expired relative to the opening time, but not relative to the renewal.
  EXPECT_EQ(core->ExpireIdleSessions(opened + absl::Milliseconds(2500)), 0);
  EXPECT_EQ(core->ExpireIdleSessions(absl::Now() + absl::Seconds(3)), 1);
}

}  // namespace
}  // namespace attnd::server::testing
