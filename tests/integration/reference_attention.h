// A float64 attention reference for the integration tests: plain loops, no shared code with the
// daemon. Keys/values of one sequence are [len][num_kv_heads][head_dim] floats (already rounded
// to the storage dtype), a query row is [num_qo_heads][head_dim].
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace attnd::testing {

struct ReferenceShape {
  int num_qo_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Attention of one query row over keys [first, last] (inclusive) of a sequence, softmax scale
// `sm_scale` (0 = 1/sqrt(head_dim)). o_row: [num_qo_heads][head_dim], lse: [num_qo_heads]
// (natural log). An empty range gives o = 0 and lse = -inf.
inline void ReferenceAttentionRow(const ReferenceShape& shape, const float* q_row,
                                  const std::vector<float>& k, const std::vector<float>& v,
                                  int first, int last, double sm_scale, double* o_row,
                                  double* lse) {
  const int d_count = shape.head_dim;
  const double scale = sm_scale > 0 ? sm_scale : 1.0 / std::sqrt(static_cast<double>(d_count));
  const int group = shape.num_qo_heads / shape.num_kv_heads;
  for (int h = 0; h < shape.num_qo_heads; ++h) {
    double* o = o_row + static_cast<size_t>(h) * d_count;
    std::fill(o, o + d_count, 0.0);
    if (last < first) {
      lse[h] = -INFINITY;
      continue;
    }
    const int kv_head = h / group;
    std::vector<double> logits(static_cast<size_t>(last - first + 1));
    double max_logit = -INFINITY;
    for (int j = first; j <= last; ++j) {
      const float* key = &k[(static_cast<size_t>(j) * shape.num_kv_heads + kv_head) * d_count];
      const float* q = q_row + static_cast<size_t>(h) * d_count;
      double dot = 0;
      for (int d = 0; d < d_count; ++d) dot += static_cast<double>(q[d]) * key[d];
      logits[j - first] = dot * scale;
      max_logit = std::max(max_logit, logits[j - first]);
    }
    double sum = 0;
    for (double s : logits) sum += std::exp(s - max_logit);
    for (int j = first; j <= last; ++j) {
      const double p = std::exp(logits[j - first] - max_logit) / sum;
      const float* value = &v[(static_cast<size_t>(j) * shape.num_kv_heads + kv_head) * d_count];
      for (int d = 0; d < d_count; ++d) o[d] += p * value[d];
    }
    lse[h] = max_logit + std::log(sum);
  }
}

}  // namespace attnd::testing

namespace attnd::testing {

// The attention variants of AttentionOptions, as the wire API and the shared semantics define
// them (see DESIGN / helper brief): scaled logits, optional soft cap, causal / sliding-window
// masks, LLaMA "rotate half" RoPE applied on the fly to q and (unrotated, stored) k.
struct ReferenceOptions {
  double sm_scale = 0;      // 0 = 1/sqrt(head_dim)
  bool causal = false;      // a query at position p sees keys <= p
  double soft_cap = 0;      // > 0: s = cap * tanh(s / cap)
  int window_left = -1;     // >= 0: keys >= p - window_left
  bool rope = false;
  double rope_theta = 1e4;
  double rope_scale = 1;
  int rope_offset = 0;      // added to q and k positions
};

// x (head_dim values) rotated to position `pos`, in double.
inline std::vector<double> RopeRotate(const float* x, int head_dim, double pos,
                                      const ReferenceOptions& o) {
  std::vector<double> out(x, x + head_dim);
  if (!o.rope) return out;
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(o.rope_theta, -2.0 * i / head_dim);
    const double angle = (pos / o.rope_scale) * freq;
    const double c = std::cos(angle), s = std::sin(angle);
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  return out;
}

// One query row at kv position `q_pos` over keys [0, kv_len) with the variant options.
// o_row: [num_qo_heads][head_dim], lse: [num_qo_heads]; no visible key -> o = 0, lse = -inf.
inline void ReferenceAttentionVariant(const ReferenceShape& shape, const float* q_row, int q_pos,
                                      const std::vector<float>& k, const std::vector<float>& v,
                                      int kv_len, const ReferenceOptions& opt, double* o_row,
                                      double* lse) {
  const int dim = shape.head_dim;
  const double scale = opt.sm_scale > 0 ? opt.sm_scale : 1.0 / std::sqrt(static_cast<double>(dim));
  const int group = shape.num_qo_heads / shape.num_kv_heads;
  for (int h = 0; h < shape.num_qo_heads; ++h) {
    const int kv_head = h / group;
    const std::vector<double> q =
        RopeRotate(q_row + static_cast<size_t>(h) * dim, dim, q_pos + opt.rope_offset, opt);
    std::vector<double> logits;
    std::vector<int> keys;
    for (int j = 0; j < kv_len; ++j) {
      if (opt.causal && j > q_pos) continue;
      if (opt.window_left >= 0 && j < q_pos - opt.window_left) continue;
      const std::vector<double> key = RopeRotate(
          &k[(static_cast<size_t>(j) * shape.num_kv_heads + kv_head) * dim], dim,
          j + opt.rope_offset, opt);
      double dot = 0;
      for (int d = 0; d < dim; ++d) dot += q[d] * key[d];
      double s = dot * scale;
      if (opt.soft_cap > 0) s = opt.soft_cap * std::tanh(s / opt.soft_cap);
      logits.push_back(s);
      keys.push_back(j);
    }
    double* o = o_row + static_cast<size_t>(h) * dim;
    std::fill(o, o + dim, 0.0);
    if (keys.empty()) {
      lse[h] = -INFINITY;
      continue;
    }
    const double max_logit = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double s : logits) sum += std::exp(s - max_logit);
    for (size_t n = 0; n < keys.size(); ++n) {
      const double p = std::exp(logits[n] - max_logit) / sum;
      const float* value = &v[(static_cast<size_t>(keys[n]) * shape.num_kv_heads + kv_head) * dim];
      for (int d = 0; d < dim; ++d) o[d] += p * value[d];
    }
    lse[h] = max_logit + std::log(sum);
  }
}

}  // namespace attnd::testing
