// RoPE, LLaMA "rotate half" convention (non-interleaved): for i < D/2,
//   inv_freq_i = theta^(-2i/D),  angle = (position / scale) * inv_freq_i,
//   x'[i]       = x[i] * cos(angle) - x[i + D/2] * sin(angle)
//   x'[i + D/2] = x[i + D/2] * cos(angle) + x[i] * sin(angle)
// Angles, sin/cos and the rotation are computed in float64 (positions reach 10^5 and more, where
// a float32 angle is off by ~10^-2 rad); the result is rounded to float once.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace attnd::kernels::cpu {

class RopeLlama {
 public:
  RopeLlama(int head_dim, float theta, float scale) : half_dim_(head_dim / 2), scale_(scale) {
    inv_freq_.resize(static_cast<size_t>(half_dim_));
    for (int i = 0; i < half_dim_; ++i) {
      inv_freq_[i] = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
    }
  }

  // Rotates x (head_dim floats) in place to `position`.
  void Rotate(float* x, int64_t position) const {
    const double scaled_position = static_cast<double>(position) / scale_;
    for (int i = 0; i < half_dim_; ++i) {
      const double angle = scaled_position * inv_freq_[i];
      const double c = std::cos(angle), s = std::sin(angle);
      const double lo = x[i], hi = x[i + half_dim_];
      x[i] = static_cast<float>(lo * c - hi * s);
      x[i + half_dim_] = static_cast<float>(hi * c + lo * s);
    }
  }

 private:
  int half_dim_;
  double scale_;
  std::vector<double> inv_freq_;
};

}  // namespace attnd::kernels::cpu
