// Sessions, pools, pages, plans and buffers through Core: lifetimes, isolation between sessions,
// clean-up, and the status codes of bad requests.
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace attnd::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::Allocate;
using testing::AttachByName;
using testing::CreatePool;
using testing::ForkGrantOf;
using testing::FreePagesOf;
using testing::HalfTensor;
using testing::MakeCore;
using testing::Open;
using testing::PlanRequest;
using testing::PoolRequest;
using testing::PoolSpec;
using testing::TestOwner;

#define EXPECT_STATUS(expr, code_, ...)                                  \
  do {                                                                   \
    const absl::Status _s = (expr);                                      \
    EXPECT_EQ(_s.code(), absl::StatusCode::code_) << _s;                 \
    EXPECT_THAT(std::string(_s.message()), AllOf(__VA_ARGS__)) << _s;    \
  } while (0)

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
TEST(CoreSessionsTest, ServerInfoSaysWhichPageSizesAndAlignmentsAreAccepted) {
  auto core = MakeCore();
  const v1::ServerInfo info = core->GetServerInfo();
  EXPECT_EQ(info.page_sizes_size(), 0);
  EXPECT_EQ(info.max_page_size(), 65536);
  EXPECT_EQ(info.tensor_alignment_bytes(), 0u);
  const std::string s = Open(*core);
  EXPECT_TRUE(core->CreatePool(s, PoolRequest({.name = "p1", .page_size = 1})).ok());
  EXPECT_TRUE(core->CreatePool(s, PoolRequest({.name = "p7", .page_size = 7, .num_pages = 4})).ok());
  EXPECT_STATUS(core->CreatePool(s, PoolRequest({.name = "pbig", .page_size = 65537})).status(),
                kInvalidArgument, HasSubstr("page_size=65537 must be in 1..65536"));
}

// Pools of another principal are attached with their attach token only.
TEST(CoreSessionsTest, AttachingAnotherPrincipalsPoolNeedsItsToken) {
  auto core = MakeCore();
  const std::string mine = Open(*core, SessionBinding::kStream, "a", 0, Identity{"uid:1000", ""});
  const std::string same_user = Open(*core, SessionBinding::kStream, "b", 0, Identity{"uid:1000", ""});
  const std::string other = Open(*core, SessionBinding::kStream, "c", 0, Identity{"uid:1001", ""});
  const std::string nobody = Open(*core, SessionBinding::kStream, "d", 0, Identity{});
  const v1::PoolInfo pool = CreatePool(*core, mine);
  ASSERT_FALSE(pool.attach_token().empty());
  EXPECT_TRUE(AttachByName(*core, same_user).ok());
  v1::AttachPoolRequest attach;
  attach.set_name("pool");
  EXPECT_STATUS(core->AttachPool(other, attach).status(), kPermissionDenied,
                HasSubstr("another principal"), HasSubstr("attach_token"));
  EXPECT_EQ(core->AttachPool(nobody, attach).status().code(), absl::StatusCode::kPermissionDenied);
  attach.set_attach_token("at-00000000000000000000000000000000");
  EXPECT_STATUS(core->AttachPool(other, attach).status(), kPermissionDenied,
                HasSubstr("not it"));
  attach.set_attach_token(pool.attach_token());
  EXPECT_TRUE(core->AttachPool(other, attach).ok());
  EXPECT_TRUE(core->AttachPool(nobody, attach).ok());
  // A pool created without a principal is attachable with its token only.
  const v1::PoolInfo anonymous = CreatePool(*core, nobody, {.name = "anon"});
  const std::string nobody_too = Open(*core, SessionBinding::kStream, "e", 0, Identity{});
  EXPECT_EQ(AttachByName(*core, nobody_too, "anon").code(), absl::StatusCode::kPermissionDenied);
}

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

TEST(CoreSessionsTest, ServerInfoDescribesTheCpuBackend) {
  auto core = MakeCore();
  const v1::ServerInfo info = core->GetServerInfo();
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_TRUE(info.shared_memory());
  EXPECT_FALSE(info.cuda_ipc());
  EXPECT_EQ(info.memory_total_bytes(), 256ull << 20);
  EXPECT_EQ(info.memory_free_bytes(), 256ull << 20);
  EXPECT_THAT(info.head_dims(), ::testing::Contains(64));
  EXPECT_THAT(info.kv_dtypes(), ::testing::Contains(v1::DTYPE_FLOAT16));
  EXPECT_TRUE(core->Health().ok());
}

