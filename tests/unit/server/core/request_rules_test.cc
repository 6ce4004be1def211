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

TEST(RequestRulesTest, ReplyFitsWithoutALimit) {
  EXPECT_TRUE(CheckReplyFits(0, "Run", uint64_t{1} << 40, "advice").ok());
}

TEST(RequestRulesTest, ReplyFitsWithRoomForItsEnvelope) {
  EXPECT_TRUE(CheckReplyFits(4096, "Run", 4096 - 256, "advice").ok());
  const absl::Status over = CheckReplyFits(4096, "Run", 4096 - 255, "use buffers");
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()),
              AllOf(HasSubstr("Run: the reply would be up to 4097 bytes"),
                    HasSubstr("--max_message_bytes=4096"), HasSubstr("use buffers")));
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
