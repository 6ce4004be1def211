// Async completion on the CPU backend (no GPU needed): validation of RegisterEvent /
// UnregisterEvent / GetCompletionEvent and of Run/AppendKv's wait_event_id and completion
// fields, and the documented CPU behaviour of COMPLETION_ASYNC (the work completes before the
// reply: o is in the client's buffer when Run returns).
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>

#include <cstring>
#include <random>
#include <string>

#include "attnd/kernels/float_convert.h"
#include "core_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

class CoreEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    core_ = MakeCore();
    peer_ = AddTestPeer(*core_);
    session_ = Open(*core_, SessionBinding::kStream, "test", 0, peer_);
  }
  std::unique_ptr<Core> core_;
  Identity peer_;  // the session's owner, a peer that can pass shared memory
  std::string session_;
};

TEST_F(CoreEventsTest, RegisterEventRejectsAHandleOfTheWrongSize) {
  v1::RegisterEventRequest request;
  request.set_ipc_event_handle(std::string(63, 'x'));
  auto response = core_->RegisterEvent(session_, request);
  ASSERT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("ipc_event_handle has 63 bytes"));
}

TEST_F(CoreEventsTest, RegisterEventRejectsANegativeDevice) {
  v1::RegisterEventRequest request;
  request.set_ipc_event_handle(std::string(64, 'x'));
  request.set_device(-2);
  auto response = core_->RegisterEvent(session_, request);
  ASSERT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("device=-2"));
}

TEST_F(CoreEventsTest, CpuBackendHasNoInterprocessEvents) {
  v1::RegisterEventRequest request;
  request.set_ipc_event_handle(std::string(64, 'x'));
  auto registered = core_->RegisterEvent(session_, request);
  ASSERT_EQ(registered.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(registered.status().message()), HasSubstr("ipc_event_handle"));
  EXPECT_THAT(std::string(registered.status().message()), HasSubstr("cpu"));
  auto completion = core_->GetCompletionEvent(session_, v1::GetCompletionEventRequest());
  EXPECT_EQ(completion.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CoreEventsTest, UnregisterUnknownEventIsNotFound) {
  v1::UnregisterEventRequest request;
  request.set_event_id("e-nope");
  auto response = core_->UnregisterEvent(session_, request);
  ASSERT_EQ(response.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(response.status().message()),
              HasSubstr("event_id='e-nope': no such event in this session"));
}

TEST_F(CoreEventsTest, EventCommandsNeedALiveSession) {
  auto response = core_->GetCompletionEvent("s-missing", v1::GetCompletionEventRequest());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kNotFound);
}

// A decode plan over one request of 3 tokens in a fresh pool (page_size 4, 2 kv heads, d 64).
class CoreAsyncRunTest : public CoreEventsTest {
 protected:
  void SetUp() override {
    CoreEventsTest::SetUp();
    pool_ = CreatePool(*core_, session_);
    pages_ = Allocate(*core_, session_, pool_.pool_id(), 1);
    ASSERT_EQ(pages_.size(), 1u);
    auto plan = core_->CreatePlan(
        session_, PlanRequest(pool_.pool_id(), v1::ATTENTION_KIND_DECODE, 4, {pages_}, {3}, {}));
    ASSERT_TRUE(plan.ok()) << plan.status();
    plan_id_ = plan->plan_id();
  }

  v1::Tensor Inline(std::vector<int64_t> shape, int64_t count) {
    std::string bytes(count * 2, '\0');
    std::uniform_real_distribution<float> dist(-1, 1);
    for (int64_t i = 0; i < count; ++i) {
      const uint16_t h = kernels::FloatToHalfBits(dist(rng_));
      std::memcpy(&bytes[i * 2], &h, 2);
    }
    v1::Tensor t;
    t.set_dtype(v1::DTYPE_FLOAT16);
    for (int64_t d : shape) t.add_shape(d);
    t.set_inline_data(std::move(bytes));
    return t;
  }

