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
