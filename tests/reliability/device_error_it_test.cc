// A sticky device error against a real daemon process (--testonly_device_fault_after_runs: on the
// CPU backend an emulated one, on CUDA a trapping kernel). The Run that hits it fails, health
// turns NOT_SERVING at once (a grpc.health.v1 Watch sees it), /readyz answers 503 with the error,
// the metrics say so, and by default the daemon exits with code 3 within a few seconds; with
// --exit_on_device_error=false it stays up, NOT_SERVING, failing every run with the error.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "test_util.h"

namespace attnd::testing {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;

constexpr int kFaultAfterRuns = 3;
constexpr int kExitDeviceError = 3;  // docs/operations.md "Exit codes"

class DeviceErrorTest : public ::testing::Test {
 protected:
  void Start(bool exit_on_device_error) {
    DaemonOptions options;
    options.extra_flags = {absl::StrCat("--testonly_device_fault_after_runs=", kFaultAfterRuns),
                           absl::StrCat("--exit_on_device_error=", exit_on_device_error),
                           "--threads=1"};
    auto daemon = DaemonProcess::Start(options);
    ATTND_ASSERT_OK(daemon);
    daemon_ = *std::move(daemon);
    client_ = daemon_->NewClient();
    watch_ = std::make_unique<Watcher>(client_->channel());
  }

  // kFaultAfterRuns runs succeed (a prefill and decode steps of one layer, checked against the
  // reference); the next fails with the injected sticky error, which it returns.
  absl::Status RunUntilTheFault() {
    auto session = client_->OpenUnarySession("device-error");
    if (!session.ok()) return session.status();
    session_ = *std::move(session);
    ModelShape shape;
    shape.layers = 1;
    shape.num_pages = 8;
    auto pool = session_->CreatePool(MakePoolSpec(shape, "device-error-pool"));
    if (!pool.ok()) return pool.status();
    workload_ = std::make_unique<Workload>(session_.get(), shape, pool->pool_id(), 11);
    if (absl::Status s = workload_->Prefill({9}); !s.ok()) return s;
    for (int run = 1; run < kFaultAfterRuns; ++run) {
      if (absl::Status s = workload_->DecodeStep(); !s.ok()) return s;
    }
    absl::Status failed = workload_->DecodeStep();
    return failed.ok() ? absl::InternalError("run N+1 succeeded on a broken device") : failed;
  }

  // A grpc.health.v1 Watch of "attnd.v1.Attnd", started before the fault.
  class Watcher {
   public:
    explicit Watcher(std::shared_ptr<grpc::Channel> channel)
        : stub_(Health::NewStub(std::move(channel))) {
      request_.set_service("attnd.v1.Attnd");
      reader_ = stub_->Watch(&context_, request_);
      HealthCheckResponse first;
      EXPECT_TRUE(reader_->Read(&first));
      EXPECT_EQ(first.status(), HealthCheckResponse::SERVING);
    }
    ~Watcher() {
      context_.TryCancel();
      reader_->Finish();
    }
    // Reads updates until NOT_SERVING (true) or the stream ends (false).
    bool SawNotServing() {
      HealthCheckResponse update;
      while (reader_->Read(&update)) {
        if (update.status() == HealthCheckResponse::NOT_SERVING) return true;
      }
      return false;
    }

   private:
    std::unique_ptr<Health::Stub> stub_;
    grpc::ClientContext context_;
    HealthCheckRequest request_;
    std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader_;
  };

  void TearDown() override {
    if (HasFailure() && daemon_ != nullptr) std::cerr << daemon_->LogTail() << "\n";
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<Watcher> watch_;
  std::unique_ptr<client::UnarySession> session_;
  std::unique_ptr<Workload> workload_;
};

TEST_F(DeviceErrorTest, StickyErrorEndsTheProcessWithCode3) {
  ASSERT_NO_FATAL_FAILURE(Start(/*exit_on_device_error=*/true));
  const absl::Status failed = RunUntilTheFault();
  EXPECT_TRUE(StatusIs(failed, absl::StatusCode::kInternal, {"sticky device error injected"}));
  const absl::Time failed_at = absl::Now();
  // While it cleans up, whatever still answers says it is not serving.
  auto ready = HttpGet(daemon_->http_port(), "/readyz");
  if (ready.ok()) {
    EXPECT_EQ(ready->first, 503) << ready->second;
  }
  EXPECT_TRUE(watch_->SawNotServing());
  const int status = daemon_->WaitForExit(absl::Seconds(5));
  ASSERT_NE(status, -1) << "attnd still runs 5 s after the device error";
  ASSERT_TRUE(WIFEXITED(status)) << "wait status " << status;
  EXPECT_EQ(WEXITSTATUS(status), kExitDeviceError);
  EXPECT_LT(absl::Now() - failed_at, absl::Seconds(5));
  const std::string log = daemon_->LogTail(1 << 20);
  EXPECT_NE(log.find("[critical]"), std::string::npos) << "no critical line";
  EXPECT_NE(log.find("sticky device error: INTERNAL: sticky device error injected"),
            std::string::npos);
  EXPECT_NE(log.find("shutdown complete"), std::string::npos) << "no clean-up";
}

TEST_F(DeviceErrorTest, WithoutExitOnDeviceErrorItStaysUpNotServing) {
  ASSERT_NO_FATAL_FAILURE(Start(/*exit_on_device_error=*/false));
  EXPECT_TRUE(
      StatusIs(RunUntilTheFault(), absl::StatusCode::kInternal, {"sticky device error injected"}));
  EXPECT_TRUE(watch_->SawNotServing());
  auto health = client_->CheckHealth("attnd.v1.Attnd");
  ATTND_ASSERT_OK(health);
  EXPECT_EQ(*health, client::HealthStatus::kNotServing);
  auto ready = HttpGet(daemon_->http_port(), "/readyz");
  ATTND_ASSERT_OK(ready);
  EXPECT_EQ(ready->first, 503);
  EXPECT_NE(ready->second.find("sticky device error injected"), std::string::npos) << ready->second;
  // Later runs fail with the same error; the process stays up past the periodic check.
  EXPECT_TRUE(StatusIs(workload_->DecodeStep(), absl::StatusCode::kInternal, {"sticky"}));
  absl::SleepFor(absl::Milliseconds(1500));
  ASSERT_TRUE(daemon_->IsRunning());
  auto metrics = HttpGet(daemon_->http_port(), "/metrics");
  ATTND_ASSERT_OK(metrics);
  const std::vector<MetricSample> samples = ParsePrometheusText(metrics->second);
  EXPECT_EQ(SumMetric(samples, "attnd_backend_healthy"), 0.0);
  // The Run that hit it and the first command of the later step (the device is broken for all).
  EXPECT_EQ(SumMetric(samples, "attnd_device_errors_total"), 2.0);
  EXPECT_EQ(SumMetric(samples, "attnd_requests_total", {{"code", "INTERNAL"}}), 2.0);
  EXPECT_EQ(SumMetric(samples, "attnd_requests_total", {{"method", "Run"}, {"code", "INTERNAL"}}),
            1.0);
  // SIGTERM still ends it normally.
  const int status = daemon_->Stop(absl::Seconds(15));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace attnd::testing
