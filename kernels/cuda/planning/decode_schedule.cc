// The split-KV decode schedule (decode_schedule.h).
#include "planning/decode_schedule.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnd::kernels::cuda::internal {
namespace {

// Work items of a schedule with chunks of `chunk` tokens (a request gets at least one).
int64_t CountChunks(std::span<const int32_t> kv_len, int64_t chunk) {
  int64_t n = 0;
  for (int32_t len : kv_len) n += ChunksOf(len, chunk);
  return n;
}

// The even share of the work per resident CTA, in tokens: sum over the grid's CTAs of (tokens +
// overhead) / target CTAs (double: batch x length x head CTAs can pass 2^63 in principle).
double ShareTokens(std::span<const int32_t> kv_len, int64_t chunk, int64_t overhead,
                   int64_t head_ctas, int64_t target) {
  double work = 0;
  for (int32_t len : kv_len) work += static_cast<double>(len) + overhead * ChunksOf(len, chunk);
  return work * static_cast<double>(head_ctas) / static_cast<double>(target);
}

}  // namespace

int DecodeHeadTile(int group) {
  if (group <= 1) return 1;
  if (group <= 2) return 2;
  if (group <= 4) return 4;
  return 8;  // groups > 8 take several CTAs per KV head
}

bool UseTensorCoreDecode(DecodeScheduleOptions::Kernel kernel, int32_t group, bool tc_built) {
  using Kernel = DecodeScheduleOptions::Kernel;
  return kernel == Kernel::kTensorCores || (kernel == Kernel::kAuto && group >= 4 && tc_built);
}

bool NeedsDeviceFill(const DecodeScheduleOptions& options) {
  return options.fixed_chunk_tokens <= 0 && options.allow_split;
}

absl::StatusOr<DecodeSchedule> PlanDecodeSchedule(std::span<const int32_t> kv_len,
                                                  int64_t head_ctas, int32_t page_size,
                                                  const DecodeScheduleOptions& options,
                                                  const DeviceFill& fill, int64_t max_items) {
  if (kv_len.empty()) return absl::InvalidArgumentError("decode: empty batch");
  if (max_items > 0 && max_items < static_cast<int64_t>(kv_len.size())) {
    return absl::InvalidArgumentError(absl::StrCat("decode: batch of ", kv_len.size(),
                                                   " requests over the capacity of ", max_items,
                                                   " work items"));
  }
  const int64_t batch = static_cast<int64_t>(kv_len.size());
  const int64_t granule = std::max<int64_t>(16, page_size);
  int64_t chunk = 0;  // 0 = no split
  bool balanced = false;
  const int32_t max_len = *std::max_element(kv_len.begin(), kv_len.end());
  if (options.fixed_chunk_tokens > 0) {
    chunk = options.fixed_chunk_tokens;
  } else if (options.allow_split) {
    const int64_t target = TargetCtas(fill, options.waves);
    if (batch * head_ctas < target) {
      // The smallest chunk (a multiple of the granule) whose grid still fits the waves.
      chunk = SmallestFittingChunk(options.min_chunk_tokens, max_len, granule, [&](int64_t c) {
        return CountChunks(kv_len, c) * head_ctas <= target;
      });
    } else if (options.balance) {
      // The grid fills the waves; what can still leave SMs idle is a CTA much longer than the
      // even share (a long request among short ones). Cut to about the share.
      const int64_t overhead = std::max<int32_t>(0, options.cta_overhead_tokens);
      const auto share = [&](int64_t c) {
        return ShareTokens(kv_len, c, overhead, head_ctas, target);
      };
      const int64_t c = SmallestFittingChunk(options.min_chunk_tokens, max_len, granule,
                                             [&](int64_t c) { return c + overhead >= share(c); });
      const double unsplit = std::max<double>(max_len + overhead, share(0));
      const double cut = std::max<double>(std::min<int64_t>(c, max_len) + overhead, share(c));
      if (c < max_len && unsplit > kMinBalanceGain * cut) {
        chunk = c;
        balanced = true;
      }
    }
    if (chunk >= max_len) chunk = 0;
  }
  // A fixed capacity of items: coarser chunks until they fit (at chunk >= max_len: one per
  // request, which fits since max_items >= batch).
  while (max_items > 0 && chunk > 0 && CountChunks(kv_len, chunk) > max_items) {
    chunk = (2 * chunk + granule - 1) / granule * granule;
    if (chunk >= max_len) chunk = 0;
  }

  DecodeSchedule s;
  s.chunk_tokens = static_cast<int32_t>(chunk);
  s.balanced = balanced;
  s.chunk_indptr.assign(1, 0);
  for (int32_t b = 0; b < static_cast<int32_t>(batch); ++b) {
    const int32_t len = kv_len[b];
    if (chunk == 0 || len <= chunk) {
      s.items.push_back({b, 0, len, -1});
    } else {
      s.split = true;
      for (int64_t start = 0; start < len; start += chunk) {
        s.items.push_back({b, static_cast<int32_t>(start),
                           static_cast<int32_t>(std::min<int64_t>(len, start + chunk)),
                           static_cast<int32_t>(s.items.size())});
      }
    }
    s.chunk_indptr.push_back(static_cast<int32_t>(s.items.size()));
  }
  // The grid is [num_items * head_ctas] (one dimension: the hardware's dispatch order).
  if (static_cast<int64_t>(s.items.size()) * head_ctas > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("decode: too many CTAs (", s.items.size(),
                                                   " work items x ", head_ctas,
                                                   " head CTAs > 2^31 - 1)"));
  }
  if (options.balance) {
    // Longest first (LPT): the long chunks start while the short ones fill the rest of the SMs.
    std::stable_sort(s.items.begin(), s.items.end(),
                     [](const DecodeWorkItem& a, const DecodeWorkItem& b) {
                       return a.chunk_end - a.chunk_start > b.chunk_end - b.chunk_start;
                     });
  }
  return s;
}

int64_t GraphItemCapacity(int64_t max_batch, int64_t head_ctas,
                          const DecodeScheduleOptions& options, const DeviceFill& fill) {
  if (!NeedsDeviceFill(options)) return options.allow_split ? 2 * max_batch : max_batch;
  const int64_t per_wave = (TargetCtas(fill, options.waves) + head_ctas - 1) / head_ctas;
  return 2 * max_batch + per_wave;
}

DecodeWorkspaceLayout LayoutDecodeWorkspace(size_t items, size_t batch, bool partial_states,
                                            int32_t num_qo_heads, int32_t head_dim) {
  const size_t items_bytes = AlignWorkspace(items * sizeof(DecodeWorkItem));
  const size_t indptr_bytes = AlignWorkspace((batch + 1) * sizeof(int32_t));
  const size_t counts_bytes = AlignWorkspace(2 * sizeof(int32_t));
  const size_t rows = partial_states ? items * static_cast<size_t>(num_qo_heads) : 0;
  const size_t lse_bytes = AlignWorkspace(rows * sizeof(float));
  const size_t o_bytes = AlignWorkspace(rows * static_cast<size_t>(head_dim) * sizeof(float));
  DecodeWorkspaceLayout l;
  l.items = 0;
  l.chunk_indptr = items_bytes;
  l.live_counts = l.chunk_indptr + indptr_bytes;
  l.upload_bytes = l.live_counts + counts_bytes;
  l.partial_lse = l.upload_bytes;
  l.partial_o = l.partial_lse + lse_bytes;
  l.total_bytes = l.partial_o + o_bytes;
  return l;
}

}  // namespace attnd::kernels::cuda::internal
