// Page-table planning (kernels/cuda/planning/page_table.h) on the CPU: the device layout, the
// upload image, kv lengths, the division-free page arithmetic of the kernels, and what an
// updated plan uploads (an image in a layout with room to spare, the one range that changed,
// the capacity it grows to).
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

TEST(PageTableImage, FitsALayoutWithRoomToSpareAndReusesTheVector) {
  const PlanSpec spec = TwoRequestSpec();
  const PageTableLayout roomy = LayoutPageTable(8, 100);
  std::vector<char> image(7, 'x');
  FillPageTableImage(spec, roomy, &image);
  ASSERT_EQ(image.size(), roomy.rope_offsets);
  EXPECT_EQ(Read(image, roomy.kv_indptr, 4), (std::vector<int32_t>{0, 3, 4, 0}));
  EXPECT_EQ(Read(image, roomy.kv_indices, 5), (std::vector<int32_t>{7, 2, 9, 5, 0}));
  EXPECT_EQ(Read(image, roomy.last_page_len, 3), (std::vector<int32_t>{5, 16, 0}));
  EXPECT_EQ(image, PageTableImage(spec, roomy));
}

// A decode step of an updated plan: request 0 grows by one token (its last_page_len), a page is
// appended to request 0 (the later entries shift): one range from the first to the last change.
TEST(ChangedRange, FromTheFirstToTheLastChangedWord) {
  PlanSpec spec = TwoRequestSpec();
  const PageTableLayout l = LayoutPageTable(4, 64);
  const std::vector<char> before = PageTableImage(spec, l);
  EXPECT_EQ(ChangedRange(before, before).size(), 0u);

  spec.kv_last_page_len[1] = 15;  // one int32
  ByteRange r = ChangedRange(before, PageTableImage(spec, l));
  EXPECT_EQ(r.begin, l.last_page_len + 4);
  EXPECT_EQ(r.end, l.last_page_len + 8);

  spec.kv_indptr = {0, 4, 5};  // page 11 appended to request 0
  spec.kv_indices = {7, 2, 9, 11, 5};
  r = ChangedRange(before, PageTableImage(spec, l));
  EXPECT_EQ(r.begin, l.kv_indptr + 4);    // kv_indptr[1]
  EXPECT_EQ(r.end, l.last_page_len + 8);  // through last_page_len[1]
  EXPECT_EQ(r.begin % 4, 0u);
  // A change in the low byte of a word takes the whole word.
  std::vector<char> after = before;
  after[l.kv_indices + 9] = 1;
  r = ChangedRange(before, after);
  EXPECT_EQ(r.begin, l.kv_indices + 8);
  EXPECT_EQ(r.end, l.kv_indices + 12);
  // Images of different layouts: all of the new one.
  const std::vector<char> other = PageTableImage(spec, LayoutPageTable(4, 1000));
  r = ChangedRange(before, other);
  EXPECT_EQ(r.begin, 0u);
  EXPECT_EQ(r.end, other.size());
}

TEST(GrownCapacity, HalfAsMuchAgainOrWhatIsNeeded) {
  EXPECT_EQ(GrownCapacity(100, 101), 150u);
  EXPECT_EQ(GrownCapacity(100, 400), 400u);
  EXPECT_EQ(GrownCapacity(0, 3), 3u);
  EXPECT_EQ(GrownCapacity(1, 2), 2u);
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