TEST(CoreSessionsTest, CreatePoolReportsLayoutAndRefusesTakenNames) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  EXPECT_EQ(pool.name(), "pool");
  EXPECT_EQ(pool.num_pages(), 16);
  EXPECT_EQ(pool.free_pages(), 16);
  EXPECT_EQ(pool.attached_sessions(), 1);
  // [16 pages][2][4 tokens][2 heads][64 dims] fp16 per layer.
  EXPECT_EQ(pool.head_stride_bytes(), 64u * 2);
  EXPECT_EQ(pool.token_stride_bytes(), 2u * 64 * 2);
  EXPECT_EQ(pool.kv_stride_bytes(), 4u * 2 * 64 * 2);
  EXPECT_EQ(pool.page_stride_bytes(), 2u * 4 * 2 * 64 * 2);
  EXPECT_EQ(pool.layer_stride_bytes(), 16u * pool.page_stride_bytes());
  EXPECT_EQ(pool.total_bytes(), 2u * pool.layer_stride_bytes());
  EXPECT_TRUE(pool.cuda_ipc_handle().empty());
  EXPECT_EQ(core->Stats().pool_bytes_allocated, pool.total_bytes());
  EXPECT_EQ(core->GetServerInfo().memory_free_bytes(), (256ull << 20) - pool.total_bytes());

  const std::string other = Open(*core);
  EXPECT_STATUS(core->CreatePool(other, PoolRequest({})).status(), kAlreadyExists,
                HasSubstr("pool 'pool' already exists"));
  auto bad = PoolRequest({});
  bad.set_name("x y");
  EXPECT_EQ(core->CreatePool(other, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CoreSessionsTest, PoolBeyondTheBudgetIsRefusedNamingTheBytes) {
  CoreOptions options;
  options.max_pool_bytes = 100000;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  PoolSpec spec;
  spec.num_pages = 16;  // 2 layers * 16 pages * 2048 bytes = 65536 bytes
  CreatePool(*core, s, spec);
  spec.name = "second";
  auto second = core->CreatePool(s, PoolRequest(spec));
  EXPECT_STATUS(second.status(), kResourceExhausted, HasSubstr("'second' needs 65536 bytes"),
                HasSubstr("only 34464"));
  // The refused pool took nothing: a smaller one fits.
  spec.num_pages = 8;
  EXPECT_TRUE(core->CreatePool(s, PoolRequest(spec)).ok());
}

TEST(CoreSessionsTest, AttachDescribeAndPoolVisibility) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);

  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  EXPECT_STATUS(core->DescribePool(b, describe).status(), kPermissionDenied,
                HasSubstr("not attached to pool 'pool'"));
  describe.set_pool_id("p-unknown");
  EXPECT_STATUS(core->DescribePool(b, describe).status(), kNotFound, HasSubstr("p-unknown"));

  v1::AttachPoolRequest attach;
  attach.set_name("nope");
  EXPECT_STATUS(core->AttachPool(b, attach).status(), kNotFound, HasSubstr("pool 'nope'"));
  attach.set_name("pool");
  auto attached = core->AttachPool(b, attach);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ(attached->pool().pool_id(), pool.pool_id());
  EXPECT_EQ(attached->pool().attached_sessions(), 2);
  describe.set_pool_id(pool.pool_id());
  EXPECT_TRUE(core->DescribePool(b, describe).ok());
}

TEST(CoreSessionsTest, AllocateFreeAndExhaustion) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 10);
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 6);

  v1::AllocatePagesRequest too_many;
  too_many.set_pool_id(pool.pool_id());
  too_many.set_count(7);
  EXPECT_STATUS(core->AllocatePages(s, too_many).status(), kResourceExhausted,
                HasSubstr("pool 'pool' has 6 free pages, 7 requested"));
  too_many.set_count(0);
  EXPECT_STATUS(core->AllocatePages(s, too_many).status(), kInvalidArgument, HasSubstr("count=0"));
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 6);

  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(pages[0]);
  free.add_page_ids(pages[1]);
  auto freed = core->FreePages(s, free);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(freed->free_pages(), 8);
  // Freed twice: no longer held.
  EXPECT_STATUS(core->FreePages(s, free).status(), kPermissionDenied,
                HasSubstr("page_ids[0]=" + std::to_string(pages[0])),
                HasSubstr("not held by this session"));
  free.clear_page_ids();
  free.add_page_ids(16);
  EXPECT_STATUS(core->FreePages(s, free).status(), kOutOfRange, HasSubstr("page_ids[0]=16"));
}

