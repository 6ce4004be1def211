// Health over gRPC (grpc.health.v1) and HTTP (/healthz, /readyz), Prometheus /metrics that move
// with requests, and a graceful SIGTERM.
#include <signal.h>
#include <sys/wait.h>

#include <set>

#include "daemon_fixture.h"

namespace attnd::testing {
namespace {

class HealthMetricsTest : public DaemonTest {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }

 protected:
  std::vector<MetricSample> Scrape() {
    auto response = HttpGet(daemon().http_port(), "/metrics");
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return {};
    EXPECT_EQ(response->first, 200);
    return ParsePrometheusText(response->second);
  }
};

TEST_F(HealthMetricsTest, GrpcHealthCheck) {
  auto overall = client_->CheckHealth("");
  ATTND_ASSERT_OK(overall);
  EXPECT_EQ(*overall, client::HealthStatus::kServing);
  auto service = client_->CheckHealth("attnd.v1.Attnd");
  ATTND_ASSERT_OK(service);
  EXPECT_EQ(*service, client::HealthStatus::kServing);
  EXPECT_TRUE(StatusIs(client_->CheckHealth("no.such.Service"), absl::StatusCode::kNotFound));
}

TEST_F(HealthMetricsTest, HttpHealthEndpoints) {
  for (const char* path : {"/healthz", "/readyz"}) {
    auto response = HttpGet(daemon().http_port(), path);
    ATTND_ASSERT_OK(response);
    EXPECT_EQ(response->first, 200) << path << ": " << response->second;
  }
  auto missing = HttpGet(daemon().http_port(), "/no-such-page");
  ATTND_ASSERT_OK(missing);
  EXPECT_EQ(missing->first, 404);
}

TEST_F(HealthMetricsTest, MetricsMoveWithRequests) {
  std::vector<MetricSample> before = Scrape();
  ASSERT_FALSE(before.empty());
  EXPECT_GT(SumMetric(before, "attnd_info"), 0.0) << "attnd_info missing";

  auto session = client_->OpenSession("metrics");
  ATTND_ASSERT_OK(session);
  ModelShape shape;
  shape.num_pages = 24;
  const std::string name = UniqueName("metrics");
  auto pool = (*session)->CreatePool(MakePoolSpec(shape, name));
  ATTND_ASSERT_OK(pool);
  Workload work(session->get(), shape, pool->pool_id(), /*seed=*/4);
  ATTND_ASSERT_OK(work.Prefill({20}));  // 2 pages
  ATTND_ASSERT_OK(work.DecodeStep());
  ATTND_ASSERT_OK((*session)->AllocatePages(pool->pool_id(), 3));
  // Two refused requests.
  EXPECT_FALSE((*session)->AllocatePages(pool->pool_id(), 0).ok());
  EXPECT_FALSE((*session)->DescribePool("no-such-pool").ok());

  std::vector<MetricSample> after = Scrape();
  auto delta = [&](const std::map<std::string, std::string>& match) {
    return SumMetric(after, "attnd_requests_total", match) -
           SumMetric(before, "attnd_requests_total", match);
  };
  // Commands counted by method and code (Session-stream commands count under their method).
  EXPECT_GE(delta({{"method", "CreatePool"}, {"code", "OK"}}), 1);
  EXPECT_GE(delta({{"method", "AllocatePages"}, {"code", "OK"}}), 2);
  EXPECT_GE(delta({{"method", "AllocatePages"}, {"code", "INVALID_ARGUMENT"}}), 1);
  EXPECT_GE(delta({{"method", "DescribePool"}, {"code", "NOT_FOUND"}}), 1);
  EXPECT_GE(delta({{"method", "Run"}, {"code", "OK"}}), 2 * shape.layers);
  EXPECT_GE(delta({}), 10);
  // Latency histogram counts move too.
  EXPECT_GT(SumMetric(after, "attnd_request_duration_seconds_count", {{"method", "Run"}}),
            SumMetric(before, "attnd_request_duration_seconds_count", {{"method", "Run"}}));

  // Gauges: this pool's pages (20+1 tokens fit 2 pages) + 3 used. The pool is the only one, and
  // /metrics (unauthenticated) shows it by number, not by its name or id (the name is all
  // AttachPool needs).
  const int64_t used = static_cast<int64_t>(work.AllPages().size()) + 3;
  std::set<std::string> pool_labels;
  for (const MetricSample& sample : after) {
    if (sample.name == "attnd_pool_pages") pool_labels.insert(sample.labels.at("pool"));
  }
  ASSERT_EQ(pool_labels.size(), 1u);
  const std::string label = *pool_labels.begin();
  EXPECT_TRUE(label.find_first_not_of("0123456789") == std::string::npos) << label;
  EXPECT_EQ(SumMetric(after, "attnd_pool_pages", {{"pool", label}, {"state", "used"}}),
            static_cast<double>(used));
  EXPECT_EQ(SumMetric(after, "attnd_pool_pages", {{"pool", label}, {"state", "free"}}),
            static_cast<double>(shape.num_pages - used));
  auto text = HttpGet(daemon().http_port(), "/metrics");
  ATTND_ASSERT_OK(text);
  EXPECT_EQ(text->second.find(name), std::string::npos) << "the pool's name is exported";
  EXPECT_EQ(text->second.find(pool->pool_id()), std::string::npos) << "the pool's id is exported";
  EXPECT_GE(SumMetric(after, "attnd_sessions"), 1.0);
  EXPECT_GE(SumMetric(after, "attnd_streams_active"), 1.0);
  EXPECT_GT(SumMetric(after, "attnd_bytes_in_total"), SumMetric(before, "attnd_bytes_in_total"));
  EXPECT_GT(SumMetric(after, "attnd_bytes_out_total"), SumMetric(before, "attnd_bytes_out_total"));

  // Closing the session drops the session gauge and releases the pool.
  const double sessions_open = SumMetric(after, "attnd_sessions");
  ATTND_ASSERT_OK((*session)->Close());
  absl::SleepFor(absl::Milliseconds(200));
  std::vector<MetricSample> closed = Scrape();
  EXPECT_EQ(SumMetric(closed, "attnd_sessions"), sessions_open - 1);
  EXPECT_EQ(SumMetric(closed, "attnd_pool_pages", {{"pool", label}}), 0.0);
}

// Last: SIGTERM drains and exits 0 (this stops the suite's daemon).
TEST_F(HealthMetricsTest, ZZ_SigtermExitsCleanly) {
  auto session = client_->OpenSession("open-at-shutdown");
  ATTND_ASSERT_OK(session);
  ASSERT_EQ(kill(daemon().pid(), SIGTERM), 0);
  // While it drains (the open stream keeps it a moment), it must not claim to be ready.
  absl::SleepFor(absl::Milliseconds(300));
  auto ready = HttpGet(daemon().http_port(), "/readyz");
  if (ready.ok()) {
    EXPECT_NE(ready->first, 200) << "/readyz still 200 after SIGTERM";
  }
  auto health = client_->CheckHealth();
  if (health.ok()) {
    EXPECT_NE(*health, client::HealthStatus::kServing) << "SERVING after SIGTERM";
  }
  const int status = daemon().Stop(absl::Seconds(15));
  ASSERT_TRUE(WIFEXITED(status)) << "attnd did not exit by itself on SIGTERM (status " << status
                                 << ")";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The open session sees its stream end.
  EXPECT_FALSE((*session)->GetServerInfo().ok());
}

}  // namespace
}  // namespace attnd::testing
