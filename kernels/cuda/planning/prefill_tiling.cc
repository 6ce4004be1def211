// Prefill tiling (prefill_tiling.h).
#include "planning/prefill_tiling.h"

#include <algorithm>

#include "absl/status/status.h"

namespace attnd::kernels::cuda::internal {

TileVariant ResolvePrefillTile(int32_t head_dim, PrefillScheduleOptions::Tile tile, bool sm90,
                               bool custom_mask) {
  using Tile = PrefillScheduleOptions::Tile;
  if (custom_mask) {
    const TileVariant v = ResolvePrefillTile(head_dim, tile, sm90);
    return IsWide(head_dim, v) ? TileVariant::kDefault : v;
  }
  const bool hopper = sm90 && IsHopper(head_dim, TileVariant::kHopper);
  if (tile == Tile::kDefault) return TileVariant::kDefault;
  if (head_dim == 128) {
    switch (tile) {
      case Tile::kWide: return TileVariant::kWide;
      case Tile::kWide3: return TileVariant::kWide3;
      case Tile::kWide64: return TileVariant::kWide64;
      default: break;
    }
  }
  if (hopper) return TileVariant::kHopper;
  return head_dim == 128 ? kDefaultVariant128 : TileVariant::kDefault;
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

bool PrefillNeedsDeviceFill(const PrefillScheduleOptions& options) {
  return options.allow_split && options.fixed_chunk_tokens <= 0;
}

namespace {

// Tiles of request b (packed rows / cta_rows, rounded up).
int64_t TilesOf(int64_t qo_len, int32_t group, int32_t cta_rows) {
  return (qo_len * group + cta_rows - 1) / cta_rows;
}

}  // namespace

absl::StatusOr<PrefillSchedule> PlanPrefillSchedule(std::span<const int32_t> qo_indptr,
                                                    std::span<const int32_t> kv_len, int32_t group,
                                                    int32_t num_kv_heads, int32_t cta_rows,
                                                    int32_t tile_kv,
                                                    const PrefillScheduleOptions& options,
                                                    const DeviceFill& fill) {
  auto tiles = PlanPrefillItems(qo_indptr, kv_len, group, cta_rows);
  if (!tiles.ok()) return tiles.status();
  if (num_kv_heads < 1 || tile_kv < 1) {
    return absl::InvalidArgumentError("prefill: inconsistent plan sizes");
  }
  const size_t batch = kv_len.size();
  int64_t chunk = 0;
  const int32_t max_len = batch > 0 ? *std::max_element(kv_len.begin(), kv_len.end()) : 0;
  if (options.fixed_chunk_tokens > 0) {
    chunk = (options.fixed_chunk_tokens + tile_kv - 1) / tile_kv * tile_kv;
  } else if (options.allow_split && !tiles->empty()) {
    const int64_t target = TargetCtas(fill, options.waves);
    auto ctas = [&](int64_t c) {
      int64_t n = 0;
      for (size_t b = 0; b < batch; ++b) {
        const int64_t qo_len = static_cast<int64_t>(qo_indptr[b + 1]) - qo_indptr[b];
        n += TilesOf(qo_len, group, cta_rows) * ChunksOf(kv_len[b], c);
      }
      return n * num_kv_heads;
    };
    if (ctas(0) < target) {
      // The smallest chunk (a multiple of tile_kv) whose grid still fits the waves.
      chunk = SmallestFittingChunk(options.min_chunk_tokens, max_len, tile_kv,
                                   [&](int64_t c) { return ctas(c) <= target; });
    }
  }
  if (chunk >= max_len) chunk = 0;  // no request is longer than one chunk

  PrefillSchedule s;
  s.chunk_tokens = static_cast<int32_t>(chunk);
  if (chunk == 0) {
    s.items = *std::move(tiles);
    return s;
  }
  // State rows: request by request, query row by query row, chunk by chunk.
  std::vector<int64_t> state_base(batch);
  s.state_indptr.assign(1, 0);
  int64_t states = 0;
  for (size_t b = 0; b < batch; ++b) {
    const int64_t qo_len = static_cast<int64_t>(qo_indptr[b + 1]) - qo_indptr[b];
    const int64_t c = ChunksOf(kv_len[b], chunk);
    state_base[b] = states;
    for (int64_t i = 0; i < qo_len; ++i) {
      states += c;
      if (states > 0x7fffffff) return absl::InvalidArgumentError("prefill: too many split states");
      s.state_indptr.push_back(static_cast<int32_t>(states));
    }
  }
  s.num_states = states;
  struct Candidate {
    PrefillItem item;
    int64_t cost;  // keys the tile scans in its chunk (causal upper bound)
  };
  std::vector<Candidate> candidates;
  for (const PrefillItem& t : *tiles) {
    const size_t b = static_cast<size_t>(t.request);
    const int64_t qo_len = static_cast<int64_t>(qo_indptr[b + 1]) - qo_indptr[b];
    const int64_t c = ChunksOf(kv_len[b], chunk);
    const int64_t last_row = std::min<int64_t>(t.packed_start + cta_rows, qo_len * group) - 1;
    const int64_t visible_end = kv_len[b] - qo_len + last_row / group + 1;
    for (int64_t k = 0; k < c; ++k) {
      PrefillItem item = t;
      if (c > 1) {
        item.kv_chunk_begin = static_cast<int32_t>(k * chunk);
        item.kv_chunk_end = static_cast<int32_t>(std::min<int64_t>(kv_len[b], (k + 1) * chunk));
        item.state_base = static_cast<int32_t>(state_base[b]);
        item.chunk = static_cast<int32_t>(k);
        item.num_chunks = static_cast<int32_t>(c);
      }
      const int64_t cost = std::max<int64_t>(
          0, std::min<int64_t>(visible_end, item.kv_chunk_end) - item.kv_chunk_begin);
      candidates.push_back({item, cost});
    }
  }
  if (candidates.size() > 0x7fffffff) return absl::InvalidArgumentError("prefill: too many items");
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& x, const Candidate& y) { return x.cost > y.cost; });
  s.items.resize(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) s.items[i] = candidates[i].item;
  return s;
}

PrefillWorkspaceLayout LayoutPrefillWorkspace(const PrefillSchedule& schedule, int32_t num_qo_heads,
                                              int32_t head_dim) {
  const bool split = schedule.chunk_tokens > 0;
  const size_t states = split ? static_cast<size_t>(schedule.num_states) * num_qo_heads : 0;
  PrefillWorkspaceLayout l;
  l.items = 0;
  l.state_indptr = AlignWorkspace(schedule.items.size() * sizeof(PrefillItem));
  l.partial_lse = l.state_indptr + AlignWorkspace(schedule.state_indptr.size() * sizeof(int32_t));
  l.upload_bytes = l.partial_lse;
  l.partial_o = l.partial_lse + AlignWorkspace(states * sizeof(float));
  l.total_bytes = l.partial_o + states * static_cast<size_t>(head_dim) * sizeof(uint16_t);
  return l;
}

}  // namespace attnd::kernels::cuda::internal
