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
