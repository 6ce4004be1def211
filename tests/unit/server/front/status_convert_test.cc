#include "server/front/status_convert.h"

#include <gtest/gtest.h>

namespace attnd::server::front {
namespace {

TEST(StatusConvertTest, OkIsOk) {
  const grpc::Status s = ToGrpcStatus(absl::OkStatus());
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(s.error_message(), "");
}

TEST(StatusConvertTest, EveryCanonicalCodeKeepsCodeAndMessage) {
  for (int code = 1; code <= 16; ++code) {
    const std::string message = "kv_last_page_len[3]=17 is outside 1..page_size (16) #" +
                                std::to_string(code);
    const absl::Status in(static_cast<absl::StatusCode>(code), message);
    const grpc::Status out = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(out.error_code()), code);
    EXPECT_EQ(out.error_message(), message);
  }
}

TEST(StatusConvertTest, SpecificCodesMapByName) {
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("x")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(absl::ResourceExhaustedError("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcStatus(absl::FailedPreconditionError("x")).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ToGrpcStatus(absl::UnauthenticatedError("x")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST(StatusConvertTest, CodeNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kInvalidArgument), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kUnauthenticated), "UNAUTHENTICATED");
}

}  // namespace
}  // namespace attnd::server::front

namespace attnd::server::front {
namespace {

// A message echoing a 4 MiB id keeps its code and comes out bounded (gRPC would otherwise fail
// the call with RESOURCE_EXHAUSTED: the message travels in trailing metadata).
TEST(StatusConvertTest, LongMessagesAreCutKeepingTheCode) {
  const absl::Status in =
      absl::NotFoundError("q.buffer.buffer_id='" + std::string(4 << 20, 'b') + "' not found");
  const grpc::Status out = ToGrpcStatus(in);
  EXPECT_EQ(out.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LE(out.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_EQ(out.error_message().rfind("q.buffer.buffer_id='bbb", 0), 0u);
  EXPECT_NE(out.error_message().find(" bytes cut)"), std::string::npos);
  EXPECT_EQ(StatusMessageForClient(in), out.error_message());
}

}  // namespace
}  // namespace attnd::server::front
