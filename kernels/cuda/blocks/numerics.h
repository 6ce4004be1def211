// The parameters of the numerics every attnd attention kernel shares (rope.cuh, variant.cuh,
// softmax_state.cuh), and the
// host functions that resolve them from AttentionOptions: one definition of the softmax scale,
// the soft cap, the base-2 logit domain and the RoPE frequencies, used by decode (CUDA cores and
// tensor cores) and prefill/append alike. Host and device code (plain structs, no intrinsics).
// Why they look the way they do: NUMERICS.md.
#pragma once

#include <cmath>
#include <cstdint>

#include "attnd/kernels/types.h"

namespace attnd::kernels::cuda::internal {

// RoPE frequency of one dimension pair, inv_freq_i / rope_scale = theta^(-2i/D) / scale,
// computed in float64 on the host and split into hi + lo floats, so that angles at positions
// ~1e5 keep ~1e-7 rad accuracy (a float product alone is off by ~1e-2 rad there).
struct RopeFreq {
  float hi;
  float lo;
};
inline constexpr int kMaxRopePairs = 128;  // head_dim <= 256

// freq[i] for the head_dim / 2 pairs (the same table as the CPU reference's float64 angles).
inline void FillRopeFreqs(const AttentionOptions& o, int32_t head_dim, RopeFreq* freq) {
  for (int32_t i = 0; i < head_dim / 2 && i < kMaxRopePairs; ++i) {
    const double f = std::pow(static_cast<double>(o.rope_theta), -2.0 * i / head_dim) /
                     static_cast<double>(o.rope_scale);
    freq[i].hi = static_cast<float>(f);
    freq[i].lo = static_cast<float>(f - static_cast<double>(freq[i].hi));
  }
}

// Raw logit r = q . k (unscaled; q and k rotated when RoPE is on) -> base-2 logit
//   l2 = post * (soft_cap ? tanh(r * pre) : r)
// which is log2(e) * s for the reference's s = r * sm_scale, or s = cap * tanh(r * sm_scale / cap)
// with a soft cap. Softmax states keep m in this base-2 domain (p = 2^(l2 - m)); LSE converts
// back to the natural log once, at the end (LseFromBase2). Kernels that fold `post` into their
// exp2 argument apply CapLogit, take the row max of it and scale the max (post > 0 keeps order).
struct LogitScale {
  float pre = 1.f;       // soft cap: sm_scale / cap
  float post = 0.f;      // sm_scale * log2(e), or cap * log2(e) with a soft cap
  int32_t soft_cap = 0;  // 1: tanh cap
};

// sm_scale = options.sm_scale, or 1/sqrt(head_dim) when 0 (as the CPU reference).
inline LogitScale MakeLogitScale(const AttentionOptions& o, int32_t head_dim) {
  constexpr double kLog2e = 1.4426950408889634;
  const double sm_scale = o.sm_scale != 0.f ? static_cast<double>(o.sm_scale)
                                            : static_cast<double>(static_cast<float>(
                                                  1.0 / std::sqrt(static_cast<double>(head_dim))));
  LogitScale s;
  if (o.logits_soft_cap > 0.f) {
    s.soft_cap = 1;
    s.pre = static_cast<float>(sm_scale / o.logits_soft_cap);
    s.post = static_cast<float>(o.logits_soft_cap * kLog2e);
  } else {
    s.post = static_cast<float>(sm_scale * kLog2e);
  }
  return s;
}

}  // namespace attnd::kernels::cuda::internal
