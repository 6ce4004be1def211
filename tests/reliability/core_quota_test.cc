// Quotas of the Core (CoreOptions max_*): each limit is enforced with RESOURCE_EXHAUSTED naming
// the limit and its flag, and freeing what was held makes room again.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/core/core.h"
#include "server/core/host_budget.h"
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

// ---- Page references can never wrap (issue: ForkPages with one id repeated ~2^32 times) ----

// A page's reference count stops at max_references_per_page: a ForkPages that would pass it is
// refused before anything is added, and the plan that pins the page keeps it from ever going
// back to the free list while the session frees its own references.
TEST(CoreQuotaTest, ReferencesPerPageAreCappedBeforeAnythingIsAdded) {
  CoreOptions options;
  options.max_references_per_page = 8;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s, {.name = "refs", .num_pages = 4});
  const std::vector<int32_t> page = Allocate(*core, s, pool.pool_id(), 1);
  auto plan = core->CreatePlan(
      s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {page}, {1}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();  // 2 references: the client's and the plan's pin
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  for (int i = 0; i < 7; ++i) fork.add_page_ids(page[0]);  // 2 + 7 = 9 > 8
  const absl::Status refused = core->ForkPages(s, fork).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("more than 8 references"), std::string::npos) << refused;
  fork.mutable_page_ids()->RemoveLast();  // 2 + 6 = 8: fine
  auto forked = core->ForkPages(s, fork);
  ASSERT_TRUE(forked.ok()) << forked.status();
  EXPECT_EQ(forked->refcounts(0), 8);
  // The session drops all 7 of its references: the plan's pin keeps the page allocated, so it
  // cannot go to anyone else while the plan reads and writes it.
  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  for (int i = 0; i < 7; ++i) free.add_page_ids(page[0]);
  ASSERT_TRUE(core->FreePages(s, free).ok());
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 3);
  const std::string other = Open(*core);
  ASSERT_TRUE(AttachByName(*core, other, "refs").ok());
  const std::vector<int32_t> theirs = Allocate(*core, other, pool.pool_id(), 3);
  EXPECT_EQ(std::count(theirs.begin(), theirs.end(), page[0]), 0);
  // A second plan would need a ninth reference... after the frees only the pin is left (1), so a
  // plan is fine again; the ledger never went negative or wrapped.
  v1::DeletePlanRequest del;
  del.set_plan_id(plan->plan_id());
  ASSERT_TRUE(core->DeletePlan(s, del).ok());
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 1);
}

// With the default limit (2^20), a fork of one page repeated 2^20 times in one message (4 MiB,
// far from the 67M entries one 64 MiB message holds) is already refused: no count comes near
// int32's range.
TEST(CoreQuotaTest, DefaultReferenceLimitStopsRepeatedForks) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s, {.name = "refs-default", .num_pages = 4});
  const std::vector<int32_t> page = Allocate(*core, s, pool.pool_id(), 1);
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  fork.mutable_page_ids()->Resize(1 << 20, page[0]);
  EXPECT_EQ(core->ForkPages(s, fork).status().code(), absl::StatusCode::kResourceExhausted);
  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(page[0]);
  free.add_page_ids(page[0]);
  // Nothing was added: the session still holds exactly one reference.
  EXPECT_EQ(core->FreePages(s, free).status().code(), absl::StatusCode::kFailedPrecondition);
  free.mutable_page_ids()->RemoveLast();
  ASSERT_TRUE(core->FreePages(s, free).ok());
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 4);
}