TEST(CoreSessionsTest, ForkSharesPagesWithinAndAcrossSessions) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core), c = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  ASSERT_TRUE(AttachByName(*core, b).ok());
  const std::vector<int32_t> pages = Allocate(*core, a, pool.pool_id(), 2);

  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  fork.add_page_ids(pages[0]);
  auto forked = core->ForkPages(a, fork);
  ASSERT_TRUE(forked.ok()) << forked.status();
  EXPECT_EQ(forked->refcounts(0), 2);

  // Another session is reached through its fork grant, not its id (which is no credential).
  fork.set_target_session_id(b);
  EXPECT_STATUS(core->ForkPages(a, fork).status(), kFailedPrecondition,
                HasSubstr("target_grant"));
  fork.clear_target_session_id();
  fork.set_target_grant(ForkGrantOf(*core, b, pool.pool_id()));
  forked = core->ForkPages(a, fork);
  ASSERT_TRUE(forked.ok()) << forked.status();
  EXPECT_EQ(forked->refcounts(0), 3);
  // Naming oneself by id is still fine.
  fork.clear_target_grant();
  fork.set_target_session_id(a);
  forked = core->ForkPages(a, fork);
  ASSERT_TRUE(forked.ok()) << forked.status();
  EXPECT_EQ(forked->refcounts(0), 4);
  fork.clear_target_session_id();

  // c is not attached: it has no grant for the pool; a made-up grant is refused.
  (void)c;
  fork.set_target_grant("fg-00000000000000000000000000000000");
  EXPECT_STATUS(core->ForkPages(a, fork).status(), kFailedPrecondition,
                HasSubstr("is not the fork grant of a session attached to pool 'pool'"));
  // b cannot fork a page it does not hold.
  fork.clear_target_grant();
  fork.set_page_ids(0, pages[1]);
  EXPECT_STATUS(core->ForkPages(b, fork).status(), kPermissionDenied,
                HasSubstr("not held by this session"));

  // b's reference keeps page 0 allocated after a closes.
  ASSERT_TRUE(core->CloseSession(a).ok());
  EXPECT_EQ(FreePagesOf(*core, b, pool.pool_id()), 15);
  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(pages[0]);
  auto freed = core->FreePages(b, free);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(freed->free_pages(), 16);
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

TEST(CoreSessionsTest, PoolIsFreedWhenItsLastSessionDetaches) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  v1::AttachPoolRequest attach;
  attach.set_name("pool");
  ASSERT_TRUE(core->AttachPool(b, attach).ok());
  Allocate(*core, b, pool.pool_id(), 3);

  v1::DeletePoolRequest del;
  del.set_pool_id(pool.pool_id());
  ASSERT_TRUE(core->DeletePool(a, del).ok());
  EXPECT_EQ(core->Stats().pools.size(), 1u);  // b is still attached
  EXPECT_EQ(core->Stats().pools[0].attached_sessions, 1);
  EXPECT_EQ(core->DeletePool(a, del).status().code(), absl::StatusCode::kPermissionDenied);

  ASSERT_TRUE(core->CloseSession(b).ok());  // the last session: the pool goes
  EXPECT_TRUE(core->Stats().pools.empty());
  EXPECT_EQ(core->Stats().pool_bytes_allocated, 0u);
  EXPECT_EQ(core->AttachPool(a, attach).status().code(), absl::StatusCode::kNotFound);
  // The name is free again.
  EXPECT_TRUE(core->CreatePool(a, PoolRequest({})).ok());
}

