// What a real daemon exposes to callers without the token or the socket's permissions: gRPC
// reflection is off unless asked for (it answers without a token, so it is refused together with
// one), and the unix socket never exists with wider permissions than --socket_mode, not even for
// a moment under umask 000.
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace attnd::testing {
namespace {

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo with one request,
// list_services="" (field 7), sent as raw bytes: the status and the answer's bytes.
std::pair<grpc::Status, std::string> ListServicesByReflection(const std::string& target) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::internal::RpcMethod method(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &context));
  grpc::Slice request(std::string("\x3a\x00", 2));
  stream->Write(grpc::ByteBuffer(&request, 1));
  stream->WritesDone();
  std::string answer;
  grpc::ByteBuffer response;
  while (stream->Read(&response)) {
    std::vector<grpc::Slice> slices;
    (void)response.Dump(&slices);
    for (const grpc::Slice& s : slices) {
      answer.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  return {stream->Finish(), answer};
}

TEST(ReflectionTest, OffByDefault) {
  auto daemon = DaemonProcess::Start();
  ATTND_ASSERT_OK(daemon);
  const auto [status, answer] = ListServicesByReflection((*daemon)->target());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << status.error_message();
  EXPECT_EQ(answer.find("attnd.v1.Attnd"), std::string::npos);
}

TEST(ReflectionTest, OnWithTheFlag) {
  DaemonOptions options;
  options.extra_flags = {"--grpc_reflection"};
  auto daemon = DaemonProcess::Start(options);
  ATTND_ASSERT_OK(daemon);
  const auto [status, answer] = ListServicesByReflection((*daemon)->target());
  if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    GTEST_SKIP() << "this build has no grpc++_reflection";
  }
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(answer.find("attnd.v1.Attnd"), std::string::npos);
}

TEST(ReflectionTest, RefusedTogetherWithAToken) {
  char dir[] = "/tmp/attnd-reflection-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string token_file = absl::StrCat(dir, "/token");
  std::ofstream(token_file) << "reflection-test-token-0123456789\n";
  chmod(token_file.c_str(), 0600);
  DaemonOptions options;
  options.extra_flags = {"--grpc_reflection", "--token_file=" + token_file};
  auto daemon = DaemonProcess::Start(options);
  unlink(token_file.c_str());
  rmdir(dir);
  ASSERT_FALSE(daemon.ok()) << "attnd started with reflection and a token";
  EXPECT_NE(daemon.status().message().find("--grpc_reflection cannot be combined with a token"),
            std::string::npos)
      << daemon.status();
}

}  // namespace
}  // namespace attnd::testing
