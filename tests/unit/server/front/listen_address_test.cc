#include "server/front/listen_address.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

namespace attnd::server::front {
namespace {

TEST(ListenAddressTest, UnixForms) {
  auto a = ParseListenAddress("unix:///tmp/attnd.sock");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->is_unix());
  EXPECT_EQ(a->unix_path, "/tmp/attnd.sock");
  EXPECT_EQ(a->grpc_uri, "unix:///tmp/attnd.sock");

  auto b = ParseListenAddress("unix:/run/a.sock");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->unix_path, "/run/a.sock");
  auto c = ParseListenAddress("unix:rel.sock");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->unix_path, "rel.sock");
}

TEST(ListenAddressTest, TcpForms) {
  auto a = ParseListenAddress("0.0.0.0:50051");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->is_unix());
  EXPECT_EQ(a->grpc_uri, "0.0.0.0:50051");
  auto hp = ParseHostPort("[::1]:9401");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 9401);
  auto any = ParseHostPort(":80");
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->host, "0.0.0.0");
}

TEST(ListenAddressTest, BadAddresses) {
  EXPECT_EQ(ParseListenAddress("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseListenAddress("unix://").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseListenAddress("localhost").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseListenAddress("localhost:http").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseHostPort("h:70000").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string long_path = "unix:///" + std::string(200, 'x');
  const auto too_long = ParseListenAddress(long_path);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("201 bytes"), std::string::npos) << too_long.status();
}

class SocketFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/attnd-front-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/s.sock";
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  void MakeSocketFile() {
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);  // the file stays: a stale socket
  }
  std::string dir_;
  std::string path_;
};

TEST_F(SocketFileTest, RemovesStaleSocketAndSetsMode) {
  EXPECT_TRUE(RemoveStaleUnixSocket(path_).ok());  // nothing there is fine
  MakeSocketFile();
  ASSERT_EQ(access(path_.c_str(), F_OK), 0);
  ASSERT_TRUE(RemoveStaleUnixSocket(path_).ok());
  EXPECT_NE(access(path_.c_str(), F_OK), 0);

  MakeSocketFile();
  ASSERT_TRUE(SetSocketPermissions(path_, 0600).ok());
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_TRUE(SetSocketPermissions(path_, 0660).ok());
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
}

TEST_F(SocketFileTest, NeverRemovesARegularFile) {
  { std::ofstream(path_) << "precious"; }
  const absl::Status s = RemoveStaleUnixSocket(path_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(access(path_.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace attnd::server::front
