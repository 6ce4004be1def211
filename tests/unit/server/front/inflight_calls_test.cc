#include "server/front/inflight_calls.h"

#include <gtest/gtest.h>

#include "absl/time/clock.h"

#include <chrono>
#include <optional>
#include <thread>

namespace attnd::server::front {
namespace {

TEST(InFlightCallsTest, CountsScopes) {
  InFlightCalls calls;
  EXPECT_EQ(calls.count(), 0);
  {
    InFlightCalls::Scope a(calls);
    InFlightCalls::Scope b(calls);
    EXPECT_EQ(calls.count(), 2);
  }
  EXPECT_EQ(calls.count(), 0);
  EXPECT_TRUE(calls.WaitUntilIdle(absl::Now()));
}

TEST(InFlightCallsTest, WaitsForTheRunningCommand) {
  InFlightCalls calls;
  std::optional<InFlightCalls::Scope> busy;
  busy.emplace(calls);
  std::thread finisher([&busy] {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    busy.reset();
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(calls.WaitUntilIdle(absl::Now() + absl::Seconds(10)));
  const auto waited = std::chrono::steady_clock::now() - start;
  finisher.join();
  EXPECT_GE(waited, std::chrono::milliseconds(140));
  EXPECT_LT(waited, std::chrono::seconds(5));
}

TEST(InFlightCallsTest, GivesUpAtTheDeadline) {
  InFlightCalls calls;
  InFlightCalls::Scope stuck(calls);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(calls.WaitUntilIdle(absl::Now() + absl::Milliseconds(50)));
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(45));
  EXPECT_EQ(calls.count(), 1);
}

}  // namespace
}  // namespace attnd::server::front
