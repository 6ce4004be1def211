// The split-KV decode schedule (kernels/cuda/planning/decode_schedule.h) on the CPU: chunking,
// items, the fill target, forced chunks, and the workspace layout.
#include "planning/decode_schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <queue>
#include <string>
#include <vector>

namespace attnd::kernels::cuda::internal {
namespace {

// Every request's items tile [0, kv_len) in kv order, and the partial-state rows: -1 for a
// request with one item, else the rows [chunk_indptr[b], chunk_indptr[b + 1]) in kv order.
void ExpectCovers(const DecodeSchedule& s, const std::vector<int32_t>& kv_len) {
  ASSERT_EQ(s.chunk_indptr.size(), kv_len.size() + 1);
  EXPECT_EQ(s.chunk_indptr.front(), 0);
  EXPECT_EQ(static_cast<size_t>(s.chunk_indptr.back()), s.items.size());
  std::vector<std::vector<DecodeWorkItem>> by_request(kv_len.size());
  for (const DecodeWorkItem& it : s.items) {
    ASSERT_GE(it.request, 0);
    ASSERT_LT(static_cast<size_t>(it.request), kv_len.size());
    by_request[it.request].push_back(it);
  }
  for (size_t b = 0; b < kv_len.size(); ++b) {
    std::vector<DecodeWorkItem>& items = by_request[b];
    const int32_t first = s.chunk_indptr[b], last = s.chunk_indptr[b + 1];
    ASSERT_EQ(static_cast<int32_t>(items.size()), last - first) << "request " << b;
    ASSERT_FALSE(items.empty()) << "request " << b;
    std::sort(items.begin(), items.end(), [](const DecodeWorkItem& x, const DecodeWorkItem& y) {
      return x.chunk_start < y.chunk_start;
    });
    int32_t pos = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const DecodeWorkItem& it = items[i];
      EXPECT_EQ(it.chunk_start, pos);
      EXPECT_GT(it.chunk_end, it.chunk_start);
      EXPECT_EQ(it.state_row, items.size() > 1 ? first + static_cast<int32_t>(i) : -1);
      if (s.chunk_tokens > 0 && items.size() > 1) {
        EXPECT_LE(it.chunk_end - it.chunk_start, s.chunk_tokens);
      }
      pos = it.chunk_end;
    }
    EXPECT_EQ(pos, kv_len[b]);
  }
}

// Finish time of the grid when CTAs start in launch order on the first free of `slots` resident
// CTA slots, each costing its tokens + overhead (the model the balancing rule bounds; bandwidth
// shared evenly).
double SimulatedMakespan(const DecodeSchedule& s, int64_t head_ctas, int64_t slots,
                         int64_t overhead) {
  std::priority_queue<double, std::vector<double>, std::greater<>> free_at;
  for (int64_t i = 0; i < slots; ++i) free_at.push(0);
  double end = 0;
  for (const DecodeWorkItem& it : s.items) {
    for (int64_t h = 0; h < head_ctas; ++h) {
      const double t = free_at.top() + (it.chunk_end - it.chunk_start) + overhead;
      free_at.pop();
      free_at.push(t);
      end = std::max(end, t);
    }
  }
  return end;
}

// One request of `long_len` after `short_count` of `short_len` (the long one last: the worst
// place for a schedule in request order).
std::vector<int32_t> SkewedBatch(int short_count, int32_t short_len, int32_t long_len) {
  std::vector<int32_t> kv_len(short_count, short_len);
  kv_len.push_back(long_len);
  return kv_len;
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

TEST(PlanDecodeSchedule, ASkewedBatchIsCutToTheEvenShareAndRunsLongestFirst) {
  // The skewed batch: 63 requests of 512 and one of 32768, GQA-4 on tensor cores (8 KV
  // heads x 1 tile = 8 head CTAs), 132 SMs x 2: 512 CTAs already fill the device.
  const std::vector<int32_t> kv_len = SkewedBatch(63, 512, 32768);
  DecodeScheduleOptions o;
  const DeviceFill fill{132, 2};
  auto s = PlanDecodeSchedule(kv_len, 8, 16, o, fill);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->split);
  EXPECT_TRUE(s->balanced);
  // The even share: (63 x (512 + 64) + 32768 + 16 x 64) x 8 / 264 ~ 2124 tokens per CTA slot.
  EXPECT_GE(s->chunk_tokens, 2048);
  EXPECT_LE(s->chunk_tokens, 2240);
  EXPECT_EQ(s->chunk_tokens % 16, 0);
  ExpectCovers(*s, kv_len);
  // Launch order: the long request's chunks first, lengths non-increasing.
  EXPECT_EQ(s->items.front().request, 63);
  for (size_t i = 1; i < s->items.size(); ++i) {
    EXPECT_GE(s->items[i - 1].chunk_end - s->items[i - 1].chunk_start,
              s->items[i].chunk_end - s->items[i].chunk_start);
  }
  // In the model, within 10% of a perfect spread of the work (the target); in request
  // order and unsplit, the long CTA alone takes ~15x longer.
  const double total = (63.0 * (512 + 64) + 32768 + 64) * 8;
  const double ideal = total / 264;
  EXPECT_LE(SimulatedMakespan(*s, 8, 264, 64), 1.10 * ideal);
  o.balance = false;
  auto before = PlanDecodeSchedule(kv_len, 8, 16, o, fill);
  ASSERT_TRUE(before.ok());
  EXPECT_FALSE(before->split);
  EXPECT_FALSE(before->balanced);
  EXPECT_GE(SimulatedMakespan(*before, 8, 264, 64), 10 * ideal);
  ExpectCovers(*before, kv_len);
}

TEST(PlanDecodeSchedule, UniformAndMildlySkewedFullBatchesAreNotCut) {
  // Every CTA is shorter than the even share: cutting would only add merges.
  const DeviceFill fill{132, 2};
  for (const std::vector<int32_t>& kv_len :
       {std::vector<int32_t>(64, 4096), std::vector<int32_t>(256, 2048),
        SkewedBatch(63, 4096, 6000), SkewedBatch(255, 1000, 1500)}) {
    for (int64_t head_ctas : {8, 32}) {
      auto s = PlanDecodeSchedule(kv_len, head_ctas, 16, DecodeScheduleOptions(), fill);
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_FALSE(s->split) << kv_len.size() << " requests, " << head_ctas << " head CTAs";
      EXPECT_FALSE(s->balanced);
      ExpectCovers(*s, kv_len);
    }
  }
}

TEST(PlanDecodeSchedule, BalancedSchedulesStayNearTheEvenShareInTheModel) {
  // Batches that fill the device, with one or a few long requests in different places.
  const DeviceFill fill{132, 2};
  const int64_t slots = 264, overhead = 64;
  std::vector<std::vector<int32_t>> batches = {
      SkewedBatch(127, 256, 65536), SkewedBatch(63, 1024, 16384), SkewedBatch(200, 300, 100000)};
  std::vector<int32_t> mixed(96, 700);
  mixed[0] = 40000;
  mixed[50] = 20000;
  mixed[95] = 9000;
  batches.push_back(mixed);
  for (const std::vector<int32_t>& kv_len : batches) {
    for (int64_t head_ctas : {4, 8, 32}) {
      auto s = PlanDecodeSchedule(kv_len, head_ctas, 16, DecodeScheduleOptions(), fill);
      ASSERT_TRUE(s.ok()) << s.status();
      ExpectCovers(*s, kv_len);
      if (static_cast<int64_t>(kv_len.size()) * head_ctas < slots) continue;  // under-filled rule
      double work = 0;
      for (int32_t len : kv_len) {
        work += len + overhead * ((s->chunk_tokens > 0 && len > s->chunk_tokens)
                                      ? (len + s->chunk_tokens - 1) / s->chunk_tokens
                                      : 1);
      }
      const double ideal = work * head_ctas / slots;
      // LPT's granularity: the short requests are not cut, so a slot may finish one short CTA
      // past the even share (on the GPU the last CTAs then share the bandwidth of fewer).
      const double shortest = *std::min_element(kv_len.begin(), kv_len.end()) + overhead;
      EXPECT_TRUE(s->balanced) << kv_len.size() << " requests, " << head_ctas << " head CTAs";
      EXPECT_LE(SimulatedMakespan(*s, head_ctas, slots, overhead),
                std::max(1.10 * ideal, ideal + shortest))
          << kv_len.size() << " requests, " << head_ctas << " head CTAs, chunk " << s->chunk_tokens;
    }
  }
}

TEST(PlanDecodeSchedule, AGridPastTwoToThe31CtasIsRefused) {
  const std::vector<int32_t> kv_len = {65536};
  DecodeScheduleOptions o;
  o.fixed_chunk_tokens = 16;  // 4096 items x 2^20 head CTAs = 2^32 CTAs
  auto s = PlanDecodeSchedule(kv_len, int64_t{1} << 20, 16, o, {});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("too many CTAs"), std::string::npos) << s.status();
}

