// Page-table planning (kernels/cuda/planning/page_table.h) on the CPU: the device layout, the
// upload image, kv lengths, and the division-free page arithmetic of the kernels.
#include "planning/page_table.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace attnd::kernels::cuda::internal {
namespace {

PlanSpec TwoRequestSpec() {
  PlanSpec s;
  s.kind = AttentionKind::kPrefill;
  s.num_qo_heads = 4;
  s.num_kv_heads = 2;
  s.head_dim = 128;
  s.page_size = 16;
  s.kv_indptr = {0, 3, 4};
  s.kv_indices = {7, 2, 9, 5};
  s.kv_last_page_len = {5, 16};
  s.qo_indptr = {0, 10, 11};
  return s;
}

std::vector<int32_t> Read(const std::vector<char>& image, size_t offset, size_t n) {
  std::vector<int32_t> v(n);
  std::memcpy(v.data(), image.data() + offset, n * sizeof(int32_t));
  return v;
}

TEST(LayoutPageTable, SectionsInOrderAnd256ByteAligned) {
  const PageTableLayout l = LayoutPageTable(3, 1000);
  EXPECT_EQ(l.kv_indptr, 0u);
  EXPECT_EQ(l.qo_indptr, 256u);
  EXPECT_EQ(l.kv_indices, 512u);
  EXPECT_EQ(l.last_page_len, 512u + 4096u);  // 4000 bytes rounded up
  EXPECT_EQ(l.rope_offsets, l.last_page_len + 256u);
  EXPECT_EQ(l.total_bytes, l.rope_offsets + 256u);
  // No page at all still gets one index slot (a valid device pointer).
  EXPECT_GT(LayoutPageTable(1, 0).last_page_len, LayoutPageTable(1, 0).kv_indices);
}

TEST(PageTableImage, HoldsEverySectionAtItsOffset) {
  const PlanSpec spec = TwoRequestSpec();
  const PageTableLayout l = LayoutPageTable(spec.batch_size(), spec.kv_indices.size());
  const std::vector<char> image = PageTableImage(spec, l);
  ASSERT_EQ(image.size(), l.rope_offsets);
  EXPECT_EQ(Read(image, l.kv_indptr, 3), spec.kv_indptr);
  EXPECT_EQ(Read(image, l.qo_indptr, 3), spec.qo_indptr);
  EXPECT_EQ(Read(image, l.kv_indices, 4), spec.kv_indices);
  EXPECT_EQ(Read(image, l.last_page_len, 2), spec.kv_last_page_len);
  EXPECT_EQ(Read(image, l.kv_indptr + 12, 1), std::vector<int32_t>{0});  // zero padding
}

TEST(KvLengths, FullPagesPlusTheLastPage) {
  PlanSpec spec = TwoRequestSpec();
  EXPECT_EQ(KvLengths(spec), (std::vector<int32_t>{2 * 16 + 5, 16}));
  spec.kv_indptr = {0, 0, 4};  // a request without pages has no keys
  spec.kv_last_page_len = {1, 3};
  EXPECT_EQ(KvLengths(spec), (std::vector<int32_t>{0, 3 * 16 + 3}));
}

TEST(PageDivisor, EqualsDivisionForEveryPageSize) {
  for (int32_t page_size : {1, 2, 3, 5, 7, 16, 17, 31, 64, 100, 127, 128, 255, 256, 1000, 4096}) {
    const PageDivisor div = MakePageDivisor(page_size);
    for (int32_t t = 0; t < 70000; ++t) {
      ASSERT_EQ(DividePage(t, div), t / page_size) << "t " << t << " page_size " << page_size;
    }
    for (int32_t t : {(1 << 24) + 3, (1 << 30) - 1, 0x7ffffffe, 0x7fffffff}) {
      ASSERT_EQ(DividePage(t, div), t / page_size) << "t " << t << " page_size " << page_size;
    }
  }
}

TEST(PageShift, Log2OfPowersOfTwoElseMinusOne) {
  EXPECT_EQ(PageShift(1), 0);
  EXPECT_EQ(PageShift(16), 4);
  EXPECT_EQ(PageShift(64), 6);
  EXPECT_EQ(PageShift(3), -1);
  EXPECT_EQ(PageShift(96), -1);
}

}  // namespace
}  // namespace attnd::kernels::cuda::internal