// References received through a fork grant count against the receiver's
// --max_pages_per_session, checked before they are added.
TEST(CoreQuotaTest, ForkedReferencesCountAgainstTheReceiversQuota) {
  CoreOptions options;
  options.max_pages_per_session = 4;
  auto core = MakeCore(options);
  const std::string giver = Open(*core), receiver = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, giver, {.name = "fq", .num_pages = 16});
  ASSERT_TRUE(AttachByName(*core, receiver, "fq").ok());
  ASSERT_EQ(Allocate(*core, receiver, pool.pool_id(), 3).size(), 3u);
  const std::vector<int32_t> pages = Allocate(*core, giver, pool.pool_id(), 2);
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  fork.add_page_ids(pages[0]);
  fork.add_page_ids(pages[1]);
  fork.set_target_grant(ForkGrantOf(*core, receiver, pool.pool_id()));
  ExpectQuota(core->ForkPages(giver, fork).status(), "max_pages_per_session");
  fork.mutable_page_ids()->RemoveLast();
  ASSERT_TRUE(core->ForkPages(giver, fork).ok());  // 3 + 1 = 4
  // The receiver is full now, however the references came.
  v1::AllocatePagesRequest one;
  one.set_pool_id(pool.pool_id());
  one.set_count(1);
  ExpectQuota(core->AllocatePages(receiver, one).status(), "max_pages_per_session");
}

// ---- A refused command changes nothing: the reply's size is checked before acting -----------

TEST(CoreQuotaTest, RepliesTooLargeForTheMessageLimitAreRefusedBeforeActing) {
  CoreOptions options;
  options.max_message_bytes = 4096;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, s, {.name = "reply", .page_size = 1, .num_pages = 8192});
  v1::AllocatePagesRequest allocate;
  allocate.set_pool_id(pool.pool_id());
  allocate.set_count(3000);  // up to 15,000 bytes of page ids
  const absl::Status refused = core->AllocatePages(s, allocate).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("--max_message_bytes=4096"), std::string::npos) << refused;
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 8192);  // nothing taken
  // Ids the client never received are not its to free.
  v1::FreePagesRequest free;
  free.set_pool_id(pool.pool_id());
  free.add_page_ids(0);
  EXPECT_EQ(core->FreePages(s, free).status().code(), absl::StatusCode::kPermissionDenied);
  // A fork whose refcount list would not fit: refused, counts unchanged.
  const std::vector<int32_t> held = Allocate(*core, s, pool.pool_id(), 500);
  ASSERT_EQ(held.size(), 500u);
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  for (int i = 0; i < 2; ++i) fork.mutable_page_ids()->Add(held.begin(), held.end());
  EXPECT_EQ(core->ForkPages(s, fork).status().code(), absl::StatusCode::kResourceExhausted);
  free.clear_page_ids();
  free.mutable_page_ids()->Add(held.begin(), held.end());
  ASSERT_TRUE(core->FreePages(s, free).ok());  // one reference each, as before the fork
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), 8192);
  // A Run whose inline output would not fit: refused before k/v are appended or anything runs.
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 64);
  auto plan = core->CreatePlan(
      s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 2, {pages}, {1}, {64}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({64, 2, 64});  // o: 16 KiB inline
  const absl::Status too_big = core->Run(s, run).status();
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted) << too_big;
  EXPECT_NE(too_big.message().find("registered buffers"), std::string::npos) << too_big;
}

// ---- Host memory per session and per daemon is bounded, refused before allocating ----------

TEST(CoreQuotaTest, PlanPageTablesAreChargedToTheSessionsHostBudget) {
  CoreOptions options;
  options.max_session_host_bytes = 1 << 20;
  options.max_references_per_page = 1 << 20;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s, {.name = "host", .num_pages = 64});
  const std::vector<int32_t> page = Allocate(*core, s, pool.pool_id(), 1);
  const uint64_t before = core->Stats().host_bytes;
  // One request over the same page 100,000 times: ~1.6 MB of page table copies > 1 MiB.
  std::vector<int32_t> many(100000, page[0]);
  const v1::CreatePlanRequest big =
      PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {many}, {1}, {});
  const absl::Status refused = core->CreatePlan(s, big).status();
  ExpectQuota(refused, "max_session_host_bytes");
  EXPECT_EQ(core->Stats().host_bytes, before);  // nothing charged by the refusal
  std::vector<int32_t> some(20000, page[0]);
  auto small = core->CreatePlan(
      s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2, {some}, {1}, {}));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_GT(core->Stats().host_bytes, before + 20000 * 4);
  v1::DeletePlanRequest del;
  del.set_plan_id(small->plan_id());
  ASSERT_TRUE(core->DeletePlan(s, del).ok());
  EXPECT_EQ(core->Stats().host_bytes, before);
}

