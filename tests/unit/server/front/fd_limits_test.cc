#include "server/front/fd_limits.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

namespace attnd::server::front {
namespace {

TEST(FdLimitsTest, BudgetKeepsAReserveForConnections) {
  EXPECT_EQ(BufferFdBudget(1024), 768);         // 256 kept
  EXPECT_EQ(BufferFdBudget(4096), 4096 - 409);  // 10% kept
  EXPECT_EQ(BufferFdBudget(1 << 20), (1 << 20) - (1 << 20) / 10);
  EXPECT_EQ(BufferFdBudget(160), 80);  // a small limit: half
  EXPECT_EQ(BufferFdBudget(1), 0);
  EXPECT_EQ(BufferFdBudget(0), 0);
}

TEST(FdLimitsTest, SoftLimitIsRaisedToTheHardLimit) {
  rlimit original{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &original), 0);
  if (original.rlim_max != RLIM_INFINITY && original.rlim_max < 512) {
    GTEST_SKIP() << "hard limit " << original.rlim_max << " leaves nothing to raise";
  }
  rlimit lowered = original;
  lowered.rlim_cur = 256;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  const FdLimits limits = RaiseFdLimit();
  rlimit now{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &now), 0);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &original), 0);
  EXPECT_EQ(limits.soft_at_start, 256u);
  EXPECT_EQ(limits.soft, now.rlim_cur);
  EXPECT_GT(limits.soft, 256u);
  if (original.rlim_max != RLIM_INFINITY) {
    EXPECT_EQ(limits.soft, original.rlim_max);
  }
  EXPECT_TRUE(limits.raise_error.empty()) << limits.raise_error;
  EXPECT_EQ(limits.max_open_buffer_fds, BufferFdBudget(limits.soft));
}

}  // namespace
}  // namespace attnd::server::front
