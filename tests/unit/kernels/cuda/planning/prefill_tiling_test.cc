// Prefill tiling (kernels/cuda/planning/prefill_tiling.h) on the CPU: tile shapes, the plan's
// variant, the work items (coverage of the packed rows, longest first) and split-KV.
#include "planning/prefill_tiling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace attnd::kernels::cuda::internal {
namespace {

using Tile = PrefillScheduleOptions::Tile;

TEST(PrefillTileShapes, PerHeadDimAndVariant) {
  EXPECT_EQ(CtaRows(64), 128);
  EXPECT_EQ(CtaRows(128), 64);
  EXPECT_EQ(CtaRows(256), 64);
  EXPECT_EQ(CtaRows(128, TileVariant::kWide64), 128);
  EXPECT_EQ(TileKv(128), 64);
  EXPECT_EQ(TileKv(256), 16);
  EXPECT_EQ(TileKv(128, TileVariant::kWide), 32);
  EXPECT_EQ(TileKv(128, TileVariant::kWide64), 64);
  EXPECT_EQ(Stages(128, TileVariant::kWide3), 3);
  EXPECT_EQ(Stages(128), 2);
  // The wide variants exist at head_dim 128 only.
  EXPECT_EQ(CtaRows(256, TileVariant::kWide64), CtaRows(256));
}

TEST(ResolvePrefillTile, AutoIsWide64AtHeadDim128AndDefaultElsewhereOffSm90) {
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kAuto, false), TileVariant::kWide64);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kAuto, false), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(256, Tile::kAuto, false), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kDefault, false), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide, false), TileVariant::kWide);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide3, false), TileVariant::kWide3);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide64, false), TileVariant::kWide64);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kWide64, false), TileVariant::kDefault);
  // kHopper asked for off sm90 resolves as kAuto.
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kHopper, false), TileVariant::kWide64);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kHopper, false), TileVariant::kDefault);
}

TEST(ResolvePrefillTile, AutoIsHopperOnSm90AtHeadDims64And128) {
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kAuto, true), TileVariant::kHopper);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kAuto, true), TileVariant::kHopper);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kHopper, true), TileVariant::kHopper);
  // No sm90 kernel at 256; the FA2 tiles stay reachable on sm90.
  EXPECT_EQ(ResolvePrefillTile(256, Tile::kAuto, true), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(256, Tile::kHopper, true), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide64, true), TileVariant::kWide64);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kDefault, true), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kWide64, true), TileVariant::kHopper);
  // The sm90 tile: 128 rows, 128 keys per step.
  EXPECT_EQ(CtaRows(128, TileVariant::kHopper), 128);
  EXPECT_EQ(TileKv(128, TileVariant::kHopper), 128);
  EXPECT_EQ(CtaRows(64, TileVariant::kHopper), 128);
  EXPECT_EQ(CtaRows(256, TileVariant::kHopper), CtaRows(256));
}

TEST(PlanPrefillItems, CoversEveryPackedRowOnceLongestFirst) {
  const std::vector<int32_t> qo_indptr = {0, 100, 101, 101, 400};
  const std::vector<int32_t> kv_len = {100, 5000, 0, 300};
  const int32_t group = 4, cta_rows = 64;
  auto items = PlanPrefillItems(qo_indptr, kv_len, group, cta_rows);
  ASSERT_TRUE(items.ok()) << items.status();
  std::vector<std::vector<int32_t>> starts(kv_len.size());
  for (const PrefillItem& it : *items) starts[it.request].push_back(it.packed_start);
  for (size_t b = 0; b < kv_len.size(); ++b) {
    const int32_t packed = (qo_indptr[b + 1] - qo_indptr[b]) * group;
    std::sort(starts[b].begin(), starts[b].end());
    ASSERT_EQ(starts[b].size(), static_cast<size_t>((packed + cta_rows - 1) / cta_rows));
    for (size_t i = 0; i < starts[b].size(); ++i) EXPECT_EQ(starts[b][i], cta_rows * int(i));
  }
  // Cost (keys a causal tile scans) never increases along the array.
  auto cost = [&](const PrefillItem& it) {
    const int64_t qo_len = qo_indptr[it.request + 1] - qo_indptr[it.request];
    const int64_t last = std::min<int64_t>(it.packed_start + cta_rows, qo_len * group) - 1;
    return kv_len[it.request] - qo_len + last / group + 1;
  };
  for (size_t i = 1; i < items->size(); ++i) EXPECT_GE(cost((*items)[i - 1]), cost((*items)[i]));
  // Request 1 (one query row, 5000 keys) is the longest tile.
  EXPECT_EQ((*items)[0].request, 1);
}

