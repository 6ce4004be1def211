#include "server/core/page_allocator.h"

#include <algorithm>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnd::server {
namespace {

using ::testing::HasSubstr;

TEST(PageAllocatorTest, AllocatesDistinctPagesAndCountsThem) {
  PageAllocator allocator(8);
  PageLedger holder;
  auto pages = allocator.Allocate(5, holder, "p");
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_EQ(pages->size(), 5u);
  std::set<int32_t> distinct(pages->begin(), pages->end());
  EXPECT_EQ(distinct.size(), 5u);
  for (int32_t page : *pages) {
    EXPECT_GE(page, 0);
    EXPECT_LT(page, 8);
    EXPECT_EQ(allocator.refcount(page), 1);
    EXPECT_EQ(holder.count(page), 1);
  }
  EXPECT_EQ(allocator.free_pages(), 3);
  EXPECT_EQ(holder.distinct_pages(), 5);
  EXPECT_EQ(holder.total_references(), 5);
}

TEST(PageAllocatorTest, ExhaustionIsAllOrNothing) {
  PageAllocator allocator(4);
  PageLedger a, b;
  ASSERT_TRUE(allocator.Allocate(3, a, "pool-x").ok());
  auto too_many = allocator.Allocate(2, b, "pool-x");
  ASSERT_EQ(too_many.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(too_many.status().message()),
              HasSubstr("pool 'pool-x' has 1 free pages, 2 requested"));
  // Nothing was taken by the failed call.
  EXPECT_EQ(allocator.free_pages(), 1);
  EXPECT_TRUE(b.empty());
  EXPECT_TRUE(allocator.Allocate(1, b, "pool-x").ok());
  EXPECT_EQ(allocator.free_pages(), 0);
}

TEST(PageAllocatorTest, RejectsNonPositiveCount) {
  PageAllocator allocator(4);
  PageLedger a;
  EXPECT_EQ(allocator.Allocate(0, a, "p").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(allocator.Allocate(-3, a, "p").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(allocator.free_pages(), 4);
}

TEST(PageAllocatorTest, ForkSharesAndPageReturnsOnlyWhenLastReferenceDrops) {
  PageAllocator allocator(4);
  PageLedger a, b;
  auto pages = allocator.Allocate(2, a, "p");
  ASSERT_TRUE(pages.ok());
  const int32_t shared = (*pages)[0];
  ASSERT_TRUE(allocator.AddReferences({shared, shared}, b).ok());
  EXPECT_EQ(allocator.refcount(shared), 3);
  EXPECT_EQ(b.count(shared), 2);

  ASSERT_TRUE(allocator.Release({shared}, a).ok());
  EXPECT_EQ(allocator.refcount(shared), 2);
  EXPECT_EQ(a.count(shared), 0);
  EXPECT_EQ(allocator.free_pages(), 2);  // still referenced by b

  ASSERT_TRUE(allocator.Release({shared, shared}, b).ok());
  EXPECT_EQ(allocator.refcount(shared), 0);
  EXPECT_EQ(allocator.free_pages(), 3);
  EXPECT_TRUE(b.empty());
}

TEST(PageAllocatorTest, ForkOfAFreePageFailsAndChangesNothing) {
  PageAllocator allocator(4);
  PageLedger a;
  auto pages = allocator.Allocate(1, a, "p");
  ASSERT_TRUE(pages.ok());
  const int32_t used = (*pages)[0];
  const int32_t free_page = used == 0 ? 1 : 0;
  auto s = allocator.AddReferences({used, free_page}, a);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator.refcount(used), 1);
  EXPECT_EQ(a.count(used), 1);
  EXPECT_EQ(allocator.AddReferences({7}, a).code(), absl::StatusCode::kOutOfRange);
}

TEST(PageAllocatorTest, ReleasingMoreThanHeldFailsAndChangesNothing) {
  PageAllocator allocator(4);
  PageLedger a, b;
  auto pages = allocator.Allocate(2, a, "p");
  ASSERT_TRUE(pages.ok());
  const int32_t p0 = (*pages)[0], p1 = (*pages)[1];
  // b holds nothing.
  EXPECT_EQ(allocator.Release({p0}, b).code(), absl::StatusCode::kFailedPrecondition);
  // a holds one reference to p1 but the list drops two: nothing may change, p0 included.
  auto s = allocator.Release({p0, p1, p1}, a);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("page_ids[2]"));
  EXPECT_EQ(allocator.refcount(p0), 1);
  EXPECT_EQ(allocator.refcount(p1), 1);
  EXPECT_EQ(allocator.free_pages(), 2);
}

TEST(PageAllocatorTest, ReleaseAllDropsEveryReferenceOfOneHolder) {
  PageAllocator allocator(6);
  PageLedger a, b;
  auto pages = allocator.Allocate(4, a, "p");
  ASSERT_TRUE(pages.ok());
  ASSERT_TRUE(allocator.AddReferences({(*pages)[0], (*pages)[0]}, a).ok());
  ASSERT_TRUE(allocator.AddReferences({(*pages)[1]}, b).ok());
  allocator.ReleaseAll(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(allocator.refcount((*pages)[0]), 0);
  EXPECT_EQ(allocator.refcount((*pages)[1]), 1);  // b's reference survives
  EXPECT_EQ(allocator.free_pages(), 5);
  allocator.ReleaseAll(b);
  EXPECT_EQ(allocator.free_pages(), 6);
}

TEST(PageAllocatorTest, FreedPagesAreReused) {
  PageAllocator allocator(2);
  PageLedger a;
  for (int round = 0; round < 5; ++round) {
    auto pages = allocator.Allocate(2, a, "p");
    ASSERT_TRUE(pages.ok()) << "round " << round;
    ASSERT_TRUE(allocator.Release(*pages, a).ok());
    EXPECT_EQ(allocator.free_pages(), 2);
  }
}

// A count stops at max_references: the refused call adds nothing (not even to the pages before
// the one that would pass it), so no sequence of calls can make a count wrap.
TEST(PageAllocatorTest, ReferencesStopAtTheLimitAndARefusalChangesNothing) {
  PageAllocator allocator(4, /*max_references=*/3);
  PageLedger a, b;
  auto pages = allocator.Allocate(2, a, "p");
  ASSERT_TRUE(pages.ok());
  const int32_t p0 = (*pages)[0], p1 = (*pages)[1];
  ASSERT_TRUE(allocator.AddReferences({p0, p0}, b).ok());  // p0 at 3
  const absl::Status refused = allocator.AddReferences({p1, p0}, b);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("page_ids[1]"), std::string::npos) << refused;
  EXPECT_EQ(allocator.refcount(p0), 3);
  EXPECT_EQ(allocator.refcount(p1), 1);  // the p1 added before the refusal was taken back
  EXPECT_EQ(b.count(p1), 0);
  EXPECT_EQ(b.total_references(), 2);
  EXPECT_EQ(allocator.max_references(), 3);
  // Limits outside 1..2^30 are clamped, so nothing can configure a wrap either.
  EXPECT_EQ(PageAllocator(1, 0).max_references(), 1);
  EXPECT_EQ(PageAllocator(1, std::numeric_limits<int32_t>::max()).max_references(), 1 << 30);
}

}  // namespace
}  // namespace attnd::server
