// What the split-KV schedules of decode (decode_schedule.h) and prefill (prefill_tiling.h) share:
// the device facts they fill (the kernel families resolve them on the device, decode.cc and
// prefill.cu; the CPU tests make them up), the grid they aim at, the search for the chunk size, and
// the alignment of the sections of a plan's workspace.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace attnd::kernels::cuda::internal {

// SMs and resident CTAs per SM of the chosen kernel.
struct DeviceFill {
  int32_t num_sms = 1;
  int32_t ctas_per_sm = 1;
};

// The grid a split aims at: `waves` waves of resident CTAs (at least one CTA).
inline int64_t TargetCtas(const DeviceFill& fill, float waves) {
  return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(fill.num_sms) *
                                                   fill.ctas_per_sm * std::max(0.01f, waves)));
}

// The smallest chunk, a multiple of `granule` of at least min_tokens (rounded up) and at most
// max_len (rounded up), for which fits(chunk) holds: the grid still fits the waves, so all CTAs run
// at once, and fewer, longer chunks merge less. fits must be monotone (true from some chunk on);
// when it never holds, the largest candidate.
template <typename Fits>
int64_t SmallestFittingChunk(int64_t min_tokens, int64_t max_len, int64_t granule, Fits fits) {
  const int64_t lo = std::max<int64_t>(granule, (min_tokens + granule - 1) / granule * granule);
  const int64_t hi = std::max<int64_t>(lo, (max_len + granule - 1) / granule * granule);
  int64_t a = lo / granule, z = hi / granule;  // binary search over multiples of the granule
  while (a < z) {
    const int64_t mid = (a + z) / 2;
    if (fits(mid * granule)) {
      z = mid;
    } else {
      a = mid + 1;
    }
  }
  return a * granule;
}

// Chunks of a request of kv_len keys cut into chunks of `chunk` (<= 0: not cut; at least one).
inline int64_t ChunksOf(int64_t kv_len, int64_t chunk) {
  return chunk > 0 ? std::max<int64_t>(1, (kv_len + chunk - 1) / chunk) : 1;
}

// Sections of a plan's one device allocation start 256-byte aligned.
inline size_t AlignWorkspace(size_t bytes) {
  constexpr size_t kAlign = 256;
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

}  // namespace attnd::kernels::cuda::internal
