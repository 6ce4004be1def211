#include "server/front/flags.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"

ABSL_DECLARE_FLAG(bool, grpc_reflection);

namespace attnd::server::front {
namespace {

class FlagsTest : public ::testing::Test {
 protected:
  absl::FlagSaver saver_;  // every test starts from, and restores, the defaults
};

TEST_F(FlagsTest, DefaultsMatchTheDocumentedConfig) {
  absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "unix:///tmp/attnd.sock");
  EXPECT_EQ(config->http_listen, "127.0.0.1:9401");
  EXPECT_EQ(config->backend, "auto");
  EXPECT_EQ(config->device, 0);
  EXPECT_EQ(config->max_pool_bytes, 0u);
  EXPECT_EQ(config->session_lease, absl::Milliseconds(30000));
  EXPECT_EQ(config->max_message_bytes, 64ull << 20);
  EXPECT_EQ(config->log_level, "info");
  EXPECT_FALSE(config->log_json);
  EXPECT_EQ(config->socket_mode, 0660u);
  EXPECT_EQ(config->threads, 0);
  EXPECT_EQ(config->drain_timeout, absl::Seconds(10));
  EXPECT_TRUE(config->exit_on_device_error);
  EXPECT_EQ(config->testonly_device_fault_after_runs, 0);
  EXPECT_FALSE(config->grpc_reflection);
}

// Reflection answers without a token: the two together are refused.
TEST_F(FlagsTest, ReflectionIsRefusedWithAToken) {
  absl::SetFlag(&FLAGS_grpc_reflection, true);
  ASSERT_TRUE(DaemonConfigFromFlags().ok());
  setenv("ATTND_TOKEN", "a-token-of-sixteen-bytes-or-more", 1);
  absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
  unsetenv("ATTND_TOKEN");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("--grpc_reflection cannot be combined with a token"),
            std::string::npos)
      << config.status();
}

TEST_F(FlagsTest, EnvironmentVariableNames) {
  EXPECT_EQ(EnvironmentVariableFor("listen"), "ATTND_LISTEN");
  EXPECT_EQ(EnvironmentVariableFor("http_listen"), "ATTND_HTTP_LISTEN");
  EXPECT_EQ(EnvironmentVariableFor("session_lease_ms"), "ATTND_SESSION_LEASE_MS");
  // Every daemon flag is registered with absl (so --help lists it and env can set it).
  for (const std::string& name : DaemonFlagNames()) {
    EXPECT_NE(absl::FindCommandLineFlag(name), nullptr) << name;
  }
}

