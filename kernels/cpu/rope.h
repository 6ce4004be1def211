// RoPE, LLaMA "rotate half" convention (non-interleaved): for i < D/2,
//   inv_freq_i = theta^(-2i/D),  angle = (position / scale) * inv_freq_i,
//   x'[i]       = x[i] * cos(angle) - x[i + D/2] * sin(angle)
//   x'[i + D/2] = x[i + D/2] * cos(angle) + x[i] * sin(angle)
// Angles, sin/cos and the rotation are computed in float64 (positions reach 10^5 and more, where
// a float32 angle is off by ~10^-2 rad); the result is rounded to float once.
//
// Precompute() tabulates cos/sin for a range of positions once per call (every key is rotated
// once per kv head and query tile, so computing sin/cos on the fly dominated the run time);
// table entries hold exactly the values Rotate would compute, so results do not change.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "parallel_for.h"

namespace attnd::kernels::cpu {

class RopeLlama {
 public:
  // Largest table, in (cos, sin) pairs: 4M pairs = 64 MiB.
  static constexpr int64_t kMaxTablePairs = int64_t{1} << 22;

  RopeLlama(int head_dim, float theta, float scale) : half_dim_(head_dim / 2), scale_(scale) {
    inv_freq_.resize(static_cast<size_t>(half_dim_));
    for (int i = 0; i < half_dim_; ++i) {
      inv_freq_[i] = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
    }
  }

  // Tabulates positions [first, last] unless the table would exceed kMaxTablePairs (positions
  // outside the table are computed on the fly).
  absl::Status Precompute(int64_t first, int64_t last, int num_threads) {
    if (last < first || half_dim_ == 0 || (last - first + 1) > kMaxTablePairs / half_dim_) {
      return absl::OkStatus();
    }
    const int64_t size = last - first + 1;
    table_.resize(static_cast<size_t>(size * half_dim_ * 2));  // may throw; then no table is set
    table_first_ = first;
    table_size_ = size;
    constexpr int64_t kPositionsPerTask = 256;
    return ParallelFor((table_size_ + kPositionsPerTask - 1) / kPositionsPerTask, num_threads, [&]() {
      return [&](int64_t task) {
        const int64_t end = std::min(table_size_, (task + 1) * kPositionsPerTask);
        for (int64_t p = task * kPositionsPerTask; p < end; ++p) {
          CosSin(first + p, &table_[static_cast<size_t>(p * half_dim_ * 2)]);
        }
      };
    });
  }

  // Rotates x (head_dim floats) in place to `position`.
  void Rotate(float* x, int64_t position) const {
    const int64_t row = position - table_first_;
    if (row >= 0 && row < table_size_) {
      Apply(x, &table_[static_cast<size_t>(row * half_dim_ * 2)]);
      return;
    }
    std::vector<double> cos_sin(static_cast<size_t>(half_dim_) * 2);
    CosSin(position, cos_sin.data());
    Apply(x, cos_sin.data());
  }

 private:
  // out[2i] = cos(angle_i), out[2i + 1] = sin(angle_i).
  void CosSin(int64_t position, double* out) const {
    const double scaled_position = static_cast<double>(position) / scale_;
    for (int i = 0; i < half_dim_; ++i) {
      const double angle = scaled_position * inv_freq_[i];
      out[2 * i] = std::cos(angle);
      out[2 * i + 1] = std::sin(angle);
    }
  }

  void Apply(float* x, const double* cos_sin) const {
    for (int i = 0; i < half_dim_; ++i) {
      const double c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
      const double lo = x[i], hi = x[i + half_dim_];
      x[i] = static_cast<float>(lo * c - hi * s);
      x[i + half_dim_] = static_cast<float>(hi * c + lo * s);
    }
  }

  int half_dim_;
  double scale_;
  std::vector<double> inv_freq_;
  int64_t table_first_ = 0;
  int64_t table_size_ = 0;
  std::vector<double> table_;  // [table_size_][half_dim_][cos, sin]
};

}  // namespace attnd::kernels::cpu
