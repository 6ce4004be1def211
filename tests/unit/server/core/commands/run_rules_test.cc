// The rules of AppendKv and Run through Core (server/core/request_rules.h, commands/runs.cc):
// appends into shared pages and the status codes of bad run requests.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

TEST(CoreSessionsTest, AppendsIntoSharedPagesAreRefused) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, a);
  ASSERT_TRUE(AttachByName(*core, b).ok());
  // Prefix page p0 (full), tail page p1.
  const std::vector<int32_t> pages = Allocate(*core, a, pool.pool_id(), 2);
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  fork.add_page_ids(pages[0]);
  fork.set_target_grant(ForkGrantOf(*core, b, pool.pool_id()));
  ASSERT_TRUE(core->ForkPages(a, fork).ok());

  // Decode over [p0, p1] writes only p1 (unshared): fine.
  EXPECT_TRUE(core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                              {{pages[0], pages[1]}}, {2}, {}))
                  .ok());
  // Prefill of 6 tokens over [p0, p1] writes p0 too, which b shares.
  EXPECT_STATUS(core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 2,
                                                {{pages[0], pages[1]}}, {2}, {6}))
                    .status(),
                kFailedPrecondition,
                HasSubstr("page " + std::to_string(pages[0]) + " is shared with another session"));
  // b's decode whose last page is the shared p0: refused as well.
  EXPECT_EQ(core->CreatePlan(b, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                            {{pages[0]}}, {4}, {}))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);

  // A plan made while p1 was unshared cannot append once p1 is shared later.
  auto plan = core->CreatePlan(a, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 2,
                                              {{pages[0], pages[1]}}, {3}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  fork.set_page_ids(0, pages[1]);
  ASSERT_TRUE(core->ForkPages(a, fork).ok());
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  *run.mutable_q() = HalfTensor({1, 2, 64});
  *run.mutable_k() = HalfTensor({1, 2, 64});
  *run.mutable_v() = HalfTensor({1, 2, 64});
  EXPECT_STATUS(core->Run(a, run).status(), kFailedPrecondition,
                HasSubstr("page " + std::to_string(pages[1]) + " is shared"));
  // Reading is still fine.
  run.clear_k();
  run.clear_v();
  EXPECT_TRUE(core->Run(a, run).ok());
}

TEST(CoreSessionsTest, RunRequestsAreValidatedThroughCore) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 2);
  auto plan = core->CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 4,
                                              {{pages[0], pages[1]}}, {3}, {5}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::RunRequest good;
  good.set_plan_id(plan->plan_id());
  *good.mutable_q() = HalfTensor({5, 4, 64});
  ASSERT_TRUE(core->Run(s, good).ok());

  v1::RunRequest r = good;
  r.set_layer(2);
  EXPECT_STATUS(core->Run(s, r).status(), kOutOfRange, HasSubstr("layer=2 is outside 0..1"));
  r = good;
  *r.mutable_q() = HalfTensor({5, 4, 32});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("q.shape=[5,4,32], expected [5,4,64]"));
  r = good;
  r.mutable_q()->set_dtype(v1::DTYPE_FLOAT8_E4M3);
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("q.dtype=DTYPE_FLOAT8_E4M3"));
  r = good;
  r.clear_q();
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("q has no data"));
  r = good;
  *r.mutable_k() = HalfTensor({5, 2, 64});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("k is set but v is not"));
  *r.mutable_v() = HalfTensor({4, 2, 64});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("v.shape=[4,2,64], expected [5,2,64]"));
  r = good;
  *r.mutable_o() = HalfTensor({5, 4, 64});
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument, HasSubstr("o.inline_data is set"));
  r = good;
  r.mutable_lse()->mutable_buffer()->set_buffer_id("b-x");
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("lse is set but options.return_lse is false"));
  r = good;
  r.mutable_o()->set_dtype(v1::DTYPE_FLOAT16);
  for (int64_t d : {5, 4, 64}) r.mutable_o()->add_shape(d);
  r.mutable_o()->mutable_buffer()->set_buffer_id("b-unknown");
  EXPECT_STATUS(core->Run(s, r).status(), kNotFound,
                HasSubstr("o.buffer.buffer_id='b-unknown' is not a buffer of this session"));
  r = good;
  r.mutable_options()->add_rope_offsets(3);
  r.mutable_options()->add_rope_offsets(3);
  EXPECT_STATUS(core->Run(s, r).status(), kInvalidArgument,
                HasSubstr("options.rope_offsets has 2 entries"));
  r = good;
  r.set_plan_id("plan-unknown");
  EXPECT_EQ(core->Run(s, r).status().code(), absl::StatusCode::kNotFound);

  v1::AppendKvRequest append;
  append.set_plan_id(plan->plan_id());
  *append.mutable_k() = HalfTensor({5, 2, 64});
  EXPECT_STATUS(core->AppendKv(s, append).status(), kInvalidArgument, HasSubstr("v has no data"));
  *append.mutable_v() = HalfTensor({5, 2, 64});
  append.set_layer(-1);
  EXPECT_EQ(core->AppendKv(s, append).status().code(), absl::StatusCode::kOutOfRange);
  append.set_layer(1);
  EXPECT_TRUE(core->AppendKv(s, append).ok());
}

