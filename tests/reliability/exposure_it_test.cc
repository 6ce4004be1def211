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

// Started under umask 000, the socket must appear with --socket_mode (0660) already: a chmod
// after the bind left it 0777 for a moment, in which any local user could connect. Each start
// polls the path from the moment the process is spawned.
TEST(SocketModeTest, TheSocketIsBornWithItsMode) {
  for (int start = 0; start < 3; ++start) {
    std::atomic<bool> stop{false};
    std::atomic<int> first_mode{-1};
    std::thread watcher;
    DaemonOptions options;
    options.on_spawned = [&](const std::string& socket_path) {
      watcher = std::thread([&stop, &first_mode, socket_path] {
        struct stat st {};
        while (!stop.load(std::memory_order_relaxed)) {
          if (lstat(socket_path.c_str(), &st) == 0) {
            first_mode = static_cast<int>(st.st_mode & 07777);
            return;
          }
        }
      });
    };
    const mode_t previous_umask = umask(0);
    auto daemon = DaemonProcess::Start(options);
    umask(previous_umask);
    stop = true;
    if (watcher.joinable()) watcher.join();
    ATTND_ASSERT_OK(daemon);
    EXPECT_EQ(first_mode.load(), 0660) << "start " << start << ": the socket appeared with mode "
                                       << std::oct << first_mode.load();
    struct stat st {};
    ASSERT_EQ(stat((*daemon)->target().substr(std::string("unix://").size()).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0660u);
  }
}

}  // namespace
}  // namespace attnd::testing
