// Plan commands through Core (server/core/commands/plans.cc): page pins and the status codes of
// bad plan requests.
#include <string>
#include <vector>

#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace attnd::server::testing