// RunRequest.sinks: float32 [num_qo_heads], finite; a refused run writes nothing.
TEST(CoreSessionsTest, BadSinksAreRefusedByNameAndNothingIsWritten) {
  auto core = MakeCore();
  const Identity peer = AddTestPeer(*core);
  const std::string s = Open(*core, SessionBinding::kStream, "test", 0, peer);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 1);
  auto plan = core->CreatePlan(
      s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, 4, {{pages[0]}}, {3}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  const uint64_t o_bytes = 4 * 64 * 2, size = o_bytes + 16;  // o, then 4 sinks
  TestMemfd shm(size);
  auto buffer = RegisterMemfd(*core, s, peer, shm, size);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  auto slice = [&](v1::DType dtype, const std::vector<int64_t>& shape, uint64_t offset) {
    return SliceTensor(*buffer, dtype, shape, offset);
  };
  const auto sinks = FloatVector;
  v1::RunRequest good;
  good.set_plan_id(plan->plan_id());
  *good.mutable_q() = HalfTensor({1, 4, 64});
  *good.mutable_k() = HalfTensor({1, 2, 64});
  *good.mutable_v() = HalfTensor({1, 2, 64});
  *good.mutable_o() = slice(v1::DTYPE_FLOAT16, {1, 4, 64}, 0);
  *good.mutable_sinks() = sinks({0.f, 1.f, -1.f, 2.f});
  ASSERT_TRUE(core->Run(s, good).ok());
  *good.mutable_sinks() = slice(v1::DTYPE_FLOAT32, {4}, o_bytes);
  ASSERT_TRUE(core->Run(s, good).ok());

  struct Case {
    v1::Tensor sinks;
    absl::StatusCode code;
    std::string message;
  };
  v1::Tensor half = sinks({0.f, 0.f});
  half.set_dtype(v1::DTYPE_BFLOAT16);
  half.set_shape(0, 4);
  const std::vector<Case> cases = {
      {sinks({1.f, 2.f, 3.f}), absl::StatusCode::kInvalidArgument, "sinks.shape=[3], expected [4]"},
      {half, absl::StatusCode::kInvalidArgument,
       "sinks.dtype=DTYPE_BFLOAT16, expected DTYPE_FLOAT32"},
      {sinks({0.f, NAN, 0.f, 0.f}), absl::StatusCode::kInvalidArgument,
       "sinks[1]=nan must be finite"},
      {sinks({0.f, 0.f, 0.f, INFINITY}), absl::StatusCode::kInvalidArgument,
       "sinks[3]=inf must be finite"},
      {slice(v1::DTYPE_FLOAT32, {4}, o_bytes + 4), absl::StatusCode::kOutOfRange,
       "sinks.buffer: offset_bytes="},
      {slice(v1::DTYPE_FLOAT32, {4}, 2), absl::StatusCode::kInvalidArgument, "sinks.buffer"},
  };
  for (const Case& c : cases) {
    v1::RunRequest r = good;
    *r.mutable_sinks() = c.sinks;
    std::memset(shm.data(), 0x7f, o_bytes);
    const absl::Status status = core->Run(s, r).status();
    EXPECT_EQ(status.code(), c.code) << c.message << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message));
    bool untouched = true;
    for (uint64_t i = 0; i < o_bytes; ++i) untouched = untouched && shm.data()[i] == 0x7f;
    EXPECT_TRUE(untouched) << c.message << ": a refused run wrote o";
  }
}

}  // namespace
}  // namespace attnd::server::testing