TEST(PlanDecodeSchedule, EmptyBatchIsAnError) {
  EXPECT_FALSE(PlanDecodeSchedule({}, 1, 16, DecodeScheduleOptions(), {}).ok());
}

TEST(LayoutDecodeWorkspace, AlignedSectionsAndPartialStatesOnlyWhenAsked) {
  const DecodeWorkspaceLayout l = LayoutDecodeWorkspace(4, 2, true, 8, 128);
  EXPECT_EQ(l.items, 0u);
  EXPECT_EQ(l.chunk_indptr % 256, 0u);
  EXPECT_EQ(l.live_counts % 256, 0u);
  EXPECT_EQ(l.partial_lse % 256, 0u);
  EXPECT_EQ(l.partial_o % 256, 0u);
  EXPECT_GE(l.chunk_indptr, 4 * sizeof(DecodeWorkItem));
  EXPECT_GE(l.live_counts - l.chunk_indptr, 3 * sizeof(int32_t));  // batch + 1 offsets
  EXPECT_EQ(l.upload_bytes, l.partial_lse);  // items | indptr | counts, then the states
  EXPECT_GE(l.partial_o - l.partial_lse, 4u * 8 * sizeof(float));
  EXPECT_GE(l.total_bytes - l.partial_o, 4u * 8 * 128 * sizeof(float));

  const DecodeWorkspaceLayout lu = LayoutDecodeWorkspace(2, 2, false, 8, 128);
  EXPECT_EQ(lu.partial_o, lu.partial_lse);  // no partial states
  EXPECT_EQ(lu.total_bytes, lu.partial_o);
}