// A pool of tiny pages: its page bookkeeping (8 bytes a page) and each session's ledgers are
// charged, so a pool of hundreds of millions of 64-byte pages cannot take gigabytes of host
// memory outside every budget.
TEST(CoreQuotaTest, PoolBookkeepingAndLedgersAreChargedAndReturned) {
  CoreOptions options;
  options.max_pool_bytes = 512ull << 20;
  options.max_session_host_bytes = 16 << 20;
  options.max_host_bytes = 20 << 20;
  auto core = MakeCore(options);
  const std::string a = Open(*core), b = Open(*core);
  // 1 layer x 1 kv head x head_dim 64 x page_size 1 x fp16 x 2 (K, V) = 256 bytes a page;
  // 4M pages = 1 GiB of pool is over max_pool_bytes anyway; 1.5M pages = 384 MiB of pool and
  // 12 MB of bookkeeping: fits a's budget.
  v1::CreatePoolRequest request = PoolRequest(
      {.name = "tiny", .num_layers = 1, .num_kv_heads = 1, .page_size = 1, .num_pages = 1500000});
  auto created = core->CreatePool(a, request);
  ASSERT_TRUE(created.ok()) << created.status();
  const uint64_t with_pool = core->Stats().host_bytes;
  EXPECT_GE(with_pool, 12000000u);
  // a's first allocation sizes its ledgers (12 MB more): over a's 16 MiB.
  v1::AllocatePagesRequest allocate;
  allocate.set_pool_id(created->pool().pool_id());
  allocate.set_count(1);
  ExpectQuota(core->AllocatePages(a, allocate).status(), "max_session_host_bytes");
  EXPECT_EQ(core->Stats().host_bytes, with_pool);
  // b's ledgers fit b's budget but not the daemon's (12 MB of pool + 12 MB > 20 MiB).
  ASSERT_TRUE(AttachByName(*core, b, "tiny").ok());
  ExpectQuota(core->AllocatePages(b, allocate).status(), "max_host_bytes");
  // A second such pool: over a's budget at creation.
  request.set_name("tiny2");
  ExpectQuota(core->CreatePool(a, request).status(), "max_session_host_bytes");
  // Everything returns when the sessions go.
  ASSERT_TRUE(core->CloseSession(a).ok());
  ASSERT_TRUE(core->CloseSession(b).ok());
  EXPECT_EQ(core->Stats().host_bytes, 0u);
}