TEST(CoreSessionsTest, PlansPinTheirPages) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 2);
  auto plan = core->CreatePlan(
      s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {{pages[0], pages[1]}}, {4}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->batch_size(), 1);
  EXPECT_EQ(plan->qo_tokens(), 1);
  EXPECT_EQ(plan->kv_tokens(), 8);

  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(pages[0]);
  free.add_page_ids(pages[1]);
  auto freed = core->FreePages(s, free);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(freed->free_pages(), 14);  // pinned by the plan: not reallocatable
  // The plan still runs over them.
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({1, 2, 64});
  EXPECT_TRUE(core->Run(s, run).ok());
  // A new plan cannot use them: the session no longer holds them.
  EXPECT_EQ(core->CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                            {{pages[0]}}, {1}, {}))
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);

  v1::DeletePlanRequest del;
  del.set_plan_id(plan->plan_id());
  ASSERT_TRUE(core->DeletePlan(s, del).ok());
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 16);
}

TEST(CoreSessionsTest, AppendsIntoSharedPagesAreRefused) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  ASSERT_TRUE(AttachByName(*core, b).ok());
  // Prefix page p0 (full), tail page p1.
  const std::vector<int32_t> pages = Allocate(*core, a, pool.pool_id(), 2);
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  fork.add_page_ids(pages[0]);
  fork.set_target_grant(ForkGrantOf(*core, b, pool.pool_id()));
  ASSERT_TRUE(core->ForkPages(a, fork).ok());

  // Decode over [p0, p1] writes only p1 (unshared): fine.
  EXPECT_TRUE(core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                              {{pages[0], pages[1]}}, {2}, {}))
                  .ok());
  // Prefill of 6 tokens over [p0, p1] writes p0 too, which b shares.
  EXPECT_STATUS(core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 2,
                                                {{pages[0], pages[1]}}, {2}, {6}))
                    .status(),
                kFailedPrecondition,
                HasSubstr("page " + std::to_string(pages[0]) + " is shared with another session"));
  // b's decode whose last page is the shared p0: refused as well.
  EXPECT_EQ(core->CreatePlan(b, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                            {{pages[0]}}, {4}, {}))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);

  // A plan made while p1 was unshared cannot append once p1 is shared later.
  auto plan = core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                              {{pages[0], pages[1]}}, {3}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  fork.set_page_ids(0, pages[1]);
  ASSERT_TRUE(core->ForkPages(a, fork).ok());
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({1, 2, 64});
  *run.mutable_k() = HalfTensor({1, 2, 64});
  *run.mutable_v() = HalfTensor({1, 2, 64});
  EXPECT_STATUS(core->Run(a, run).status(), kFailedPrecondition,
                HasSubstr("page " + std::to_string(pages[1]) + " is shared"));
  // Reading is still fine.
  run.clear_k();
  run.clear_v();
  EXPECT_TRUE(core->Run(a, run).ok());
}

TEST(CoreSessionsTest, PlanRequestsAreValidatedThroughCore) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 2);
  auto request = PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {{pages[0]}}, {5}, {});
  EXPECT_STATUS(core->CreatePlan(s, request).status(), kInvalidArgument,
                HasSubstr("kv_last_page_len[0]=5 is outside 1..page_size (4)"));
  request = PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {{pages[0], 40}}, {1}, {});
  EXPECT_STATUS(core->CreatePlan(s, request).status(), kOutOfRange, HasSubstr("kv_indices[1]=40"));
  request.set_pool_id("p-unknown");
  EXPECT_EQ(core->CreatePlan(s, request).status().code(), absl::StatusCode::kNotFound);
  // Nothing stayed pinned by the refused plans.
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 14);
}

