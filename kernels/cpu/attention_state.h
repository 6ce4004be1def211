// The online-softmax state of one query row (one head) over a subset of the keys.
//
//   m    = max_j s_j                         (running maximum of the logits seen so far)
//   d    = sum_j exp(s_j - m)                (softmax denominator, relative to m)
//   o[:] = sum_j exp(s_j - m) * v_j[:]       (unnormalized output, head_dim floats)
//
// Empty (no key seen): m = -inf, d = 0, o = 0; its LSE is -inf and its output 0. Two states over
// disjoint key sets merge into the state over their union, which is what the blockwise kernel,
// split-KV merging and MergeStates all do. A NaN logit or NaN LSE poisons the state (d = NaN), so
// a NaN in the inputs always reaches the outputs instead of vanishing in a max().
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace attnd::kernels::cpu {

class AttentionState {
 public:
  explicit AttentionState(int head_dim = 0) : o_(static_cast<size_t>(head_dim), 0.f) {}

  int head_dim() const { return static_cast<int>(o_.size()); }
  bool empty() const { return m_ == -kInf && !std::isnan(d_); }
  float m() const { return m_; }
  float d() const { return d_; }

  void Reset() {
    m_ = -kInf;
    d_ = 0.f;
    for (float& x : o_) x = 0.f;
  }

  // Adds n keys: logit logits[j] (-inf = masked, skipped) and value row values + j*value_stride.
  void AddKeys(const float* logits, const float* values, int n, int64_t value_stride) {
    float block_max = -kInf;
    for (int j = 0; j < n; ++j) {
      if (std::isnan(logits[j])) return Poison();
      if (logits[j] > block_max) block_max = logits[j];
    }
    if (block_max == -kInf) return;  // every key masked
    RescaleTo(block_max);
    const int dim = head_dim();
    float* o = o_.data();
    for (int j = 0; j < n; ++j) {
      if (logits[j] == -kInf) continue;  // masked: contributes nothing, even with inf/NaN in v
      const float p = std::exp(logits[j] - m_);
      d_ += p;
      const float* v = values + j * value_stride;
      for (int k = 0; k < dim; ++k) o[k] += p * v[k];
    }
  }

  // Folds in a logit with no value (an attention sink, AttentionOptions::sinks): the softmax's
  // denominator grows by exp(sink - m), o does not. Applied once, after every key, so that the
  // state is that of the whole softmax: lse() includes the sink, and a row with no visible key
  // gets o = 0, lse = sink. A NaN sink poisons the state.
  void AddSink(float sink) {
    if (std::isnan(sink)) return Poison();
    if (std::isnan(d_)) return;
    RescaleTo(sink);
    d_ += std::exp(sink - m_);
  }

  // Merges another state over a disjoint set of keys.
  void Merge(const AttentionState& other) {
    if (std::isnan(other.d_)) return Poison();
    if (other.m_ == -kInf) return;
    MergeScaled(other.o_.data(), other.m_, other.d_);
  }

  // Merges a state given in normalized form: v = o/d (head_dim floats) and lse = m + log(d).
  // lse = -inf is an empty state and contributes nothing.
  void MergeNormalized(const float* v, float lse) {
    if (std::isnan(lse)) return Poison();
    if (lse == -kInf) return;
    MergeScaled(v, lse, 1.f);
  }

  // Natural-log sum of exp of the logits seen: m + log(d); -inf when empty.
  float lse() const {
    if (std::isnan(d_)) return d_;
    if (m_ == -kInf) return -kInf;
    return m_ + std::log(d_);
  }

  // Writes o/d (head_dim floats); zeros when empty.
  void WriteNormalized(float* out) const {
    const int dim = head_dim();
    if (m_ == -kInf && !std::isnan(d_)) {
      for (int k = 0; k < dim; ++k) out[k] = 0.f;
      return;
    }
    const float inv_d = 1.f / d_;
    for (int k = 0; k < dim; ++k) out[k] = o_[k] * inv_d;
  }

 private:
  static constexpr float kInf = std::numeric_limits<float>::infinity();

  // Raises the reference maximum to max(m, candidate), rescaling d and o accordingly.
  void RescaleTo(float candidate) {
    if (candidate <= m_) return;
    if (m_ != -kInf) {
      const float scale = std::exp(m_ - candidate);
      d_ *= scale;
      for (float& x : o_) x *= scale;
    }
    m_ = candidate;
  }

  // Adds the state (o_other relative to m_other, d_other), m_other finite.
  void MergeScaled(const float* o_other, float m_other, float d_other) {
    RescaleTo(m_other);
    const float scale = std::exp(m_other - m_);
    d_ += d_other * scale;
    const int dim = head_dim();
    for (int k = 0; k < dim; ++k) o_[k] += o_other[k] * scale;
  }

  void Poison() {
    d_ = std::numeric_limits<float>::quiet_NaN();
    for (float& x : o_) x = d_;
  }

  float m_ = -kInf;
  float d_ = 0.f;
  std::vector<float> o_;
};

}  // namespace attnd::kernels::cpu
