// The split-KV decode schedule (decode_schedule.h).
#include "planning/decode_schedule.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"

namespace attnd::kernels::cuda::internal {
namespace {

// Work items of a schedule with chunks of `chunk` tokens (a request gets at least one).
int64_t CountChunks(std::span<const int32_t> kv_len, int64_t chunk) {
  int64_t n = 0;
  for (int32_t len : kv_len) n += std::max<int64_t>(1, (len + chunk - 1) / chunk);
  return n;
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
                                                  const DeviceFill& fill) {
  if (kv_len.empty()) return absl::InvalidArgumentError("decode: empty batch");
  const int64_t batch = static_cast<int64_t>(kv_len.size());
  int64_t chunk = 0;  // 0 = no split
  const int32_t max_len = *std::max_element(kv_len.begin(), kv_len.end());
  if (options.fixed_chunk_tokens > 0) {
    chunk = options.fixed_chunk_tokens;
  } else if (options.allow_split) {
    const int64_t target = TargetCtas(fill, options.waves);
    if (batch * head_ctas < target) {
      // The smallest chunk (a multiple of the granule) whose grid still fits the waves.
      chunk = SmallestFittingChunk(
          options.min_chunk_tokens, max_len, std::max<int64_t>(16, page_size),
          [&](int64_t c) { return CountChunks(kv_len, c) * head_ctas <= target; });
      if (chunk >= max_len) chunk = 0;
    }
  }

  DecodeSchedule s;
  s.chunk_tokens = static_cast<int32_t>(chunk);
  s.chunk_indptr.assign(1, 0);
  for (int32_t b = 0; b < static_cast<int32_t>(batch); ++b) {
    const int32_t len = kv_len[b];
    if (chunk == 0 || len <= chunk) {
      s.items.push_back({b, 0, len, 0});
    } else {
      s.split = true;
      for (int64_t start = 0; start < len; start += chunk) {
        s.items.push_back({b, static_cast<int32_t>(start),
                           static_cast<int32_t>(std::min<int64_t>(len, start + chunk)), 1});
      }
    }
    s.chunk_indptr.push_back(static_cast<int32_t>(s.items.size()));
  }
  if (s.items.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("decode: too many work items");
  }
  return s;
}

DecodeWorkspaceLayout LayoutDecodeWorkspace(const DecodeSchedule& schedule, int32_t num_qo_heads,
                                            int32_t head_dim) {
  const size_t n_items = schedule.items.size();
  const size_t items_bytes = AlignWorkspace(n_items * sizeof(DecodeWorkItem));
  const size_t indptr_bytes = AlignWorkspace(schedule.chunk_indptr.size() * sizeof(int32_t));
  const size_t rows = schedule.split ? n_items * static_cast<size_t>(num_qo_heads) : 0;
  const size_t lse_bytes = AlignWorkspace(rows * sizeof(float));
  const size_t o_bytes = AlignWorkspace(rows * static_cast<size_t>(head_dim) * sizeof(float));
  DecodeWorkspaceLayout l;
  l.items = 0;
  l.chunk_indptr = items_bytes;
  l.partial_lse = items_bytes + indptr_bytes;
  l.partial_o = l.partial_lse + lse_bytes;
  l.total_bytes = l.partial_o + o_bytes;
  return l;
}

}  // namespace attnd::kernels::cuda::internal