// The messages of commands in flight are host memory too: a request counts at its wire size from
// when it is read until its reply is written (the front keeps MessageCharges), and a reply's
// inline outputs from before they are allocated. Per session and across the daemon, refused
// naming the limit before the command does anything.
TEST(CoreQuotaTest, MessagesInFlightAreChargedToTheHostBudgets) {
  CoreOptions options;
  options.max_session_host_bytes = 1 << 20;
  options.max_host_bytes = 3 << 19;  // 1.5 MiB: two sessions' messages of 700 KiB do not fit
  auto core = MakeCore(options);
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, a, {.name = "messages", .page_size = 1, .num_pages = 8192});
  const std::vector<int32_t> pages = Allocate(*core, a, pool.pool_id(), 4096);
  auto plan = core->CreatePlan(
      a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 2, {pages}, {1}, {4096}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  const uint64_t before = core->Stats().host_bytes;  // a's pool and plan bookkeeping
  ASSERT_LT(before, 256u << 10);

  // A request larger than the session's budget: refused before it runs, nothing kept.
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({4096, 2, 64});  // 1 MiB inline q; its o would be 1 MiB inline
  MessageCharges held;
  SessionRef big(a);
  big.request_bytes = run.ByteSizeLong();
  big.charges = &held;
  ExpectQuota(core->Run(big, run).status(), "max_session_host_bytes");
  EXPECT_EQ(held.request.bytes() + held.reply.bytes(), 0u);
  EXPECT_EQ(core->Stats().host_bytes, before);

  // A request that fits, whose inline reply (o: 1 MiB) would not: refused before anything ran
  // or was allocated for the reply; only the request stays charged until its reply is written.
  SessionRef small(a);
  small.request_bytes = 64;
  small.charges = &held;
  const absl::Status reply = core->Run(small, run).status();
  ExpectQuota(reply, "max_session_host_bytes");
  EXPECT_NE(reply.message().find("inline outputs of the Run reply"), std::string::npos) << reply;
  EXPECT_EQ(held.request.bytes(), 64u);
  EXPECT_EQ(held.reply.bytes(), 0u);
  EXPECT_EQ(core->Stats().host_bytes, before + 64);
  held = MessageCharges();  // written
  EXPECT_EQ(core->Stats().host_bytes, before);

  // Daemon-wide: a's message in flight leaves b less than b's own budget.
  constexpr uint64_t kInFlight = 700 << 10;
  MessageCharges a_in_flight;
  SessionRef a_ref(a);
  a_ref.request_bytes = kInFlight;
  a_ref.charges = &a_in_flight;
  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  ASSERT_TRUE(core->DescribePool(a_ref, describe).ok());
  EXPECT_EQ(a_in_flight.request.bytes(), kInFlight);  // held after the command, until written
  EXPECT_EQ(core->Stats().host_bytes, before + kInFlight);
  MessageCharges b_in_flight;
  SessionRef b_ref(b);
  b_ref.request_bytes = kInFlight;  // within b's 1 MiB, not within what the daemon has left
  b_ref.charges = &b_in_flight;
  v1::DeletePlanRequest unknown;
  unknown.set_plan_id("plan-none");
  ExpectQuota(core->DeletePlan(b_ref, unknown).status(), "max_host_bytes");
  EXPECT_EQ(b_in_flight.request.bytes(), 0u);
  a_in_flight =
      MessageCharges();  // a's reply was written: b's command now runs (and finds no plan)
  EXPECT_EQ(core->DeletePlan(b_ref, unknown).status().code(), absl::StatusCode::kNotFound);
  b_in_flight = MessageCharges();
  EXPECT_EQ(core->Stats().host_bytes, before);
}

TEST(CoreQuotaTest, InvalidLimitsAreRefusedAtCreate) {
  for (int which = 0; which < 9; ++which) {
    CoreOptions options;
    options.max_pool_bytes = 1 << 20;
    switch (which) {
      case 0: options.max_sessions = 0; break;
      case 1: options.max_pages_per_session = -1; break;
      case 2: options.max_buffers_per_session = 0; break;
      case 3: options.max_plans_per_session = 0; break;
      case 4: options.max_inflight_per_session = 0; break;
      case 5: options.max_references_per_page = 1; break;
      case 6: options.max_peers = 0; break;
      case 7: options.max_fds_per_peer = 0; break;
      case 8: options.max_session_lease = absl::Seconds(1); break;  // < session_lease
    }
    auto backend = kernels::CreateCpuBackend(kernels::CpuBackendOptions{.num_threads = 1});
    ASSERT_TRUE(backend.ok());
    auto core = Core::Create(options, *std::move(backend));
    EXPECT_EQ(core.status().code(), absl::StatusCode::kInvalidArgument) << which;
  }
}

}  // namespace
}  // namespace attnd::server::testing