TEST_F(FlagsTest, EveryFlagCanBeSetFromTheEnvironment) {
  const std::map<std::string, std::string> env = {
      {"ATTND_LISTEN", "unix:/run/x.sock"},
      {"ATTND_HTTP_LISTEN", ""},
      {"ATTND_BACKEND", "cpu"},
      {"ATTND_DEVICE", "3"},
      {"ATTND_MAX_POOL_BYTES", "123456789"},
      {"ATTND_SESSION_LEASE_MS", "1500"},
      {"ATTND_MAX_MESSAGE_BYTES", "1048576"},
      {"ATTND_LOG_LEVEL", "debug"},
      {"ATTND_LOG_JSON", "true"},
      {"ATTND_SOCKET_MODE", "0600"},
      {"ATTND_THREADS", "7"},
      // Access control and quotas (files left empty: a real token file is tested in
      // access_control_test.cc).
      {"ATTND_TOKEN_FILE", ""},
      {"ATTND_TLS_CERT", ""},
      {"ATTND_TLS_KEY", ""},
      {"ATTND_TLS_CLIENT_CA", ""},
      {"ATTND_ALLOW_UNAUTHENTICATED_TCP", "true"},
      {"ATTND_MAX_SESSIONS", "11"},
      {"ATTND_MAX_PAGES_PER_SESSION", "12"},
      {"ATTND_MAX_BUFFERS_PER_SESSION", "13"},
      {"ATTND_MAX_PLANS_PER_SESSION", "14"},
      {"ATTND_MAX_INFLIGHT_PER_SESSION", "15"},
      {"ATTND_MAX_SESSION_LEASE_MS", "60000"},
      {"ATTND_MAX_HOST_BYTES", "1000000"},
      {"ATTND_MAX_SESSION_HOST_BYTES", "100000"},
      {"ATTND_PEER_SOCKET", "/run/x.peer"},
      {"ATTND_DRAIN_TIMEOUT_MS", "2500"},
      {"ATTND_EXIT_ON_DEVICE_ERROR", "false"},
      {"ATTND_TESTONLY_DEVICE_FAULT_AFTER_RUNS", "9"},
      {"ATTND_GRPC_REFLECTION", "true"}};
  ASSERT_EQ(env.size(), DaemonFlagNames().size());
  const absl::Status applied = ApplyEnvironmentToFlags([&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
  ASSERT_TRUE(applied.ok()) << applied;
  absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "unix:/run/x.sock");
  EXPECT_EQ(config->http_listen, "");
  EXPECT_EQ(config->backend, "cpu");
  EXPECT_EQ(config->device, 3);
  EXPECT_EQ(config->max_pool_bytes, 123456789u);
  EXPECT_EQ(config->session_lease, absl::Milliseconds(1500));
  EXPECT_EQ(config->max_message_bytes, 1048576u);
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_TRUE(config->log_json);
  EXPECT_EQ(config->socket_mode, 0600u);
  EXPECT_EQ(config->threads, 7);
  EXPECT_TRUE(config->allow_unauthenticated_tcp);
  EXPECT_EQ(config->max_sessions, 11);
  EXPECT_EQ(config->max_session_lease, absl::Milliseconds(60000));
  EXPECT_EQ(config->max_host_bytes, 1000000u);
  EXPECT_EQ(config->max_session_host_bytes, 100000u);
  EXPECT_EQ(config->peer_socket, "/run/x.peer");
  EXPECT_EQ(config->max_pages_per_session, 12);
  EXPECT_EQ(config->max_buffers_per_session, 13);
  EXPECT_EQ(config->max_plans_per_session, 14);
  EXPECT_EQ(config->max_inflight_per_session, 15);
  EXPECT_EQ(config->drain_timeout, absl::Milliseconds(2500));
  EXPECT_FALSE(config->exit_on_device_error);
  EXPECT_EQ(config->testonly_device_fault_after_runs, 9);
  EXPECT_TRUE(config->grpc_reflection);
}

TEST_F(FlagsTest, BadEnvironmentValueNamesTheVariable) {
  const absl::Status applied = ApplyEnvironmentToFlags([](const char* name) -> const char* {
    return std::string(name) == "ATTND_DEVICE" ? "zero" : nullptr;
  });
  EXPECT_EQ(applied.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(applied.message().find("ATTND_DEVICE='zero'"), std::string::npos) << applied;
}

TEST_F(FlagsTest, InvalidValuesAreRefusedWithTheFlagNamed) {
  struct Case {
    const char* flag;
    const char* value;
    const char* expect_in_message;
  };
  const std::vector<Case> cases = {
      {"backend", "tpu", "--backend='tpu'"},
      {"log_level", "loud", "--log_level='loud'"},
      {"socket_mode", "0999", "--socket_mode='0999'"},
      {"socket_mode", "rw", "--socket_mode='rw'"},
      {"session_lease_ms", "0", "--session_lease_ms"},
      {"max_message_bytes", "99999999999", "--max_message_bytes=99999999999"},
      {"threads", "-1", "--threads=-1"},
      {"listen", "", "--listen is empty"},
      {"drain_timeout_ms", "600001", "--drain_timeout_ms=600001"},
      {"testonly_device_fault_after_runs", "-1", "--testonly_device_fault_after_runs=-1"},
  };
  for (const Case& c : cases) {
    absl::FlagSaver scoped;
    std::string error;
    ASSERT_TRUE(absl::FindCommandLineFlag(c.flag)->ParseFrom(c.value, &error)) << error;
    absl::StatusOr<DaemonConfig> config = DaemonConfigFromFlags();
    ASSERT_FALSE(config.ok()) << c.flag << "=" << c.value;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(c.expect_in_message), std::string::npos)
        << config.status();
  }
}

// The real process path: environment first, then the command line, which wins.
TEST_F(FlagsTest, CommandLineWinsOverEnvironment) {
  setenv("ATTND_BACKEND", "cuda", 1);
  setenv("ATTND_THREADS", "5", 1);
  setenv("ATTND_LISTEN", "unix:///tmp/from-env.sock", 1);
  std::vector<std::string> args = {"attnd", "--backend=cpu", "--listen=127.0.0.1:7777"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  absl::StatusOr<DaemonConfig> config =
      ParseDaemonFlags(static_cast<int>(argv.size()), argv.data());
  unsetenv("ATTND_BACKEND");
  unsetenv("ATTND_THREADS");
  unsetenv("ATTND_LISTEN");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->backend, "cpu");            // command line over env
  EXPECT_EQ(config->listen, "127.0.0.1:7777");  // command line over env
  EXPECT_EQ(config->threads, 5);                // env over default
}

// `attnd --help`: every flag with its default and help, nothing of the build machine.
TEST_F(FlagsTest, UsageListsEveryFlagWithoutSourcePaths) {
  const std::string usage = DaemonUsage();
  EXPECT_NE(usage.find("Usage: attnd [--flag=value ...]"), std::string::npos) << usage;
  EXPECT_NE(usage.find("ATTND_<FLAG>"), std::string::npos);
  for (const std::string& name : DaemonFlagNames()) {
    EXPECT_NE(usage.find("\n  --" + name + " (default: "), std::string::npos) << name;
  }
  EXPECT_NE(usage.find("  --listen (default: unix:///tmp/attnd.sock)\n      gRPC listen address"),
            std::string::npos)
      << usage;
  EXPECT_NE(usage.find("  --token_file (default: empty)"), std::string::npos);
  EXPECT_EQ(usage.find(".cc"), std::string::npos) << usage;
  EXPECT_EQ(usage.find("Flags from"), std::string::npos);
  size_t start = 0;
  while (start < usage.size()) {
    const size_t end = std::min(usage.find('\n', start), usage.size());
    EXPECT_LE(end - start, 100u) << usage.substr(start, end - start);
    start = end + 1;
  }
}

TEST_F(FlagsTest, UsageFilterKeepsTheMatchingFlags) {
  const std::string usage = DaemonUsage("lease");
  EXPECT_NE(usage.find("  --session_lease_ms "), std::string::npos) << usage;
  EXPECT_NE(usage.find("  --max_session_lease_ms "), std::string::npos) << usage;
  EXPECT_EQ(usage.find("  --listen "), std::string::npos) << usage;
  EXPECT_NE(DaemonUsage("nothing-like-it").find("(no flag name contains 'nothing-like-it')"),
            std::string::npos);
}

TEST_F(FlagsTest, HelpRequestedRecognisesTheHelpFlags) {
  auto help = [](std::vector<std::string> args) {
    args.insert(args.begin(), "attnd");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    return HelpRequested(static_cast<int>(argv.size()), argv.data());
  };
  for (const char* flag : {"--help", "-help", "-h", "--helpfull", "-helpfull", "--helpshort",
                           "--helppackage", "--helpon=flags"}) {
    const std::optional<std::string> usage = help({"--backend=cpu", flag});
    ASSERT_TRUE(usage.has_value()) << flag;
    EXPECT_EQ(*usage, DaemonUsage()) << flag;
  }
  EXPECT_EQ(help({"--help=lease"}), DaemonUsage("lease"));
  EXPECT_EQ(help({"--helpmatch=lease"}), DaemonUsage("lease"));
  EXPECT_FALSE(help({}).has_value());
  EXPECT_FALSE(help({"--listen=unix:///tmp/help.sock", "--backend=cpu"}).has_value());
  EXPECT_FALSE(help({"--", "--help"}).has_value());  // after "--": not a flag
  EXPECT_FALSE(help({"--helper"}).has_value());
}

}  // namespace
}  // namespace attnd::server::front
