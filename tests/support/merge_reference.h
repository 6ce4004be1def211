// The float64 merge of attention states: the oracle of the merge tests (the CPU reference's
// MergeStates, Core's MergeState / MergeStates, the wire). Over the states i of one (row, head):
//   s = ln(sum_i exp(s_i)),  v = sum_i exp(s_i - s) v_i;
// a state with s_i = -inf weighs 0 and its v is never read (inf or NaN there do not count); no
// finite state: v = 0, s = -inf.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace attnd::test_support {

struct MergedStates {
  std::vector<double> v;  // [cells][dim]
  std::vector<double> s;  // [cells]
};

// v: [cells][states][dim], s: [cells][states] (a cell is one row and head).
template <typename V, typename S>
MergedStates NaiveMergeStates(const std::vector<V>& v, const std::vector<S>& s, size_t cells,
                              size_t states, size_t dim) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  MergedStates m{std::vector<double>(cells * dim, 0.0), std::vector<double>(cells, -kInf)};
  for (size_t c = 0; c < cells; ++c) {
    double max = -kInf;
    for (size_t i = 0; i < states; ++i) max = std::max<double>(max, s[c * states + i]);
    if (max == -kInf) continue;
    double sum = 0;
    for (size_t i = 0; i < states; ++i)
      sum += std::exp(static_cast<double>(s[c * states + i]) - max);
    m.s[c] = max + std::log(sum);
    for (size_t i = 0; i < states; ++i) {
      if (static_cast<double>(s[c * states + i]) == -kInf) continue;
      const double w = std::exp(static_cast<double>(s[c * states + i]) - max) / sum;
      for (size_t d = 0; d < dim; ++d) {
        m.v[c * dim + d] += w * static_cast<double>(v[(c * states + i) * dim + d]);
      }
    }
  }
  return m;
}

// The same states given as one [cells][dim] tensor and one [cells] LSE vector per state (the
// pair form of MergeState: {v_a, v_b}, {s_a, s_b}), interleaved for NaiveMergeStates.
template <typename V, typename S>
MergedStates NaiveMergeStateList(const std::vector<std::vector<V>>& v,
                                 const std::vector<std::vector<S>>& s, size_t cells, size_t dim) {
  const size_t states = s.size();
  std::vector<double> vi(cells * states * dim), si(cells * states);
  for (size_t c = 0; c < cells; ++c) {
    for (size_t i = 0; i < states; ++i) {
      si[c * states + i] = static_cast<double>(s[i][c]);
      for (size_t d = 0; d < dim; ++d) {
        vi[(c * states + i) * dim + d] = static_cast<double>(v[i][c * dim + d]);
      }
    }
  }
  return NaiveMergeStates(vi, si, cells, states, dim);
}

// Every element of a merge's output within tol * (1 + |expected|) of the float64 merge; -inf
// (an empty result's s) exactly.
inline void ExpectMergedClose(const std::vector<float>& actual, const std::vector<double>& expected,
                              double tol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (expected[i] == -std::numeric_limits<double>::infinity()) {
      EXPECT_EQ(actual[i], -std::numeric_limits<float>::infinity()) << what << " [" << i << "]";
    } else {
      EXPECT_NEAR(actual[i], expected[i], tol * (1 + std::fabs(expected[i])))
          << what << " [" << i << "]";
    }
  }
}

}  // namespace attnd::test_support