TEST(PlanPrefillItems, EmptyQueriesGiveNoItemsAndBadSizesAreErrors) {
  auto none = PlanPrefillItems(std::vector<int32_t>{0, 0, 0}, std::vector<int32_t>{4, 9}, 1, 64);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  EXPECT_FALSE(
      PlanPrefillItems(std::vector<int32_t>{0, 1}, std::vector<int32_t>{1, 2}, 1, 64).ok());
}

// Every (query row, chunk) state of a split schedule is written by exactly one tile per KV
// head, the chunks of a request cover its K/V once, and state_indptr lists one state per chunk.
void ExpectCoversStates(const PrefillSchedule& s, const std::vector<int32_t>& qo_indptr,
                        const std::vector<int32_t>& kv_len, int32_t group, int32_t cta_rows) {
  std::vector<int32_t> writes(static_cast<size_t>(s.num_states), 0);
  for (const PrefillItem& it : s.items) {
    if (it.state_base < 0) continue;
    const int32_t qo_len = qo_indptr[it.request + 1] - qo_indptr[it.request];
    const int32_t end = std::min(it.packed_start + cta_rows, qo_len * group);
    for (int32_t pk = it.packed_start; pk < end; pk += group) {
      writes[it.state_base + (pk / group) * it.num_chunks + it.chunk] += 1;
    }
    EXPECT_EQ(it.kv_chunk_begin, it.chunk * s.chunk_tokens);
    EXPECT_EQ(it.kv_chunk_end, std::min(kv_len[it.request], (it.chunk + 1) * s.chunk_tokens));
  }
  for (size_t b = 0; b < kv_len.size(); ++b) {
    const int32_t chunks = std::max(1, (kv_len[b] + s.chunk_tokens - 1) / s.chunk_tokens);
    for (int32_t r = qo_indptr[b]; r < qo_indptr[b + 1]; ++r) {
      EXPECT_EQ(s.state_indptr[r + 1] - s.state_indptr[r], chunks);
      if (chunks == 1) continue;  // written as o directly
      for (int32_t k = s.state_indptr[r]; k < s.state_indptr[r + 1]; ++k) {
        EXPECT_EQ(writes[k], 1) << "state " << k;
      }
    }
  }
}

TEST(PlanPrefillSchedule, ShortQueriesOnLongKvAreSplitToFillTheDevice) {
  // qo 16 on kv 32768, B=1, 32 q / 8 KV heads (group 4), 128-row tiles of 64 keys: one tile per
  // KV head is 8 CTAs; 132 SMs x 2 want 264.
  const std::vector<int32_t> qo_indptr = {0, 16};
  const std::vector<int32_t> kv_len = {32768};
  const DeviceFill fill{132, 2};
  auto s = PlanPrefillSchedule(qo_indptr, kv_len, 4, 8, 128, 64, PrefillScheduleOptions(), fill);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_GT(s->chunk_tokens, 0);
  EXPECT_EQ(s->chunk_tokens % 64, 0);
  EXPECT_GE(s->chunk_tokens, 512);
  const int64_t ctas = static_cast<int64_t>(s->items.size()) * 8;
  EXPECT_LE(ctas, 264);
  EXPECT_GT(ctas, 132);  // the smallest chunk that fits: more than half the target
  EXPECT_EQ(s->num_states, 16 * ((32768 + s->chunk_tokens - 1) / s->chunk_tokens));
  ExpectCoversStates(*s, qo_indptr, kv_len, 4, 128);
}