  v1::RunRequest RunWithInlineQ() {
    v1::RunRequest run;
    run.set_plan_id(plan_id_);
    run.set_layer(0);
    *run.mutable_q() = Inline({1, 4, 64}, 4 * 64);
    return run;
  }

  std::mt19937 rng_{7};
  v1::PoolInfo pool_;
  std::vector<int32_t> pages_;
  std::string plan_id_;
};

TEST_F(CoreAsyncRunTest, UnknownWaitEventIsNotFoundAndNamesTheField) {
  v1::RunRequest run = RunWithInlineQ();
  run.set_wait_event_id("e-unknown");
  auto response = core_->Run(session_, run);
  ASSERT_EQ(response.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(response.status().message()),
              HasSubstr("wait_event_id='e-unknown': no such event in this session"));

  v1::AppendKvRequest append;
  append.set_plan_id(plan_id_);
  *append.mutable_k() = Inline({1, 2, 64}, 2 * 64);
  *append.mutable_v() = Inline({1, 2, 64}, 2 * 64);
  append.set_wait_event_id("e-unknown");
  auto appended = core_->AppendKv(session_, append);
  ASSERT_EQ(appended.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(appended.status().message()), HasSubstr("wait_event_id='e-unknown'"));
}

TEST_F(CoreAsyncRunTest, AsyncRunWithInlineOutputIsRejected) {
  v1::RunRequest run = RunWithInlineQ();
  run.set_completion(v1::COMPLETION_ASYNC);
  auto response = core_->Run(session_, run);
  ASSERT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("o in a registered buffer"));
}

TEST_F(CoreAsyncRunTest, UnknownCompletionValueIsRejected) {
  v1::RunRequest run = RunWithInlineQ();
  run.set_completion(static_cast<v1::Completion>(7));
  auto response = core_->Run(session_, run);
  ASSERT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("completion=7"));
}

// On the CPU backend ASYNC completes before the reply: o in a shared-memory buffer equals the
// SYNC run's inline o, and AppendKv ASYNC is accepted.
TEST_F(CoreAsyncRunTest, AsyncOnCpuCompletesBeforeTheReply) {
  const size_t bytes = 4 * 64 * 2;
  TestMemfd memfd(bytes);
  char* map = memfd.data();
  std::memset(map, 0xFF, bytes);  // NaN poison: an unwritten o cannot match
  auto token = SendFd(*core_, peer_, memfd.fd());
  ASSERT_TRUE(token.ok()) << token.status();
  v1::RegisterBufferRequest reg;
  reg.mutable_shared_memory_fd()->set_fd_token(*token);
  reg.set_size_bytes(bytes);
  auto buffer = core_->RegisterBuffer(session_, reg);
  ASSERT_TRUE(buffer.ok()) << buffer.status();

  v1::AppendKvRequest append;
  append.set_plan_id(plan_id_);
  *append.mutable_k() = Inline({1, 2, 64}, 2 * 64);
  *append.mutable_v() = Inline({1, 2, 64}, 2 * 64);
  append.set_completion(v1::COMPLETION_ASYNC);
  ASSERT_TRUE(core_->AppendKv(session_, append).ok());

  v1::RunRequest sync_run = RunWithInlineQ();
  auto sync = core_->Run(session_, sync_run);
  ASSERT_TRUE(sync.ok()) << sync.status();
  ASSERT_EQ(sync->o().inline_data().size(), bytes);

  v1::RunRequest async_run = sync_run;
  async_run.set_completion(v1::COMPLETION_ASYNC);
  async_run.mutable_o()->set_dtype(v1::DTYPE_FLOAT16);
  for (int64_t d : {1, 4, 64}) async_run.mutable_o()->add_shape(d);
  async_run.mutable_o()->mutable_buffer()->set_buffer_id(buffer->buffer_id());
  auto async = core_->Run(session_, async_run);
  ASSERT_TRUE(async.ok()) << async.status();
  EXPECT_FALSE(async->has_o());
  EXPECT_EQ(std::memcmp(map, sync->o().inline_data().data(), bytes), 0);
}

}  // namespace
}  // namespace attnd::server::testing
