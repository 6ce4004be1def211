// The split-KV decode schedule (kernels/cuda/planning/decode_schedule.h) on the CPU: chunking,
// items, the fill target, forced chunks, and the workspace layout.
#include "planning/decode_schedule.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace attnd::kernels::cuda::internal {
namespace {

// Every request's items tile [0, kv_len) in order, with split set exactly when it has several.
void ExpectCovers(const DecodeSchedule& s, const std::vector<int32_t>& kv_len) {
  ASSERT_EQ(s.chunk_indptr.size(), kv_len.size() + 1);
  EXPECT_EQ(s.chunk_indptr.front(), 0);
  EXPECT_EQ(static_cast<size_t>(s.chunk_indptr.back()), s.items.size());
  for (size_t b = 0; b < kv_len.size(); ++b) {
    const int32_t first = s.chunk_indptr[b], last = s.chunk_indptr[b + 1];
    ASSERT_GT(last, first) << "request " << b;
    int32_t pos = 0;
    for (int32_t i = first; i < last; ++i) {
      const DecodeWorkItem& it = s.items[i];
      EXPECT_EQ(it.request, static_cast<int32_t>(b));
      EXPECT_EQ(it.chunk_start, pos);
      EXPECT_GT(it.chunk_end, it.chunk_start);
      EXPECT_EQ(it.split, last - first > 1 ? 1 : 0);
      if (s.chunk_tokens > 0 && last - first > 1) {
        EXPECT_LE(it.chunk_end - it.chunk_start, s.chunk_tokens);
      }
      pos = it.chunk_end;
    }
    EXPECT_EQ(pos, kv_len[b]);
  }
}

TEST(DecodeHeadTile, SmallestInstantiatedTileThatHoldsTheGroup) {
  EXPECT_EQ(DecodeHeadTile(1), 1);
  EXPECT_EQ(DecodeHeadTile(2), 2);
  EXPECT_EQ(DecodeHeadTile(3), 4);
  EXPECT_EQ(DecodeHeadTile(4), 4);
  EXPECT_EQ(DecodeHeadTile(5), 8);
  EXPECT_EQ(DecodeHeadTile(8), 8);
  EXPECT_EQ(DecodeHeadTile(16), 8);  // several CTAs per KV head
}

TEST(UseTensorCoreDecode, AutoPicksTensorCoresForGqaGroupsOfFourWhenBuilt) {
  using Kernel = DecodeScheduleOptions::Kernel;
  EXPECT_FALSE(UseTensorCoreDecode(Kernel::kAuto, 1, true));
  EXPECT_FALSE(UseTensorCoreDecode(Kernel::kAuto, 2, true));
  EXPECT_TRUE(UseTensorCoreDecode(Kernel::kAuto, 4, true));
  EXPECT_FALSE(UseTensorCoreDecode(Kernel::kAuto, 8, false));
  EXPECT_TRUE(UseTensorCoreDecode(Kernel::kTensorCores, 1, false));
  EXPECT_FALSE(UseTensorCoreDecode(Kernel::kCudaCores, 8, true));
}

TEST(PlanDecodeSchedule, NoSplitWhenTheBatchFillsTheDevice) {
  const std::vector<int32_t> kv_len(64, 4000);
  DecodeScheduleOptions o;
  // 64 requests x 8 head CTAs = 512 CTAs >= 132 SMs x 2.
  auto s = PlanDecodeSchedule(kv_len, 8, 16, o, {132, 2});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->split);
  EXPECT_EQ(s->chunk_tokens, 0);
  EXPECT_EQ(s->items.size(), kv_len.size());
  ExpectCovers(*s, kv_len);
}

TEST(PlanDecodeSchedule, SplitsASmallBatchIntoTheSmallestChunksThatFitOneWave) {
  const std::vector<int32_t> kv_len = {32768};
  DecodeScheduleOptions o;
  const int64_t head_ctas = 8;
  const DeviceFill fill{132, 2};  // 264 resident CTAs
  auto s = PlanDecodeSchedule(kv_len, head_ctas, 16, o, fill);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->split);
  ASSERT_GT(s->chunk_tokens, 0);
  EXPECT_EQ(s->chunk_tokens % 16, 0);
  EXPECT_GE(s->chunk_tokens, o.min_chunk_tokens);
  // Fits: chunks x head CTAs <= 264; one granule less would not.
  const int64_t chunks = (32768 + s->chunk_tokens - 1) / s->chunk_tokens;
  EXPECT_LE(chunks * head_ctas, 264);
  const int64_t smaller = s->chunk_tokens - 16;
  EXPECT_GT((32768 + smaller - 1) / smaller * head_ctas, 264);
  ExpectCovers(*s, kv_len);
}