TEST(PlanPrefillSchedule, AFullGridOrSplitOffIsNotSplit) {
  const DeviceFill fill{132, 2};
  // B=16 L=1024 with 128-row tiles: 16 * 32 tiles x 8 heads fill the device.
  std::vector<int32_t> qo_indptr = {0}, kv_len;
  for (int b = 0; b < 16; ++b) {
    qo_indptr.push_back(qo_indptr.back() + 1024);
    kv_len.push_back(1024);
  }
  auto full = PlanPrefillSchedule(qo_indptr, kv_len, 4, 8, 128, 64, PrefillScheduleOptions(), fill);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->chunk_tokens, 0);
  EXPECT_TRUE(full->state_indptr.empty());
  EXPECT_EQ(full->items.size(), 16u * 32);
  PrefillScheduleOptions off;
  off.allow_split = false;
  EXPECT_FALSE(PrefillNeedsDeviceFill(off));
  auto unsplit = PlanPrefillSchedule(std::vector<int32_t>{0, 16}, std::vector<int32_t>{32768}, 4, 8,
                                     128, 64, off, fill);
  ASSERT_TRUE(unsplit.ok());
  EXPECT_EQ(unsplit->chunk_tokens, 0);
  EXPECT_EQ(unsplit->items.size(), 1u);
  EXPECT_EQ(unsplit->items[0].state_base, -1);
  EXPECT_EQ(unsplit->items[0].kv_chunk_end, kPrefillWholeKv);
}

TEST(PlanPrefillSchedule, FixedChunksSplitOnlyTheLongRequests) {
  // Request 0 fits one chunk (written directly), request 1 is cut into 3, request 2 has no
  // query rows; chunks are rounded up to the tile's keys (100 -> 128 with 64-key tiles).
  const std::vector<int32_t> qo_indptr = {0, 5, 205, 205};
  const std::vector<int32_t> kv_len = {40, 300, 77};
  PrefillScheduleOptions o;
  o.fixed_chunk_tokens = 100;
  EXPECT_FALSE(PrefillNeedsDeviceFill(o));
  auto s = PlanPrefillSchedule(qo_indptr, kv_len, 2, 2, 64, 64, o, DeviceFill{});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->chunk_tokens, 128);
  EXPECT_EQ(s->num_states, 5 * 1 + 200 * 3);
  ASSERT_EQ(s->state_indptr.size(), 206u);
  for (const PrefillItem& it : s->items) {
    EXPECT_EQ(it.state_base < 0, it.request == 0);
    EXPECT_NE(it.request, 2);
  }
  // Request 1: ceil(200 * 2 / 64) = 7 tiles x 3 chunks; request 0: 1 tile.
  EXPECT_EQ(s->items.size(), 7u * 3 + 1);
  ExpectCoversStates(*s, qo_indptr, kv_len, 2, 64);
}

TEST(LayoutPrefillWorkspace, SectionsAreAlignedAndSizedAndEmptyWithoutASplit) {
  const std::vector<int32_t> qo_indptr = {0, 5, 205, 205};
  const std::vector<int32_t> kv_len = {40, 300, 77};
  PrefillScheduleOptions o;
  o.fixed_chunk_tokens = 100;
  auto split = PlanPrefillSchedule(qo_indptr, kv_len, 2, 2, 64, 64, o, DeviceFill{});
  ASSERT_TRUE(split.ok());
  const PrefillWorkspaceLayout l = LayoutPrefillWorkspace(*split, 4, 128);
  EXPECT_EQ(l.items, 0u);
  EXPECT_GE(l.state_indptr, split->items.size() * sizeof(PrefillItem));
  EXPECT_GE(l.partial_lse - l.state_indptr, split->state_indptr.size() * sizeof(int32_t));
  EXPECT_EQ(l.upload_bytes, l.partial_lse);
  EXPECT_GE(l.partial_o - l.partial_lse, 605u * 4 * sizeof(float));
  EXPECT_EQ(l.total_bytes - l.partial_o, 605u * 4 * 128 * sizeof(uint16_t));
  for (size_t offset : {l.state_indptr, l.partial_lse, l.partial_o}) EXPECT_EQ(offset % 256, 0u);

  o.fixed_chunk_tokens = 0;
  o.allow_split = false;
  auto unsplit = PlanPrefillSchedule(qo_indptr, kv_len, 2, 2, 64, 64, o, DeviceFill{});
  ASSERT_TRUE(unsplit.ok());
  const PrefillWorkspaceLayout u = LayoutPrefillWorkspace(*unsplit, 4, 128);
  EXPECT_EQ(u.total_bytes, u.upload_bytes);  // no partial states
  EXPECT_EQ(u.upload_bytes, AlignWorkspace(unsplit->items.size() * sizeof(PrefillItem)));
}

}  // namespace
}  // namespace attnd::kernels::cuda::internal
