// The pure parts of the request rules (server/core/request_rules.h). CheckRun and CheckAppendKv
// are exercised through Core in commands/run_rules_test.cc and commands/runs_test.cc.
#include "server/core/request_rules.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnd::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(RequestRulesTest, ReplyFitsWithoutALimit) {
  EXPECT_TRUE(CheckReplyFits(0, "Run", uint64_t{1} << 40, "advice").ok());
}

TEST(RequestRulesTest, ReplyFitsWithRoomForItsEnvelope) {
  EXPECT_TRUE(CheckReplyFits(4096, "Run", 4096 - 256, "advice").ok());
  const absl::Status over = CheckReplyFits(4096, "Run", 4096 - 255, "use buffers");
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()),
              AllOf(HasSubstr("Run: the reply would be up to 4097 bytes"),
                    HasSubstr("--max_message_bytes=4096"), HasSubstr("use buffers")));
}

}  // namespace
}  // namespace attnd::server