TEST(PlanDecodeSchedule, ChunksAreMultiplesOfLargePages) {
  const std::vector<int32_t> kv_len = {5000, 12000, 700};
  DecodeScheduleOptions o;
  auto s = PlanDecodeSchedule(kv_len, 4, 64, o, {132, 1});
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(s->split);
  EXPECT_EQ(s->chunk_tokens % 64, 0);
  ExpectCovers(*s, kv_len);
}

TEST(PlanDecodeSchedule, ShortRequestsAreNotSplit) {
  // max_len below the minimum chunk: the chunk would cover everything, so no split.
  const std::vector<int32_t> kv_len = {100, 7, 1};
  auto s = PlanDecodeSchedule(kv_len, 1, 16, DecodeScheduleOptions(), {132, 4});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->split);
  EXPECT_EQ(s->chunk_tokens, 0);
  ExpectCovers(*s, kv_len);
}

TEST(PlanDecodeSchedule, FixedChunksCutEveryLongRequest) {
  const std::vector<int32_t> kv_len = {1, 97, 1000, 33};
  DecodeScheduleOptions o;
  o.fixed_chunk_tokens = 32;
  EXPECT_FALSE(NeedsDeviceFill(o));
  auto s = PlanDecodeSchedule(kv_len, 1, 16, o, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->split);
  EXPECT_EQ(s->chunk_tokens, 32);
  EXPECT_EQ(s->chunk_indptr, (std::vector<int32_t>{0, 1, 5, 37, 39}));
  ExpectCovers(*s, kv_len);
}

TEST(PlanDecodeSchedule, NoSplitWhenSplittingIsOff) {
  DecodeScheduleOptions o;
  o.allow_split = false;
  EXPECT_FALSE(NeedsDeviceFill(o));
  const std::vector<int32_t> kv_len = {100000};
  auto s = PlanDecodeSchedule(kv_len, 1, 16, o, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->split);
  ExpectCovers(*s, kv_len);
}

TEST(PlanDecodeSchedule, MoreWavesGiveSmallerChunks) {
  const std::vector<int32_t> kv_len = {65536};
  DecodeScheduleOptions one, four;
  four.waves = 4.f;
  auto a = PlanDecodeSchedule(kv_len, 8, 16, one, {132, 2});
  auto b = PlanDecodeSchedule(kv_len, 8, 16, four, {132, 2});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT(b->chunk_tokens, a->chunk_tokens);
}

TEST(PlanDecodeSchedule, EmptyBatchIsAnError) {
  EXPECT_FALSE(PlanDecodeSchedule({}, 1, 16, DecodeScheduleOptions(), {}).ok());
}

TEST(LayoutDecodeWorkspace, AlignedSectionsAndPartialStatesOnlyWhenSplit) {
  DecodeScheduleOptions o;
  o.fixed_chunk_tokens = 16;
  const std::vector<int32_t> kv_len = {40, 8};
  auto s = PlanDecodeSchedule(kv_len, 1, 16, o, {});
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->items.size(), 4u);
  const DecodeWorkspaceLayout l = LayoutDecodeWorkspace(*s, 8, 128);
  EXPECT_EQ(l.items, 0u);
  EXPECT_EQ(l.chunk_indptr % 256, 0u);
  EXPECT_EQ(l.partial_lse % 256, 0u);
  EXPECT_EQ(l.partial_o % 256, 0u);
  EXPECT_GE(l.chunk_indptr, 4 * sizeof(DecodeWorkItem));
  EXPECT_GE(l.partial_o - l.partial_lse, 4u * 8 * sizeof(float));
  EXPECT_GE(l.total_bytes - l.partial_o, 4u * 8 * 128 * sizeof(float));

  o.fixed_chunk_tokens = 0;
  o.allow_split = false;
  auto u = PlanDecodeSchedule(kv_len, 1, 16, o, {});
  ASSERT_TRUE(u.ok());
  const DecodeWorkspaceLayout lu = LayoutDecodeWorkspace(*u, 8, 128);
  EXPECT_EQ(lu.partial_o, lu.partial_lse);  // no partial states
  EXPECT_EQ(lu.total_bytes, lu.partial_o);
}

}  // namespace
}  // namespace attnd::kernels::cuda::internal
