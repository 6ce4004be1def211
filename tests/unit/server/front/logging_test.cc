#include "server/front/logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

namespace attnd::server::front {
namespace {

TEST(LoggingTest, JsonEscape) {
  EXPECT_EQ(JsonEscape("plain text"), "plain text");
  EXPECT_EQ(JsonEscape("say \"hi\""), "say \\\"hi\\\"");
  EXPECT_EQ(JsonEscape("a\\b"), "a\\\\b");
  EXPECT_EQ(JsonEscape("l1\nl2\tx\r"), "l1\\nl2\\tx\\r");
  EXPECT_EQ(JsonEscape(std::string("\x01", 1)), "\\u0001");
}

TEST(LoggingTest, LevelsAreChecked) {
  EXPECT_TRUE(SetUpLogging({"debug", false}).ok());
  EXPECT_TRUE(SetUpLogging({"warn", true}).ok());
  EXPECT_EQ(SetUpLogging({"loud", false}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(SetUpLogging({"info", false}).ok());
}

}  // namespace
}  // namespace attnd::server::front

namespace attnd::server::front {
namespace {

TEST(LoggingTest, JsonLinesAreOneObjectPerLine) {
  ASSERT_TRUE(SetUpLogging({"info", true}).ok());
  ::testing::internal::CaptureStderr();
  spdlog::info("pool \"{}\" created\nsecond line", "kv0");
  spdlog::debug("below the level");
  spdlog::default_logger()->flush();
  const std::string out = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(SetUpLogging({"info", false}).ok());
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.rfind("{\"time\":\"", 0), 0u) << out;
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "one line only: " << out;
  EXPECT_NE(out.find("\"level\":\"info\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"msg\":\"pool \\\"kv0\\\" created\\nsecond line\"}"), std::string::npos)
      << out;
}

}  // namespace
}  // namespace attnd::server::front

namespace attnd::server::front {
namespace {

std::string CaptureOneLog(bool json, const std::string& message) {
  EXPECT_TRUE(SetUpLogging({"info", json}).ok());
  ::testing::internal::CaptureStderr();
  spdlog::warn("session opened by '{}'", message);
  spdlog::default_logger()->flush();
  std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(SetUpLogging({"info", false}).ok());
  return out;
}

// A client's name with a newline must not forge a log line of its own, in either format.
TEST(LoggingTest, ClientTextCannotStartALine) {
  const std::string forged = "engine\n[2026-01-01 00:00:00.000000] [critical] [1] fake\r\x1b[2K";
  for (const bool json : {false, true}) {
    const std::string out = CaptureOneLog(json, forged);
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(out.find('\n'), out.size() - 1) << "one line only: " << out;
    EXPECT_EQ(out.find('\r'), std::string::npos) << out;
    EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
    EXPECT_NE(out.find("engine\\n[2026-01-01"), std::string::npos) << out;
  }
}

TEST(LoggingTest, LongMessagesAreCut) {
  for (const bool json : {false, true}) {
    const std::string out = CaptureOneLog(json, std::string(1 << 20, 'n'));
    EXPECT_LT(out.size(), kMaxLogMessageBytes + 200) << json;
    EXPECT_NE(out.find(" bytes cut)"), std::string::npos);
  }
}

}  // namespace
}  // namespace attnd::server::front