TEST(CoreSessionsTest, RunRequestsAreValidatedThroughCore) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 2);
  auto plan = core->CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 4,
                                              {{pages[0], pages[1]}}, {3}, {5}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::RunRequest good;
  good.set_plan_id(plan->plan_id());
  *good.mutable_q() = HalfTensor({5, 4, 64});
  ASSERT_TRUE(core->Run(s, good).ok());

  v1::RunRequest r = good;
  r.set_layer(2);
  EXPECT_STATUS(core->Run(s, r).status(), kOutOfRange, HasSubstr("layer=2 is outside 0..1"));
  r = good;
  *r.mutable_q() = HalfTensor({5, 4, 32});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("q.shape=[5,4,32], expected [5,4,64]"));
  r = good;
  r.mutable_q()->set_dtype(v1::DTYPE_FLOAT8_E4M3);
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("q.dtype=DTYPE_FLOAT8_E4M3"));
  r = good;
  r.clear_q();
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("q has no data"));
  r = good;
  *r.mutable_k() = HalfTensor({5, 2, 64});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("k is set but v is not"));
  *r.mutable_v() = HalfTensor({4, 2, 64});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("v.shape=[4,2,64], expected [5,2,64]"));
  r = good;
  *r.mutable_o() = HalfTensor({5, 4, 64});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("o.inline_data is set"));
  r = good;
  r.mutable_lse()->mutable_buffer()->set_buffer_id("b-x");
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("lse is set but options.return_lse is false"));
  r = good;
  r.mutable_o()->set_dtype(v1::DTYPE_FLOAT16);
  for (int64_t d : {5, 4, 64}) r.mutable_o()->add_shape(d);
  r.mutable_o()->mutable_buffer()->set_buffer_id("b-unknown");
  EXPECT_STATUS(core->Run(s, r).status(), kNotFound,
                HasSubstr("o.buffer.buffer_id='b-unknown' is not a buffer of this session"));
  r = good;
  r.mutable_options()->add_rope_offsets(3);
  r.mutable_options()->add_rope_offsets(3);
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("options.rope_offsets has 2 entries"));
  r = good;
  r.set_plan_id("plan-unknown");
  EXPECT_EQ(core->Run(s, r).status().code(), absl::StatusCode::kNotFound);

  v1::AppendKvRequest append;
  append.set_plan_id(plan->plan_id());
  *append.mutable_k() = HalfTensor({5, 2, 64});
  EXPECT_STATUS(core->AppendKv(s, append).status(), kInvalidArgument, HasSubstr("v has no data"));
  *append.mutable_v() = HalfTensor({5, 2, 64});
  append.set_layer(-1);
  EXPECT_EQ(core->AppendKv(s, append).status().code(), absl::StatusCode::kOutOfRange);
  append.set_layer(1);
  EXPECT_TRUE(core->AppendKv(s, append).ok());
}

TEST(CoreSessionsTest, ReallocatedPagesDoNotShowThePreviousOwnersData) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  ASSERT_TRUE(AttachByName(*core, b).ok());

  // a fills one page (4 tokens, both layers) with V = 1.0 and frees it.
  const std::vector<int32_t> a_pages = Allocate(*core, a, pool.pool_id(), 1);
  auto plan = core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 2,
                                              {a_pages}, {4}, {4}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::Tensor ones = HalfTensor({4, 2, 64});
  std::string& bytes = *ones.mutable_inline_data();
  for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
    bytes[i] = 0x00;
    bytes[i + 1] = 0x3c;  // fp16 1.0
  }
  for (int layer = 0; layer < 2; ++layer) {
    v1::AppendKvRequest append;
    append.set_plan_id(plan->plan_id());
    append.set_layer(layer);
    *append.mutable_k() = ones;
    *append.mutable_v() = ones;
    ASSERT_TRUE(core->AppendKv(a, append).ok());
  }
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({4, 2, 64});
  auto before = core->Run(a, run);
  ASSERT_TRUE(before.ok());
  EXPECT_NE(before->o().inline_data(), std::string(before->o().inline_data().size(), '\0'));
  ASSERT_TRUE(core->CloseSession(a).ok());

  // b gets the same page back and reads it without writing: zeros, not a's values.
  const std::vector<int32_t> b_pages = Allocate(*core, b, pool.pool_id(), 1);
  ASSERT_EQ(b_pages, a_pages);
  auto b_plan = core->CreatePlan(b, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                                {b_pages}, {4}, {}));
  ASSERT_TRUE(b_plan.ok()) << b_plan.status();
  v1::RunRequest b_run;
  b_run.set_plan_id(b_plan->plan_id());
  b_run.set_layer(1);
  *b_run.mutable_q() = HalfTensor({1, 2, 64});
  auto after = core->Run(b, b_run);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->o().inline_data(), std::string(after->o().inline_data().size(), '\0'));
}

TEST(CoreSessionsTest, CloseAllReleasesEverything) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core, SessionBinding::kLeased);
  CreatePool(*core, a);
  PoolSpec spec;
  spec.name = "other";
  CreatePool(*core, b, spec);
  EXPECT_EQ(core->Stats().pools.size(), 2u);
  core->CloseAll();
  const CoreStats stats = core->Stats();
  EXPECT_EQ(stats.sessions, 0);
  EXPECT_TRUE(stats.pools.empty());
  EXPECT_EQ(stats.pool_bytes_allocated, 0u);
}

}  // namespace
}  // namespace attnd::server
