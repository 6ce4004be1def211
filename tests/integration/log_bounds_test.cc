// What a client sends comes back and goes to the log bounded: a status message echoing a
// multi-MiB id or shape is cut (and keeps its code: uncut, gRPC failed the call with
// RESOURCE_EXHAUSTED because the message travels in trailing metadata), failed commands flood
// the log no more than a few lines per second per session, and a newline in a client's name
// cannot forge a log line.
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include "attnd/client/unary_session.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "daemon_fixture.h"

namespace attnd::testing {
namespace {

using absl::StatusCode;

constexpr size_t kMaxStatusMessageBytes = 1024;  // server/front/status_convert.h

class LogBoundsTest : public DaemonTest {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }

 protected:
  // A decode plan of one request in `session`; a Run over it whose q names `buffer_id`.
  v1::RunRequest RunNamingBuffer(client::SessionApi& session, const std::string& buffer_id) {
    const ModelShape shape;
    auto plan = CreateDecodePlan(session, shape, UniqueName("log-bounds"));
    EXPECT_TRUE(plan.ok()) << plan.status();
    v1::RunRequest run;
    run.set_plan_id(plan.ok() ? plan->plan_id : "");
    *run.mutable_q() =
        client::MakeBufferTensor(buffer_id, 0, {1, shape.qo_heads, shape.head_dim}, shape.q_dtype);
    return run;
  }

  static size_t LogSize() {
    struct stat st {};
    return stat(daemon().log_path().c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
  }
};

TEST_F(LogBoundsTest, MultiMegabyteIdGetsItsCodeWithAShortMessage) {
  const std::string huge_id(4 << 20, 'x');
  // Unary: the status message travels in trailing metadata.
  auto unary = client_->OpenUnarySession("huge-id-unary");
  ATTND_ASSERT_OK(unary);
  const v1::RunRequest run = RunNamingBuffer(**unary, huge_id);
  auto result = (*unary)->Run(run);
  // Cut where it is made (the core echoes 64 bytes of a value and its size), and again on the
  // way out (at most kMaxStatusMessageBytes whatever a message says).
  EXPECT_TRUE(StatusIs(result, StatusCode::kNotFound, {"buffer_id='xxxx", "(4194304 bytes)"}));
  EXPECT_LE(result.status().message().size(), kMaxStatusMessageBytes);
  // The Session stream: the message travels in the SessionResponse.
  auto stream = client_->OpenSession("huge-id-stream");
  ATTND_ASSERT_OK(stream);
  const v1::RunRequest stream_run = RunNamingBuffer(**stream, huge_id);
  result = (*stream)->Run(stream_run);
  EXPECT_TRUE(StatusIs(result, StatusCode::kNotFound, {"buffer_id='xxxx", "(4194304 bytes)"}));
  EXPECT_LE(result.status().message().size(), kMaxStatusMessageBytes);
  ExpectServing();
}

TEST_F(LogBoundsTest, FourMillionDimensionShapeGetsAShortMessage) {
  auto session = client_->OpenUnarySession("huge-shape");
  ATTND_ASSERT_OK(session);
  v1::RunRequest run = RunNamingBuffer(**session, "b-none");
  run.mutable_q()->clear_shape();
  for (int i = 0; i < (4 << 20); ++i) run.mutable_q()->add_shape(1);
  auto result = (*session)->Run(run);
  EXPECT_TRUE(StatusIs(result, StatusCode::kInvalidArgument, {"q.", "(4194304 dims)"}));
  EXPECT_LE(result.status().message().size(), kMaxStatusMessageBytes);
}

TEST_F(LogBoundsTest, AThousandErrorsGrowTheLogBoundedly) {
  auto session = client_->OpenSession("error-loop");
  ATTND_ASSERT_OK(session);
  // Each error's message echoes a 64 KiB id: uncut and unlimited, 64 MiB of log.
  const v1::RunRequest run = RunNamingBuffer(**session, std::string(64 << 10, 'y'));
  const size_t before = LogSize();
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(StatusIs((*session)->Run(run), StatusCode::kNotFound)) << i;
  }
  absl::SleepFor(absl::Milliseconds(2500));  // the "suppressed N" report of the last window
  const size_t grown = LogSize() - before;
  EXPECT_LT(grown, size_t{128} << 10) << "the log grew by " << grown << " bytes";
  const std::string tail = daemon().LogTail(16 << 10);
  EXPECT_NE(tail.find("suppressed "), std::string::npos) << tail;
  // Sessions appear in logs by their tag ("s12"), never by their id.
  EXPECT_NE(tail.find(" similar errors: Run in session s"), std::string::npos) << tail;
  EXPECT_EQ(tail.find((*session)->session_id()), std::string::npos) << tail;
}

TEST_F(LogBoundsTest, NewlineInAClientNameDoesNotForgeALogLine) {
  const std::string forged = "[2026-01-01 00:00:00.000000] [critical] [1] fake line";
  auto session = client_->OpenSession("engine\n" + forged);
  ATTND_ASSERT_OK(session);
  ATTND_ASSERT_OK((*session)->Close());
  absl::SleepFor(absl::Milliseconds(100));
  const std::string log = daemon().LogTail(1 << 20);
  // The core keeps client names escaped (\x0a), and the log escapes what it writes again.
  EXPECT_NE(log.find("engine\\\\x0a" + forged), std::string::npos) << "the name is not logged";
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_NE(line.rfind("[2026-01-01 00:00:00", 0), 0u) << "forged line: " << line;
  }
}

}  // namespace
}  // namespace attnd::testing
