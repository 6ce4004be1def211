#include "server/front/backend_health.h"

#include <gtest/gtest.h>

#include "prometheus_text_parser.h"

namespace attnd::server::front {
namespace {

double DeviceErrors(const Metrics& metrics) {
  return *testing::ParseExposition(metrics.Render(MetricsSnapshot{}))
              .Get("attnd_device_errors_total");
}

TEST(BackendHealthMonitorTest, FailedCommandOnABrokenDeviceIsNotServingAndFatal) {
  ServingState state;
  Metrics metrics;
  BackendHealthMonitor monitor(state, metrics, /*exit_on_device_error=*/true);
  monitor.Polled(absl::OkStatus());
  EXPECT_TRUE(state.readiness().ready);
  EXPECT_FALSE(monitor.fatal_error().has_value());
  EXPECT_EQ(DeviceErrors(metrics), 0);

  const absl::Status sticky = absl::InternalError("cudaErrorIllegalAddress");
  monitor.CommandFailed(sticky);
  EXPECT_FALSE(state.readiness().ready);
  EXPECT_NE(state.readiness().reason.find("cudaErrorIllegalAddress"), std::string::npos);
  ASSERT_TRUE(monitor.fatal_error().has_value());
  EXPECT_EQ(*monitor.fatal_error(), sticky);
  EXPECT_EQ(DeviceErrors(metrics), 1);
  monitor.CommandFailed(sticky);  // every failed command counts
  monitor.Polled(sticky);         // the poll of an error already seen does not
  EXPECT_EQ(DeviceErrors(metrics), 2);
}

TEST(BackendHealthMonitorTest, PollFindsTheErrorFirstAndStayUpIsNotFatal) {
  ServingState state;
  Metrics metrics;
  BackendHealthMonitor monitor(state, metrics, /*exit_on_device_error=*/false);
  monitor.Polled(absl::OkStatus());
  monitor.Polled(absl::InternalError("Xid 79: GPU has fallen off the bus"));
  EXPECT_FALSE(state.backend_healthy());
  EXPECT_EQ(DeviceErrors(metrics), 1);
  monitor.Polled(absl::InternalError("Xid 79: GPU has fallen off the bus"));
  EXPECT_EQ(DeviceErrors(metrics), 1);
  EXPECT_FALSE(monitor.fatal_error().has_value());
}

}  // namespace
}  // namespace attnd::server::front
