// File descriptors against a real daemon started under a low RLIMIT_NOFILE (prlimit): every
// registered shared-memory buffer holds one. The daemon raises its soft limit to the hard limit
// at start, so one session's buffers within quota do not keep new clients out; and where the
// limit cannot be raised, running out of descriptors fails the commands that need one (cleanly:
// RESOURCE_EXHAUSTED) and the daemon recovers once they are released.
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
    shm_name_ = absl::StrCat("/attnd-fd-test-", getpid());
    const int fd = shm_open(shm_name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, kBufferBytes), 0);
    close(fd);
  }
  void TearDown() override {
    if (!shm_name_.empty()) shm_unlink(shm_name_.c_str());
    if (HasFailure() && daemon_ != nullptr) std::cerr << daemon_->LogTail() << "\n";
  }

  // Registers the shared-memory object up to `count` times; the ids, and the first error.
  absl::Status RegisterBuffers(int count) {
    for (int i = 0; i < count; ++i) {
      auto id = session_->RegisterSharedMemory(shm_name_, kBufferBytes);
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
  std::string shm_name_;
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

TEST_F(FdLimitTest, RunningOutOfDescriptorsFailsCleanlyAndRecovers) {
  // Soft = hard: nothing to raise. The buffers take what is left, until shm_open fails.
  ASSERT_NO_FATAL_FAILURE(Start("160:160"));
  EXPECT_NE(daemon_->LogTail(1 << 16).find("client buffers may hold 80 file descriptors"),
            std::string::npos);
  const absl::Status exhausted = RegisterBuffers(200);
  EXPECT_TRUE(StatusIs(exhausted, absl::StatusCode::kResourceExhausted, {"shm_open"}))
      << "after " << buffer_ids_.size() << " buffers";
  ASSERT_GT(buffer_ids_.size(), 50u);
  // No descriptor left: a new client may not get in, but the daemon lives and the session works.
  (void)NewClientServes();
  ASSERT_TRUE(daemon_->IsRunning()) << daemon_->LogTail();
  ATTND_ASSERT_OK(session_->GetServerInfo());
  // Releasing buffers gives the descriptors back: new clients are served again.
  for (size_t i = 0; i < buffer_ids_.size() / 2; ++i) {
    ATTND_ASSERT_OK(session_->UnregisterBuffer(buffer_ids_[i]));
  }
  absl::Status newcomer = absl::UnknownError("not tried");
  for (int attempt = 0; attempt < 50 && !newcomer.ok(); ++attempt) {
    newcomer = NewClientServes();
    if (!newcomer.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  ATTND_EXPECT_OK(newcomer);
  EXPECT_TRUE(daemon_->IsRunning());
}

}  // namespace
}  // namespace attnd::testing
