#include "server/front/metrics.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "prometheus_text_parser.h"
#include "server/front/prometheus_text.h"

namespace attnd::server::front {
namespace {

using testing::ParseExposition;
using testing::ParsedExposition;

ParsedExposition RenderAndParse(const Metrics& metrics, const MetricsSnapshot& snapshot = {}) {
  ParsedExposition parsed = ParseExposition(metrics.Render(snapshot));
  EXPECT_TRUE(parsed.errors.empty()) << "unparsable line: " << parsed.errors.front();
  return parsed;
}

TEST(MetricsTest, CountersByMethodAndCode) {
  Metrics metrics;
  MethodMetrics& run = metrics.ForMethod("Run");
  EXPECT_EQ(&run, &metrics.ForMethod("Run"));  // stable handle, no duplicate
  for (int i = 0; i < 3; ++i) run.Record(absl::StatusCode::kOk, absl::Microseconds(10));
  run.Record(absl::StatusCode::kInvalidArgument, absl::Microseconds(10));
  metrics.ForMethod("CreatePool").Record(absl::StatusCode::kResourceExhausted, absl::Milliseconds(1));

  const ParsedExposition p = RenderAndParse(metrics);
  EXPECT_EQ(p.types.at("attnd_requests_total"), "counter");
  EXPECT_EQ(p.Get("attnd_requests_total", {{"method", "Run"}, {"code", "OK"}}), 3);
  EXPECT_EQ(p.Get("attnd_requests_total", {{"method", "Run"}, {"code", "INVALID_ARGUMENT"}}), 1);
  EXPECT_EQ(p.Get("attnd_requests_total",
                  {{"method", "CreatePool"}, {"code", "RESOURCE_EXHAUSTED"}}),
            1);
  // Codes never seen are not exported.
  EXPECT_FALSE(p.Get("attnd_requests_total", {{"method", "Run"}, {"code", "NOT_FOUND"}}));
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithSumAndCount) {
  Metrics metrics;
  MethodMetrics& m = metrics.ForMethod("AppendKv");
  // One sample per chosen latency; expected bucket = first bound >= latency.
  const std::vector<absl::Duration> latencies = {
      absl::Microseconds(20),  absl::Microseconds(50),  absl::Microseconds(51),
      absl::Microseconds(700), absl::Milliseconds(3),   absl::Milliseconds(3),
      absl::Milliseconds(999), absl::Seconds(9),        absl::Seconds(11)};
  double expected_sum = 0;
  for (absl::Duration d : latencies) {
    m.Record(absl::StatusCode::kOk, d);
    expected_sum += absl::ToDoubleSeconds(d);
  }
  const ParsedExposition p = RenderAndParse(metrics);
  EXPECT_EQ(p.types.at("attnd_request_duration_seconds"), "histogram");

  const auto buckets = p.All("attnd_request_duration_seconds_bucket");
  ASSERT_EQ(buckets.size(), kLatencyBucketsSeconds.size() + 1);
  double previous = 0;
  for (size_t b = 0; b < kLatencyBucketsSeconds.size(); ++b) {
    const double bound = kLatencyBucketsSeconds[b];
    size_t expected = 0;
    for (absl::Duration d : latencies) expected += absl::ToDoubleSeconds(d) <= bound ? 1 : 0;
    const auto value = p.Get("attnd_request_duration_seconds_bucket",
                             {{"method", "AppendKv"}, {"le", FormatSampleValue(bound)}});
    ASSERT_TRUE(value) << "bucket le=" << bound;
    EXPECT_EQ(*value, static_cast<double>(expected)) << "bucket le=" << bound;
    EXPECT_GE(*value, previous);
    previous = *value;
  }
  EXPECT_EQ(p.Get("attnd_request_duration_seconds_bucket", {{"method", "AppendKv"}, {"le", "+Inf"}}),
            static_cast<double>(latencies.size()));
  EXPECT_EQ(p.Get("attnd_request_duration_seconds_count", {{"method", "AppendKv"}}),
            static_cast<double>(latencies.size()));
  const auto sum = p.Get("attnd_request_duration_seconds_sum", {{"method", "AppendKv"}});
  ASSERT_TRUE(sum);
  EXPECT_NEAR(*sum, expected_sum, 1e-9);
  // The first bucket is 50us and the last 10s.
  EXPECT_TRUE(p.Get("attnd_request_duration_seconds_bucket", {{"method", "AppendKv"}, {"le", "5e-05"}}));
  EXPECT_TRUE(p.Get("attnd_request_duration_seconds_bucket", {{"method", "AppendKv"}, {"le", "10"}}));
}

TEST(MetricsTest, GaugesFromSnapshotWithEscapedLabels) {
  Metrics metrics;
  metrics.StreamOpened();
  metrics.StreamOpened();
  metrics.StreamClosed();
  MetricsSnapshot snap;
  snap.stats.sessions = 3;
  snap.stats.plans = 5;
  snap.stats.buffers = 2;
  snap.stats.bytes_in = 1234;
  snap.stats.bytes_out = 5678;
  snap.stats.pool_bytes_allocated = 1 << 20;
  PoolStats pool;
  pool.pool_id = "pool-1";
  pool.name = "llama\"70b\\x\ny";
  pool.num_pages = 100;
  pool.free_pages = 37;
  pool.total_bytes = 4096000;
  pool.attached_sessions = 2;
  snap.stats.pools.push_back(pool);
  snap.backend_healthy = true;
  snap.version = "0.1.0";
  snap.backend = "cpu";
  snap.device = "cpu (2 threads) \"quoted\"";

  const ParsedExposition p = RenderAndParse(metrics, snap);
  EXPECT_EQ(p.Get("attnd_streams_active"), 1);
  EXPECT_EQ(p.Get("attnd_sessions"), 3);
  EXPECT_EQ(p.Get("attnd_plans"), 5);
  EXPECT_EQ(p.Get("attnd_buffers"), 2);
  EXPECT_EQ(p.Get("attnd_pool_pages", {{"pool", "0"}, {"state", "used"}}), 63);
  EXPECT_EQ(p.Get("attnd_pool_pages", {{"pool", "0"}, {"state", "free"}}), 37);
  EXPECT_EQ(p.Get("attnd_pool_bytes", {{"pool", "0"}}), 4096000);
  EXPECT_EQ(p.Get("attnd_pool_attached_sessions", {{"pool", "0"}}), 2);
  EXPECT_EQ(p.Get("attnd_pool_memory_allocated_bytes"), 1 << 20);
  EXPECT_EQ(p.Get("attnd_bytes_in_total"), 1234);
  EXPECT_EQ(p.Get("attnd_bytes_out_total"), 5678);
  EXPECT_EQ(p.types.at("attnd_bytes_in_total"), "counter");
  EXPECT_EQ(p.types.at("attnd_sessions"), "gauge");
  EXPECT_EQ(p.Get("attnd_backend_healthy"), 1);
  EXPECT_EQ(p.Get("attnd_info", {{"version", "0.1.0"}, {"backend", "cpu"}, {"device", snap.device}}),
            1);

  snap.backend_healthy = false;
  EXPECT_EQ(RenderAndParse(metrics, snap).Get("attnd_backend_healthy"), 0);
}

// /metrics is unauthenticated and a pool's name is what AttachPool asks for: pools are exported
// by a number, stable while the pool lives and never reused.
TEST(MetricsTest, PoolsAreNumberedNotNamed) {
  Metrics metrics;
  MetricsSnapshot snap;
  auto add_pool = [&snap](const std::string& id, const std::string& name, int64_t free_pages) {
    PoolStats pool;
    pool.pool_id = id;
    pool.name = name;
    pool.num_pages = 64;
    pool.free_pages = free_pages;
    snap.stats.pools.push_back(pool);
  };
  add_pool("p-0123456789abcdef0123456789abcdef", "llama-70b-prod", 10);
  add_pool("p-fedcba9876543210fedcba9876543210", "mistral-shared", 20);
  std::string text = metrics.Render(snap);
  for (const char* secret : {"llama-70b-prod", "mistral-shared", "p-0123456789abcdef",
                             "p-fedcba9876543210"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret << " in:\n" << text;
  }
  ParsedExposition p = ParseExposition(text);
  EXPECT_EQ(p.Get("attnd_pool_pages", {{"pool", "0"}, {"state", "free"}}), 10);
  EXPECT_EQ(p.Get("attnd_pool_pages", {{"pool", "1"}, {"state", "free"}}), 20);
  // The first pool goes, a third comes: the survivor keeps its number, the newcomer gets a new one.
  snap.stats.pools.erase(snap.stats.pools.begin());
  add_pool("p-00000000000000000000000000000003", "third", 30);
  p = ParseExposition(metrics.Render(snap));
  EXPECT_FALSE(p.Get("attnd_pool_pages", {{"pool", "0"}, {"state", "free"}}));
  EXPECT_EQ(p.Get("attnd_pool_pages", {{"pool", "1"}, {"state", "free"}}), 20);
  EXPECT_EQ(p.Get("attnd_pool_pages", {{"pool", "2"}, {"state", "free"}}), 30);
}

TEST(MetricsTest, ConcurrentRecordingLosesNothing) {
  Metrics metrics;
  MethodMetrics& m = metrics.ForMethod("Run");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&m, t] {
      for (int i = 0; i < kPerThread; ++i) {
        m.Record(t % 2 == 0 ? absl::StatusCode::kOk : absl::StatusCode::kNotFound,
                 absl::Microseconds(100));
      }
    });
  }
  for (auto& th : threads) th.join();
  const ParsedExposition p = RenderAndParse(metrics);
  EXPECT_EQ(p.Get("attnd_requests_total", {{"method", "Run"}, {"code", "OK"}}),
            kPerThread * kThreads / 2);
  EXPECT_EQ(p.Get("attnd_requests_total", {{"method", "Run"}, {"code", "NOT_FOUND"}}),
            kPerThread * kThreads / 2);
  EXPECT_EQ(p.Get("attnd_request_duration_seconds_count", {{"method", "Run"}}),
            kPerThread * kThreads);
  EXPECT_NEAR(*p.Get("attnd_request_duration_seconds_sum", {{"method", "Run"}}),
              kPerThread * kThreads * 100e-6, 1e-6);
}

}  // namespace
}  // namespace attnd::server::front