TEST(PlanDecodeSchedule, AnItemCapacityCoarsensTheChunks) {
  const std::vector<int32_t> kv_len = {1, 97, 1000, 33};
  DecodeScheduleOptions o;
  o.fixed_chunk_tokens = 32;  // 39 items
  auto s = PlanDecodeSchedule(kv_len, 1, 16, o, {}, /*max_items=*/12);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_LE(s->items.size(), 12u);
  EXPECT_EQ(s->chunk_tokens % 16, 0);
  EXPECT_GT(s->chunk_tokens, 32);
  ExpectCovers(*s, kv_len);
  // At the batch size: no split at all.
  auto one = PlanDecodeSchedule(kv_len, 1, 16, o, {}, 4);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_FALSE(one->split);
  EXPECT_EQ(one->items.size(), 4u);
  ExpectCovers(*one, kv_len);
  // Below it: refused.
  auto bad = PlanDecodeSchedule(kv_len, 1, 16, o, {}, 3);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GraphItemCapacity, AutomaticSchedulesOfUpToMaxBatchFitWithoutCoarsening) {
  // The graph-safe capacity holds the automatic schedules of many batches up to max_batch
  // uncut: the under-filled rule, the balanced rule, skewed and uniform.
  const DeviceFill fill{132, 2};
  DecodeScheduleOptions o;
  for (int64_t head_ctas : {2, 8, 32}) {
    const int64_t cap = GraphItemCapacity(64, head_ctas, o, fill);
    std::vector<std::vector<int32_t>> batches = {{32768},
                                                 std::vector<int32_t>(64, 4096),
                                                 SkewedBatch(63, 512, 32768),
                                                 SkewedBatch(15, 100, 65536),
                                                 std::vector<int32_t>(7, 20000)};
    for (const std::vector<int32_t>& kv_len : batches) {
      auto free = PlanDecodeSchedule(kv_len, head_ctas, 16, o, fill);
      auto capped = PlanDecodeSchedule(kv_len, head_ctas, 16, o, fill, cap);
      ASSERT_TRUE(free.ok() && capped.ok());
      EXPECT_LE(static_cast<int64_t>(free->items.size()), cap)
          << kv_len.size() << " requests, " << head_ctas << " head CTAs";
      EXPECT_EQ(free->chunk_tokens, capped->chunk_tokens);
    }
  }
}

}  // namespace
}  // namespace attnd::kernels::cuda::internal
