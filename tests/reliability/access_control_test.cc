// The pieces of access control without a daemon: constant-time comparison, token loading,
// the bearer-token check, loopback detection and server credentials.
#include "server/front/access_control.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include "gtest/gtest.h"

namespace attnd::server::front {
namespace {

constexpr char kToken[] = "0123456789abcdef-token";

std::string WriteTemp(const std::string& contents) {
  char path[] = "/tmp/attnd-token-XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(write(fd, contents.data(), contents.size()),
            static_cast<ssize_t>(contents.size()));
  close(fd);
  return path;
}

TEST(ConstantTimeEqualsTest, ComparesContentsAndLengths) {
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", ""));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
  // A byte equal to the padding (0) beyond the end must not make a prefix match.
  EXPECT_FALSE(ConstantTimeEquals("ab", std::string("ab\0", 3)));
}

TEST(LoadTokenTest, FileWinsOverEnvironmentAndTrailingNewlineIsDropped) {
  const std::string path = WriteTemp(std::string(kToken) + "\n");
  chmod(path.c_str(), 0600);
  auto env = [](const char*) -> const char* { return "environment-token-0123456789"; };
  auto token = LoadToken(path, env);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, kToken);
  std::remove(path.c_str());
}

TEST(LoadTokenTest, EnvironmentWhenNoFileAndEmptyWhenNeither) {
  auto from_env = LoadToken("", [](const char* name) -> const char* {
    return std::string(name) == "ATTND_TOKEN" ? "environment-token-0123456789" : nullptr;
  });
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  EXPECT_EQ(*from_env, "environment-token-0123456789");
  auto none = LoadToken("", [](const char*) -> const char* { return nullptr; });
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, "");
}

TEST(LoadTokenTest, RefusesShortEmptyUnreadableAndNonPrintableTokens) {
  auto no_env = [](const char*) -> const char* { return nullptr; };
  const std::string short_file = WriteTemp("short\n");
  EXPECT_EQ(LoadToken(short_file, no_env).status().code(), absl::StatusCode::kInvalidArgument);
  const std::string empty_file = WriteTemp("\n\n");
  EXPECT_EQ(LoadToken(empty_file, no_env).status().code(), absl::StatusCode::kInvalidArgument);
  const std::string spaced = WriteTemp("0123456789 abcdef0123");
  EXPECT_EQ(LoadToken(spaced, no_env).status().code(), absl::StatusCode::kInvalidArgument);
  const auto missing = LoadToken("/nonexistent/attnd-token", no_env);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("--token_file"), std::string::npos);
  for (const auto& p : {short_file, empty_file, spaced}) std::remove(p.c_str());
}

TEST(TokenAuthenticatorTest, EveryDenialIsUnauthenticatedAndTheRightTokenPasses) {
  const TokenAuthenticator auth(kToken);
  ASSERT_TRUE(auth.enabled());
  std::multimap<grpc::string_ref, grpc::string_ref> metadata;
  EXPECT_EQ(auth.Check(metadata).code(), absl::StatusCode::kUnauthenticated);
  const std::string wrong = "Bearer 0123456789abcdef-tokeN";
  const std::string prefix_only = "Bearer 0123456789abcdef";
  const std::string basic = std::string("Basic ") + kToken;
  const std::string right = std::string("Bearer ") + kToken;
  for (const std::string* value : {&wrong, &prefix_only, &basic}) {
    metadata = {{"authorization", *value}};
    const absl::Status s = auth.Check(metadata);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << *value;
    EXPECT_EQ(s.message().find(kToken), std::string::npos) << "the token leaked into: " << s;
  }
  metadata = {{"authorization", right}};
  EXPECT_TRUE(auth.Check(metadata).ok());
  // Without a token every call passes.
  EXPECT_TRUE(TokenAuthenticator("").Check({}).ok());
}

TEST(IsLoopbackListenTest, Hosts) {
  EXPECT_TRUE(IsLoopbackListen("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackListen("localhost:1"));
  EXPECT_TRUE(IsLoopbackListen("[::1]:50051"));
  EXPECT_FALSE(IsLoopbackListen("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackListen(":50051"));
  EXPECT_FALSE(IsLoopbackListen("10.1.2.3:50051"));
  EXPECT_FALSE(IsLoopbackListen("garbage"));
}

TEST(MakeServerCredentialsTest, RefusesHalfConfiguredTlsAndMissingFiles) {
  EXPECT_TRUE(MakeServerCredentials({}).ok());
  EXPECT_EQ(MakeServerCredentials({"cert.pem", "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerCredentials({"", "", "ca.pem"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const auto missing = MakeServerCredentials({"/nonexistent/c.pem", "/nonexistent/k.pem", ""});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("--tls_cert"), std::string::npos);
}

}  // namespace
}  // namespace attnd::server::front
