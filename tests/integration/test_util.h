// Shared helpers of the integration tests: status assertions, a prefill/decode workload that
// checks every output against the float64 reference, and a Prometheus text parser.
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnd/client/attnd_client.h"
#include "gtest/gtest.h"

namespace attnd::testing {

namespace v1 = ::attnd::v1;

#define ATTND_ASSERT_OK(expr)                                        \
  do {                                                               \
    const ::absl::Status attnd_status_ = ::attnd::testing::ToStatus(expr); \
    ASSERT_TRUE(attnd_status_.ok()) << #expr << ": " << attnd_status_;     \
  } while (0)

#define ATTND_EXPECT_OK(expr)                                        \
  do {                                                               \
    const ::absl::Status attnd_status_ = ::attnd::testing::ToStatus(expr); \
    EXPECT_TRUE(attnd_status_.ok()) << #expr << ": " << attnd_status_;     \
  } while (0)

inline absl::Status ToStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// Success iff `status` has `code` and its message contains every one of `substrings`.
::testing::AssertionResult StatusIs(const absl::Status& status, absl::StatusCode code,
                                    const std::vector<std::string>& substrings = {});
template <typename T>
::testing::AssertionResult StatusIs(const absl::StatusOr<T>& s, absl::StatusCode code,
                                    const std::vector<std::string>& substrings = {}) {
  return StatusIs(s.status(), code, substrings);
}

// The model of a test pool.
struct ModelShape {
  int layers = 2;
  int kv_heads = 2;
  int qo_heads = 8;
  int head_dim = 64;
  int page_size = 16;
  v1::DType kv_dtype = v1::DTYPE_FLOAT16;
  v1::DType q_dtype = v1::DTYPE_FLOAT16;
  int64_t num_pages = 64;
};

client::PoolSpec MakePoolSpec(const ModelShape& shape, const std::string& name);

// In `session`: a pool `name` of `shape`, `num_pages` pages of it, and a decode plan of one
// request over those pages (kv_last_page_len 3).
struct DecodePlan {
  std::string pool_id;
  std::vector<int32_t> page_ids;
  client::PlanSpec spec;
  std::string plan_id;
};
absl::StatusOr<DecodePlan> CreateDecodePlan(client::SessionApi& session, const ModelShape& shape,
                                            const std::string& name, int num_pages = 1);

// Random values in [-1, 1], rounded to `dtype`.
std::vector<float> RandomValues(std::mt19937& rng, size_t count, v1::DType dtype);

// Drives sequences of one pool through a session: allocates pages, prefills (K/V appended by the
// run, causal), decodes; every output row (o and lse) is compared with the float64 reference over
// the K/V this object sent. A mismatch is returned as an INTERNAL error describing it.
class Workload {
 public:
  struct Sequence {
    std::vector<int32_t> pages;
    int len = 0;
    std::vector<std::vector<float>> k, v;  // per layer: [len][kv_heads][head_dim]
  };

  Workload(client::SessionApi* session, ModelShape shape, std::string pool_id, uint32_t seed,
           double tolerance = 5e-3);

  // Adds sequences of the given lengths and prefills them in one batch.
  absl::Status Prefill(const std::vector<int>& lens);
  // One new token for every sequence.
  absl::Status DecodeStep();
  // Frees every page held by the sequences.
  absl::Status FreeAll();

  const std::vector<Sequence>& sequences() const { return seqs_; }
  std::vector<int32_t> AllPages() const;
  double max_o_error() const { return max_o_error_; }
  double max_lse_error() const { return max_lse_error_; }
  const std::string& pool_id() const { return pool_id_; }
  // The page table of the given sequences (all of them by default) at their current lengths.
  client::PlanSpec PlanFor(v1::AttentionKind kind, const std::vector<int>& seq_ids,
                           const std::vector<int>& qo_lens) const;

 private:
  // One Run per layer for rows (row_seq[r], visible keys [0, row_last[r]]).
  absl::Status RunLayers(const std::string& plan_id, const std::vector<int>& row_seq,
                         const std::vector<int>& row_last, bool causal);

  client::SessionApi* session_;
  ModelShape shape_;
  std::string pool_id_;
  std::mt19937 rng_;
  double tolerance_;
  std::vector<Sequence> seqs_;
  double max_o_error_ = 0;
  double max_lse_error_ = 0;
};

// One sample of a Prometheus text exposition.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<MetricSample> ParsePrometheusText(const std::string& text);
// Sum of the samples named `name` whose labels include every pair of `match`.
double SumMetric(const std::vector<MetricSample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& match = {});
// GET http://127.0.0.1:port/path -> (status, body).
absl::StatusOr<std::pair<int, std::string>> HttpGet(int port, const std::string& path);

}  // namespace attnd::testing
