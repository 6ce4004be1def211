// The pure parts of the request rules (server/core/request_rules.h). CheckRun and CheckAppendKv
// are exercised through Core in commands/run_rules_test.cc and commands/runs_test.cc, CreatePlan's
// rules through Core in core_test.cc too.
#include "server/core/request_rules.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/page_allocator.h"

namespace attnd::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A scope with only a message limit (no host budget): what CheckReplyFits sees from a caller
// that charges nothing.
struct ScopeWithLimit {
  explicit ScopeWithLimit(uint64_t max_message_bytes)
      : scope{session_id, events, info, max_message_bytes} {}
  std::string session_id = "s1";
  EventMap events;
  kernels::BackendInfo info;
  RequestScope scope;
};

TEST(RequestRulesTest, ReplyFitsWithoutALimit) {
  EXPECT_TRUE(CheckReplyFits(ScopeWithLimit(0).scope, "Run", uint64_t{1} << 40, "advice").ok());
}

TEST(RequestRulesTest, ReplyFitsWithRoomForItsEnvelope) {
  ScopeWithLimit limited(4096);
  EXPECT_TRUE(CheckReplyFits(limited.scope, "Run", 4096 - 256, "advice").ok());
  const absl::Status over = CheckReplyFits(limited.scope, "Run", 4096 - 255, "use buffers");
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()),
              AllOf(HasSubstr("Run: the reply would be up to 4097 bytes"),
                    HasSubstr("--max_message_bytes=4096"), HasSubstr("use buffers")));
}

// The inline outputs of a reply are host memory of the session and the daemon: charged (and kept
// in scope.reply_charge) before they are allocated, refused naming the limit that would pass.
TEST(RequestRulesTest, ReplyOutputsAreChargedToTheHostBudgets) {
  HostBudget host(/*max_host_bytes=*/10000, /*max_session_host_bytes=*/6000);
  auto usage = std::make_shared<SessionUsage>();
  HostCharge reply;
  ScopeWithLimit limited(0);
  limited.scope.host = &host;
  limited.scope.usage = usage;
  limited.scope.reply_charge = &reply;
  ASSERT_TRUE(CheckReplyFits(limited.scope, "Run", 5000, "advice").ok());
  EXPECT_EQ(reply.bytes(), 5000u);
  EXPECT_EQ(host.used_bytes(), 5000u);
  EXPECT_EQ(usage->host_bytes.load(), 5000);

  HostCharge second;
  limited.scope.reply_charge = &second;
  const absl::Status session_over = CheckReplyFits(limited.scope, "Run", 2000, "advice");
  EXPECT_EQ(session_over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(
      std::string(session_over.message()),
      AllOf(HasSubstr("inline outputs of the Run reply"), HasSubstr("--max_session_host_bytes")));
  EXPECT_EQ(second.bytes(), 0u);
  EXPECT_EQ(host.used_bytes(), 5000u);  // a refusal charged nothing

  // Another session's reply meets the daemon's limit.
  limited.scope.usage = std::make_shared<SessionUsage>();
  const absl::Status daemon_over = CheckReplyFits(limited.scope, "Run", 5001, "advice");
  EXPECT_EQ(daemon_over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(daemon_over.message()), HasSubstr("--max_host_bytes"));

  reply = HostCharge();  // the reply was written: both budgets get the bytes back
  EXPECT_EQ(host.used_bytes(), 0u);
  EXPECT_EQ(usage->host_bytes.load(), 0);
}

// A plan that reads pages 0..2 of a request and appends into its last page (2).
ValidatedPlan PlanOnPages(const std::vector<int32_t>& ids) {
  ValidatedPlan plan;
  plan.spec.kv_indices = ids;
  plan.distinct_pages = ids;
  plan.written_pages = {ids.back()};
  return plan;
}

TEST(RequestRulesTest, PlanPagesMustBeHeldAndTheWrittenOnesUnshared) {
  PageAllocator allocator(8);
  PoolAttachment mine;
  PageLedger other;
  auto pages = allocator.Allocate(3, mine.held, "p");
  ASSERT_TRUE(pages.ok());
  EXPECT_TRUE(CheckPlanPages(PlanOnPages(*pages), mine, allocator, "p").ok());

  std::vector<int32_t> foreign = *pages;
  foreign[1] = 7;  // never allocated to this session
  const absl::Status not_held = CheckPlanPages(PlanOnPages(foreign), mine, allocator, "p");
  EXPECT_EQ(not_held.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(not_held.message()),
              HasSubstr("kv_indices[1]=7: page 7 of pool 'p' is not held by this session"));

  // Another session gains a reference to the page the plan writes (a ForkPages): refused.
  ASSERT_TRUE(allocator.AddReferences({pages->back()}, other).ok());
  const absl::Status shared = CheckPlanPages(PlanOnPages(*pages), mine, allocator, "p");
  EXPECT_EQ(shared.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(shared.message()), HasSubstr("is shared with another session"));
}

}  // namespace
}  // namespace attnd::server
