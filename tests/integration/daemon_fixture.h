// gtest fixture: one real attnd process per test suite (started in SetUpTestSuite by the derived
// suite with its own DaemonOptions, stopped in TearDownTestSuite), a fresh Client per test.
#pragma once

#include <unistd.h>

#include <atomic>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace attnd::testing {

class DaemonTest : public ::testing::Test {
 public:
  static void StartDaemon(const DaemonOptions& options) {
    absl::StatusOr<std::unique_ptr<DaemonProcess>> daemon = DaemonProcess::Start(options);
    if (daemon.ok()) {
      daemon_ = *std::move(daemon);
      start_error_.clear();
    } else {
      daemon_.reset();
      start_error_ = daemon.status().ToString();
    }
  }
  static void TearDownTestSuite() { daemon_.reset(); }

 protected:
  void SetUp() override {
    ASSERT_NE(daemon_, nullptr) << "attnd did not start: " << start_error_;
    ASSERT_TRUE(daemon_->IsRunning()) << "attnd is not running; log:\n" << daemon_->LogTail();
    client_ = daemon_->NewClient();
    ASSERT_NE(client_, nullptr);
  }

  void TearDown() override {
    if (daemon_ != nullptr && ::testing::Test::HasFailure()) {
      std::cerr << "---- attnd log tail ----\n"
                << daemon_->LogTail() << "\n------------------------\n";
    }
  }

  static DaemonProcess& daemon() { return *daemon_; }

  // A pool name no other test of this process uses.
  static std::string UniqueName(const std::string& prefix) {
    static std::atomic<int> counter{0};
    return absl::StrCat(prefix, "-", getpid(), "-", counter.fetch_add(1));
  }

  // The daemon still answers health checks with SERVING and the process is alive.
  void ExpectServing() {
    EXPECT_TRUE(daemon_->IsRunning()) << "attnd died; log:\n" << daemon_->LogTail();
    absl::StatusOr<client::HealthStatus> health = client_->CheckHealth();
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, client::HealthStatus::kServing);
  }

  // A session on the Session stream, or a unary one (`unary`); null (with a failure) if the
  // daemon refuses it.
  std::unique_ptr<client::SessionApi> OpenSessionOn(bool unary, const std::string& name) {
    if (unary) {
      auto session = client_->OpenUnarySession(name);
      EXPECT_TRUE(session.ok()) << session.status();
      return session.ok() ? std::move(*session) : nullptr;
    }
    auto session = client_->OpenSession(name);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? std::move(*session) : nullptr;
  }

  std::unique_ptr<client::Client> client_;

 private:
  static inline std::unique_ptr<DaemonProcess> daemon_;
  static inline std::string start_error_ = "not started";
};

}  // namespace attnd::testing
