#include "server/front/stream_registry.h"

#include <gtest/gtest.h>

namespace attnd::server::front {
namespace {

// Only busy streams here: closing an idle one cancels its live gRPC call, which the in-process
// daemon test covers (DaemonTest.ShutdownClosesOpenStreamsAndRemovesTheSocket).
TEST(StreamRegistryTest, BusyStreamFinishesItsCommandThenEnds) {
  StreamRegistry registry;
  grpc::ServerContext context;
  {
    auto handle = registry.Register(&context);
    ASSERT_NE(handle, nullptr);
    EXPECT_EQ(registry.size(), 1u);
    EXPECT_TRUE(handle->BeginCommand());
    EXPECT_TRUE(handle->EndCommand());  // not closing: go on
    EXPECT_TRUE(handle->BeginCommand());
    registry.CloseAll();                 // arrives while the command runs
    EXPECT_TRUE(handle->closing());
    EXPECT_FALSE(handle->EndCommand());  // answer it, then end the stream
    EXPECT_FALSE(handle->BeginCommand());
  }
  EXPECT_EQ(registry.size(), 0u);  // the handle unregistered itself
  EXPECT_EQ(registry.Register(&context), nullptr);  // closed for new streams
}

}  // namespace
}  // namespace attnd::server::front
