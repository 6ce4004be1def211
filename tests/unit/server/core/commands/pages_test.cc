// Page commands through Core (server/core/commands/pages.cc): allocate, free, fork within and
// across sessions, and cleared reallocated pages.
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

}  // namespace
}  // namespace attnd::server::testing
