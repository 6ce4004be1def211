// File descriptors against a real daemon started under a low RLIMIT_NOFILE (prlimit). A
// registered shared-memory buffer holds none (its sealed memfd is mapped, then closed); what
// holds descriptors are connections and the memfds clients sent and have not registered yet,
// both bounded by the budget derived from the limit. The daemon raises its soft limit to the
// hard limit at start; one session's buffers within quota never keep new clients out, and what
// would pass the budget is refused cleanly (RESOURCE_EXHAUSTED) while the daemon serves on.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "daemon_process.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace attnd::testing {
namespace {

constexpr uint64_t kBufferBytes = 4096;

// The "Max open files" line of /proc/PID/limits: {soft, hard}.
std::pair<uint64_t, uint64_t> OpenFileLimits(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/limits"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::string("Max open files").size()));
    uint64_t soft = 0, hard = 0;
    fields >> soft >> hard;
    return {soft, hard};
  }
  return {0, 0};
}

class FdLimitTest : public ::testing::Test {
 protected:
  void Start(const std::string& nofile) {
    DaemonOptions options;
    options.command_prefix = {"prlimit", "--nofile=" + nofile, "--"};
    auto daemon = DaemonProcess::Start(options);
    ATTND_ASSERT_OK(daemon);
    daemon_ = *std::move(daemon);
    client_ = daemon_->NewClient();
    auto session = client_->OpenSession("many-buffers");
    ATTND_ASSERT_OK(session);
    session_ = *std::move(session);
    auto region = client::SharedMemoryRegion::Create("attnd-fd-test", kBufferBytes);
    ATTND_ASSERT_OK(region);
    region_ = *std::move(region);
  }
  void TearDown() override {
    if (HasFailure() && daemon_ != nullptr) std::cerr << daemon_->LogTail() << "\n";
  }

  // Registers the shared-memory region up to `count` times; the ids, and the first error.
  absl::Status RegisterBuffers(int count) {
    for (int i = 0; i < count; ++i) {
      auto id = session_->RegisterSharedMemory(*region_, kBufferBytes);
      if (!id.ok()) return id.status();
      buffer_ids_.push_back(*id);
    }
    return absl::OkStatus();
  }

  // A new client connects and opens a session (a new connection needs descriptors).
  absl::Status NewClientServes() {
    auto client = daemon_->NewClient();
    auto session = client->OpenSession("newcomer");
    if (!session.ok()) return session.status();
    return (*session)->GetServerInfo().status();
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<client::Session> session_;
  std::unique_ptr<client::SharedMemoryRegion> region_;
  std::vector<std::string> buffer_ids_;
};

TEST_F(FdLimitTest, SoftLimitIsRaisedAndBuffersWithinQuotaKeepNewClientsWelcome) {
  ASSERT_NO_FATAL_FAILURE(Start("128:4096"));
  EXPECT_EQ(OpenFileLimits(daemon_->pid()), std::make_pair(uint64_t{4096}, uint64_t{4096}));
  EXPECT_NE(daemon_->LogTail(1 << 16).find("RLIMIT_NOFILE: soft limit 128 -> 4096 (hard limit "
                                           "4096); client buffers may hold 3687 file descriptors"),
            std::string::npos);
  // Well past the 128 descriptors the daemon was started with.
  ATTND_ASSERT_OK(RegisterBuffers(400));
  ATTND_EXPECT_OK(NewClientServes());
  EXPECT_TRUE(daemon_->IsRunning());
}

TEST_F(FdLimitTest, BuffersHoldNoDescriptorsAndPendingOnesAreBounded) {
  // Soft = hard: nothing to raise; the budget for clients is 80 descriptors.
  ASSERT_NO_FATAL_FAILURE(Start("160:160"));
  EXPECT_NE(daemon_->LogTail(1 << 16).find("client buffers may hold 80 file descriptors"),
            std::string::npos);
  // Far more registered buffers than the limit has descriptors: each memfd was mapped and
  // closed, so new clients still get in.
  ATTND_ASSERT_OK(RegisterBuffers(300));
  ATTND_EXPECT_OK(NewClientServes());
  // Descriptors sent and never registered are what holds the daemon's descriptors: bounded per
  // process, refused beyond (the daemon closes what it refuses), and the daemon serves on.
  std::vector<std::string> tokens;
  absl::Status refused;
  for (int i = 0; i < 100 && refused.ok(); ++i) {
    auto token = session_->peer_link()->SendFd(region_->fd());
    if (token.ok()) {
      tokens.push_back(*token);
    } else {
      refused = token.status();
    }
  }
  EXPECT_TRUE(StatusIs(refused, absl::StatusCode::kFailedPrecondition, {"quota"})) << refused;
  EXPECT_GE(tokens.size(), 1u);
  EXPECT_LE(tokens.size(), 40u);
  ATTND_EXPECT_OK(NewClientServes());
  // Registering one of them frees its slot.
  v1::RegisterBufferRequest request;
  request.mutable_shared_memory_fd()->set_fd_token(tokens.back());
  request.set_size_bytes(kBufferBytes);
  ATTND_ASSERT_OK(session_->RegisterBuffer(request));
  ATTND_EXPECT_OK(session_->peer_link()->SendFd(region_->fd()));
  EXPECT_TRUE(daemon_->IsRunning());
}

}  // namespace
}  // namespace attnd::testing
