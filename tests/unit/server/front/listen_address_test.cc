#include "server/front/listen_address.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
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
  // A socket bound at path_ (-1 on failure, which the test then reports).
  int BindSocketFile() {
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  void MakeSocketFile() {
    const int fd = BindSocketFile();
    ASSERT_GE(fd, 0);
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

// A socket some process still listens on is another daemon's: never taken over.
TEST_F(SocketFileTest, NeverRemovesASocketAProcessListensOn) {
  const int fd = BindSocketFile();
  ASSERT_GE(fd, 0);
  ASSERT_EQ(listen(fd, 1), 0);
  const absl::Status s = RemoveStaleUnixSocket(path_);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("is in use: a process listens on it"), std::string::npos) << s;
  EXPECT_EQ(access(path_.c_str(), F_OK), 0);
  close(fd);  // now stale
  EXPECT_TRUE(RemoveStaleUnixSocket(path_).ok());
  EXPECT_NE(access(path_.c_str(), F_OK), 0);
}

TEST_F(SocketFileTest, SocketDirectoryMustExistAndBeADirectory) {
  EXPECT_TRUE(CheckUnixSocketDirectory(path_).ok());
  const absl::Status missing = CheckUnixSocketDirectory(dir_ + "/no-such-dir/s.sock");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("the directory '" + dir_ + "/no-such-dir' of unix socket '" +
                                   dir_ + "/no-such-dir/s.sock' does not exist"),
            std::string::npos)
      << missing;
  { std::ofstream(path_) << "a file"; }
  const absl::Status file = CheckUnixSocketDirectory(path_ + "/s.sock");
  EXPECT_EQ(file.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(file.message().find("'" + path_ + "' (of unix socket '" + path_ +
                                "/s.sock') is not a directory"),
            std::string::npos)
      << file;
}

TEST(TcpBindProblemTest, NamesAPortInUse) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  EXPECT_EQ(TcpBindProblem({"127.0.0.1", port}),
            "port " + std::to_string(port) + " of 127.0.0.1 is in use (another attnd?)");
  close(fd);
  EXPECT_EQ(TcpBindProblem({"127.0.0.1", port}), "");  // free again
  // TEST-NET-1 (RFC 5737): no machine has it.
  EXPECT_EQ(TcpBindProblem({"192.0.2.1", port}), "192.0.2.1 is not an address of this machine");
}

TEST_F(SocketFileTest, NeverRemovesARegularFile) {
  { std::ofstream(path_) << "precious"; }
  const absl::Status s = RemoveStaleUnixSocket(path_);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(access(path_.c_str(), F_OK), 0);
}

}  // namespace
}  // namespace attnd::server::front
