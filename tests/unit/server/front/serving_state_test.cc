#include "server/front/serving_state.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace attnd::server::front {
namespace {

// Records what ServingState publishes (gRPC's default service is exercised in daemon_test).
class RecordingHealthService : public grpc::HealthCheckServiceInterface {
 public:
  void SetServingStatus(const std::string& service, bool serving) override {
    if (!shut_down) status[service] = serving;
    ++updates;
  }
  void SetServingStatus(bool serving) override {
    if (shut_down) return;
    for (auto& [name, s] : status) s = serving;
  }
  void Shutdown() override {
    for (auto& [name, s] : status) s = false;
    shut_down = true;
  }
  std::map<std::string, bool> status;
  bool shut_down = false;
  int updates = 0;
};

TEST(ServingStateTest, FollowsBackendHealthAndShutdown) {
  RecordingHealthService health;
  ServingState state;
  EXPECT_FALSE(state.readiness().ready);  // nothing checked yet
  state.AttachHealthService(&health);
  EXPECT_FALSE(health.status.at(""));

  state.UpdateBackendHealth(absl::OkStatus());
  EXPECT_TRUE(health.status.at(""));
  EXPECT_TRUE(health.status.at(kAttndServiceName));
  EXPECT_TRUE(state.readiness().ready);
  EXPECT_TRUE(state.backend_healthy());

  const int updates = health.updates;
  state.UpdateBackendHealth(absl::OkStatus());
  EXPECT_EQ(health.updates, updates);  // unchanged status is not republished

  state.UpdateBackendHealth(absl::InternalError("sticky CUDA error: illegal address"));
  EXPECT_FALSE(health.status.at(""));
  EXPECT_FALSE(health.status.at(kAttndServiceName));
  const Readiness not_ready = state.readiness();
  EXPECT_FALSE(not_ready.ready);
  EXPECT_NE(not_ready.reason.find("illegal address"), std::string::npos) << not_ready.reason;

  state.UpdateBackendHealth(absl::OkStatus());
  EXPECT_TRUE(health.status.at(kAttndServiceName));

  state.BeginShutdown();
  EXPECT_TRUE(health.shut_down);
  EXPECT_FALSE(health.status.at(""));
  EXPECT_FALSE(health.status.at(kAttndServiceName));
  EXPECT_EQ(state.readiness().reason, "shutting down");
  state.UpdateBackendHealth(absl::OkStatus());  // no way back after shutdown
  EXPECT_FALSE(state.readiness().ready);
}

}  // namespace
}  // namespace attnd::server::front
