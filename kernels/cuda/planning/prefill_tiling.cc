// Prefill tiling (prefill_tiling.h).
#include "planning/prefill_tiling.h"

#include <algorithm>

#include "absl/status/status.h"

namespace attnd::kernels::cuda::internal {

TileVariant ResolvePrefillTile(int32_t head_dim, PrefillScheduleOptions::Tile tile) {
  using Tile = PrefillScheduleOptions::Tile;
  if (head_dim != 128) return TileVariant::kDefault;
  switch (tile) {
    case Tile::kDefault: return TileVariant::kDefault;
    case Tile::kWide: return TileVariant::kWide;
    case Tile::kWide3: return TileVariant::kWide3;
    case Tile::kWide64: return TileVariant::kWide64;
    case Tile::kAuto: break;
  }
  return kDefaultVariant128;
}

absl::StatusOr<std::vector<PrefillItem>> PlanPrefillItems(std::span<const int32_t> qo_indptr,
                                                          std::span<const int32_t> kv_len,
                                                          int32_t group, int32_t cta_rows) {
  if (qo_indptr.size() != kv_len.size() + 1 || group < 1 || cta_rows < 1) {
    return absl::InvalidArgumentError("prefill: inconsistent plan sizes");
  }
  struct Candidate {
    PrefillItem item;
    int64_t cost;  // keys a causal tile scans (upper bound of its work)
  };
  std::vector<Candidate> candidates;
  for (size_t b = 0; b < kv_len.size(); ++b) {
    const int64_t qo_len = static_cast<int64_t>(qo_indptr[b + 1]) - qo_indptr[b];
    const int64_t packed = qo_len * group;
    for (int64_t start = 0; start < packed; start += cta_rows) {
      if (start > 0x7fffffff) return absl::InvalidArgumentError("prefill: too many query rows");
      const int64_t last_row = std::min<int64_t>(start + cta_rows, packed) - 1;
      const int64_t cost = kv_len[b] - qo_len + last_row / group + 1;
      candidates.push_back({{static_cast<int32_t>(b), static_cast<int32_t>(start)}, cost});
    }
  }
  // Longest first: the tail of the grid is then made of short tiles (causal load balance).
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) { return a.cost > b.cost; });
  std::vector<PrefillItem> items(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) items[i] = candidates[i].item;
  return items;
}

}  // namespace attnd::kernels::cuda::internal
