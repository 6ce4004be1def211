// Many sessions working at once, and sessions closed or expired while other threads run on them:
// nothing crashes, every command either succeeds or reports NOT_FOUND for the closed session, and
// every page comes back in the end.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core_test_util.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server {
namespace {

using testing::AttachByName;
using testing::CreatePool;
using testing::HalfTensor;
using testing::MakeCore;
using testing::Open;
using testing::PlanRequest;
using testing::PoolSpec;

v1::Tensor FilledHalf(const std::vector<int64_t>& shape) { return HalfTensor(shape, '\1'); }

// One worker's loop: allocate, plan, append+run on both layers, delete, free. Stops at the first
// error, which must be NOT_FOUND (its session was closed under it).
absl::Status Work(Core& core, const std::string& session, const std::string& pool_id,
                  int iterations) {
  for (int i = 0; i < iterations; ++i) {
    v1::AllocatePagesRequest alloc;
    alloc.set_pool_id(pool_id);
    alloc.set_count(2);
    auto pages = core.AllocatePages(session, alloc);
    if (!pages.ok()) return pages.status();
    std::vector<int32_t> ids(pages->page_ids().begin(), pages->page_ids().end());
    auto plan = core.CreatePlan(session, PlanRequest(pool_id, v1::ATTENTION_KIND_PREFILL, 4,
                                                     {ids}, {2}, {6}));
    if (!plan.ok()) return plan.status();
    for (int layer = 0; layer < 2; ++layer) {
      v1::RunRequest run;
      run.set_plan_id(plan->plan_id());
      run.set_layer(layer);
      *run.mutable_q() = FilledHalf({6, 4, 64});
      *run.mutable_k() = FilledHalf({6, 2, 64});
      *run.mutable_v() = FilledHalf({6, 2, 64});
      run.mutable_options()->set_causal(true);
      auto out = core.Run(session, run);
      if (!out.ok()) return out.status();
    }
    v1::DeletePlanRequest del;
    del.set_plan_id(plan->plan_id());
    if (auto s = core.DeletePlan(session, del); !s.ok()) return s.status();
    v1::FreePagesRequest free;
    free.set_pool_id(pool_id);
    free.mutable_page_ids()->Add(ids.begin(), ids.end());
    if (auto s = core.FreePages(session, free); !s.ok()) return s.status();
  }
  return absl::OkStatus();
}

TEST(CoreConcurrencyTest, SessionsRunInParallelAndCloseUnderLoad) {
  auto core = MakeCore();
  const std::string owner = Open(*core);
  PoolSpec spec;
  spec.num_pages = 64;
  const v1::PoolInfo pool = CreatePool(*core, owner, spec);

  constexpr int kWorkers = 6;
  std::vector<std::string> sessions;
  for (int w = 0; w < kWorkers; ++w) {
    sessions.push_back(Open(*core, w % 2 == 0 ? SessionBinding::kStream : SessionBinding::kLeased));
    ASSERT_TRUE(AttachByName(*core, sessions.back(), spec.name).ok());
  }
  std::vector<absl::Status> results(kWorkers);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] { results[w] = Work(*core, sessions[w], pool.pool_id(), 40); });
  }
  // Meanwhile: close two sessions, expire the leased ones, and read stats.
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(5));
    (void)core->CloseSession(sessions[0]);
    for (int i = 0; i < 20; ++i) (void)core->Stats();
    (void)core->CloseSession(sessions[2]);
    core->ExpireIdleSessions(absl::Now() + absl::Hours(1));  // the leased: 1, 3, 5
  });
  for (auto& t : threads) t.join();
  closer.join();

  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_TRUE(results[w].ok() || results[w].code() == absl::StatusCode::kNotFound)
        << "worker " << w << ": " << results[w];
  }
  EXPECT_EQ(results[0].code(), absl::StatusCode::kNotFound);
  // Every closed session's pages came back; the survivors freed theirs.
  v1::DescribePoolRequest describe;
  describe.set_pool_id(pool.pool_id());
  auto info = core->DescribePool(owner, describe);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pool().free_pages(), 64);
  EXPECT_EQ(info->pool().attached_sessions(), 1 + 1);  // owner + session 4 (stream, not closed)
  EXPECT_EQ(core->Stats().plans, 0);
}

}  // namespace
}  // namespace attnd::server
