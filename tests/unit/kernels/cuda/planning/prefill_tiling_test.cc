// Prefill tiling (kernels/cuda/planning/prefill_tiling.h) on the CPU: tile shapes, the plan's
// variant, and the work items (coverage of the packed rows, longest first).
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

TEST(ResolvePrefillTile, AutoIsWide64AtHeadDim128AndDefaultElsewhere) {
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kAuto), TileVariant::kWide64);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kAuto), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(256, Tile::kAuto), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kDefault), TileVariant::kDefault);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide), TileVariant::kWide);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide3), TileVariant::kWide3);
  EXPECT_EQ(ResolvePrefillTile(128, Tile::kWide64), TileVariant::kWide64);
  EXPECT_EQ(ResolvePrefillTile(64, Tile::kWide64), TileVariant::kDefault);
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
  EXPECT_FALSE(PlanPrefillItems(std::vector<int32_t>{0, 1}, std::vector<int32_t>{1, 2}, 1, 64).ok());
}

}  // namespace
}  // namespace attnd::kernels::cuda::internal
