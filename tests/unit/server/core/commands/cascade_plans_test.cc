// Cascade plans through Core (CreatePlanRequest.cascade_levels): a run over a cascade plan equals
// the run over the ordinary plan of the same batch whose requests name the shared prefix pages
// followed by their own (2 and 3 levels, decode and prefill with an append, GQA), with prefix
// pages shared by ForkPages within a session and across two sessions; bad levels refused by name
// with nothing changed; RoPE and windows refused at Run.
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/float_convert.h"
#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server {
namespace {

using testing::Allocate;
using testing::AttachByName;
using testing::CreatePool;
using testing::ForkGrantOf;
using testing::FreePagesOf;
using ::testing::HasSubstr;
using testing::MakeCore;
using testing::Open;
using testing::PlanRequest;
using testing::PoolSpec;
using testing::RandomTensor;

constexpr int kKvHeads = 2, kHeadDim = 64, kPageSize = 4, kQoHeads = 8;  // GQA group 4

// Writes random K/V into every token of `pages` (full pages) through a prefill plan's append.
void Fill(Core& core, const std::string& session, const std::string& pool_id,
          const std::vector<int32_t>& pages, std::mt19937& rng) {
  testing::FillPages(core, session, pool_id, pages, rng, PoolSpec{.num_kv_heads = kKvHeads},
                     kQoHeads);
}

// A shared level: group g of `group_sizes[g]` consecutive requests attends pages[g] (full pages).
v1::CascadeLevel Level(const std::vector<int32_t>& qo_indptr, const std::vector<int>& group_sizes,
                       const std::vector<std::vector<int32_t>>& pages) {
  v1::CascadeLevel level;
  level.add_qo_indptr(0);
  level.add_kv_indptr(0);
  int request = 0;
  for (size_t g = 0; g < pages.size(); ++g) {
    request += group_sizes[g];
    level.add_qo_indptr(qo_indptr[request]);
    for (int32_t p : pages[g]) level.add_kv_indices(p);
    level.add_kv_indptr(level.kv_indices_size());
    level.add_kv_last_page_len(kPageSize);
  }
  return level;
}

std::vector<float> Floats(const v1::Tensor& t) {
  std::vector<float> out(t.inline_data().size() / sizeof(float));
  std::memcpy(out.data(), t.inline_data().data(), out.size() * sizeof(float));
  return out;
}

void ExpectClose(const v1::Tensor& a, const v1::Tensor& b, const std::string& what) {
  const std::vector<float> x = Floats(a), y = Floats(b);
  ASSERT_EQ(x.size(), y.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!(std::fabs(x[i] - y[i]) <= 2e-5f + 2e-5f * std::fabs(y[i])) && ++failures <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << x[i] << ", expected " << y[i];
    }
  }
}

// Runs `plan_id` with q (float32) and, when given, k/v appended; returns o and lse.
v1::RunResponse RunPlan(Core& core, const std::string& session, const std::string& plan_id,
                        const v1::Tensor& q, const v1::Tensor* k, const v1::Tensor* v,
                        bool causal) {
  v1::RunRequest run;
  run.set_plan_id(plan_id);
  run.set_layer(1);
  *run.mutable_q() = q;
  if (k != nullptr) {
    *run.mutable_k() = *k;
    *run.mutable_v() = *v;
  }
  run.mutable_options()->set_return_lse(true);
  run.mutable_options()->set_causal(causal);
  run.mutable_options()->set_logits_soft_cap(8.f);
  auto response = core.Run(session, run);
  EXPECT_TRUE(response.ok()) << response.status();
  return response.ok() ? *response : v1::RunResponse();
}

// One batch both ways: `prefixes[l]` lists level l's groups' pages (group_sizes[l] requests
// each), own[b] request b's own pages (its last page holding own_last[b] tokens), qo_len[b] its
// query rows (decode: 1 each).
struct Batch {
  bool decode = true;
  std::vector<std::vector<std::vector<int32_t>>> prefixes;
  std::vector<std::vector<int>> group_sizes;
  std::vector<std::vector<int32_t>> own;
  std::vector<int32_t> own_last;
  std::vector<int32_t> qo_len = {};  // prefill only
};

void ExpectCascadeEqualsFlat(Core& core, const std::string& session, const std::string& pool_id,
                             const Batch& batch, std::mt19937& rng, const std::string& what) {
  const int requests = static_cast<int>(batch.own.size());
  const v1::AttentionKind kind =
      batch.decode ? v1::ATTENTION_KIND_DECODE : v1::ATTENTION_KIND_PREFILL;
  const std::vector<int32_t> qo_len =
      batch.decode ? std::vector<int32_t>(requests, 1) : batch.qo_len;
  std::vector<int32_t> qo_indptr = {0};
  for (int32_t len : qo_len) qo_indptr.push_back(qo_indptr.back() + len);

  // The flat plan: request b's pages are its groups' prefixes in level order, then its own.
  std::vector<std::vector<int32_t>> flat(requests);
  for (size_t l = 0; l < batch.prefixes.size(); ++l) {
    int request = 0;
    for (size_t g = 0; g < batch.prefixes[l].size(); ++g) {
      for (int r = 0; r < batch.group_sizes[l][g]; ++r, ++request) {
        flat[request].insert(flat[request].end(), batch.prefixes[l][g].begin(),
                             batch.prefixes[l][g].end());
      }
    }
  }
  for (int b = 0; b < requests; ++b) {
    flat[b].insert(flat[b].end(), batch.own[b].begin(), batch.own[b].end());
  }
  auto flat_plan =
      core.CreatePlan(session, PlanRequest(pool_id, kind, kQoHeads, flat, batch.own_last, qo_len));
  ASSERT_TRUE(flat_plan.ok()) << flat_plan.status();
  v1::CreatePlanRequest request =
      PlanRequest(pool_id, kind, kQoHeads, batch.own, batch.own_last, qo_len);
  for (size_t l = 0; l < batch.prefixes.size(); ++l) {
    *request.add_cascade_levels() = Level(qo_indptr, batch.group_sizes[l], batch.prefixes[l]);
  }
  auto cascade_plan = core.CreatePlan(session, request);
  ASSERT_TRUE(cascade_plan.ok()) << cascade_plan.status();
  EXPECT_EQ(cascade_plan->qo_tokens(), qo_indptr.back());

  const int64_t rows = qo_indptr.back();
  const v1::Tensor q = RandomTensor(rng, v1::DTYPE_FLOAT32, {rows, kQoHeads, kHeadDim});
  const v1::Tensor k = RandomTensor(rng, v1::DTYPE_FLOAT16, {rows, kKvHeads, kHeadDim});
  const v1::Tensor v = RandomTensor(rng, v1::DTYPE_FLOAT16, {rows, kKvHeads, kHeadDim});
  const bool append = !batch.decode;
  // The flat plan appends first; the cascade plan then appends the same rows to the same pages.
  const v1::RunResponse want = RunPlan(core, session, flat_plan->plan_id(), q,
                                       append ? &k : nullptr, append ? &v : nullptr, append);
  const v1::RunResponse got = RunPlan(core, session, cascade_plan->plan_id(), q,
                                      append ? &k : nullptr, append ? &v : nullptr, append);
  ExpectClose(got.o(), want.o(), what + " o");
  ExpectClose(got.lse(), want.lse(), what + " lse");
}

TEST(CascadePlansTest, EqualsTheFlatPlanWithPagesForkedWithinASession) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, s, PoolSpec{.num_kv_heads = kKvHeads, .num_pages = 64});
  std::mt19937 rng(3);
  const std::vector<int32_t> prefix = Allocate(*core, s, pool.pool_id(), 3);
  const std::vector<int32_t> sub_a = Allocate(*core, s, pool.pool_id(), 2);
  const std::vector<int32_t> sub_b = Allocate(*core, s, pool.pool_id(), 1);
  std::vector<std::vector<int32_t>> own;
  for (int b = 0; b < 4; ++b) own.push_back(Allocate(*core, s, pool.pool_id(), 2));
  for (const auto* pages : {&prefix, &sub_a, &sub_b}) Fill(*core, s, pool.pool_id(), *pages, rng);
  for (const auto& pages : own) Fill(*core, s, pool.pool_id(), pages, rng);
  // Each sequence of the batch holds the prefix by reference, as forked sequences do.
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  for (int32_t p : prefix) fork.add_page_ids(p);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(core->ForkPages(s, fork).ok());

  ExpectCascadeEqualsFlat(
      *core, s, pool.pool_id(),
      Batch{.prefixes = {{prefix}}, .group_sizes = {{4}}, .own = own, .own_last = {1, 4, 2, 3}},
      rng, "2 levels decode");
  ExpectCascadeEqualsFlat(*core, s, pool.pool_id(),
                          Batch{.prefixes = {{prefix}, {sub_a, sub_b}},
                                .group_sizes = {{4}, {1, 3}},
                                .own = own,
                                .own_last = {1, 4, 2, 3}},
                          rng, "3 levels decode");
  ExpectCascadeEqualsFlat(*core, s, pool.pool_id(),
                          Batch{.decode = false,
                                .prefixes = {{prefix}, {sub_a, sub_b}},
                                .group_sizes = {{4}, {2, 2}},
                                .own = own,
                                .own_last = {4, 3, 2, 4},
                                .qo_len = {5, 1, 0, 8}},
                          rng, "3 levels prefill with append");
}

TEST(CascadePlansTest, EqualsTheFlatPlanWithAPrefixSharedAcrossSessions) {
  auto core = MakeCore();
  const std::string a = Open(*core), b = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, a, PoolSpec{.num_kv_heads = kKvHeads, .num_pages = 64});
  ASSERT_TRUE(AttachByName(*core, b).ok());
  std::mt19937 rng(5);
  const std::vector<int32_t> prefix = Allocate(*core, a, pool.pool_id(), 4);
  Fill(*core, a, pool.pool_id(), prefix, rng);
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool.pool_id());
  for (int32_t p : prefix) fork.add_page_ids(p);
  fork.set_target_grant(ForkGrantOf(*core, b, pool.pool_id()));
  ASSERT_TRUE(core->ForkPages(a, fork).ok());

  std::vector<std::vector<int32_t>> own;
  for (int r = 0; r < 3; ++r) {
    own.push_back(Allocate(*core, b, pool.pool_id(), 1 + r));
    Fill(*core, b, pool.pool_id(), own.back(), rng);
  }
  // B reads the prefix it holds by reference; it appends only to its own pages.
  for (const bool decode : {true, false}) {
    ExpectCascadeEqualsFlat(*core, b, pool.pool_id(),
                            Batch{.decode = decode,
                                  .prefixes = {{prefix}},
                                  .group_sizes = {{3}},
                                  .own = own,
                                  .own_last = {2, 4, 3},
                                  .qo_len = {2, 3, 1}},
                            rng, decode ? "across sessions, decode" : "across sessions, prefill");
  }
  // A session holding none of the prefix cannot name it in a level.
  const std::string c = Open(*core);
  ASSERT_TRUE(AttachByName(*core, c).ok());
  const std::vector<int32_t> mine = Allocate(*core, c, pool.pool_id(), 1);
  v1::CreatePlanRequest request =
      PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_DECODE, kQoHeads, {mine}, {1}, {});
  *request.add_cascade_levels() = Level({0, 1}, {1}, {prefix});
  EXPECT_STATUS(core->CreatePlan(c, request).status(), kPermissionDenied,
                HasSubstr(absl::StrCat("cascade_levels[0].kv_indices[0]=", prefix[0], ": page ",
                                       prefix[0], " of pool 'pool' is not held by this session")));
}

TEST(CascadePlansTest, BadLevelsAreRefusedByNameAndChangeNothing) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool =
      CreatePool(*core, s, PoolSpec{.num_kv_heads = kKvHeads, .num_pages = 32});
  const std::vector<int32_t> prefix = Allocate(*core, s, pool.pool_id(), 2);
  const std::vector<int32_t> own_a = Allocate(*core, s, pool.pool_id(), 1);
  const std::vector<int32_t> own_b = Allocate(*core, s, pool.pool_id(), 1);
  const v1::CreatePlanRequest base = PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL,
                                                 kQoHeads, {own_a, own_b}, {3, 4}, {2, 1});
  v1::CreatePlanRequest good = base;
  *good.add_cascade_levels() = Level({0, 2, 3}, {2}, {prefix});
  const int64_t free_before = FreePagesOf(*core, s, pool.pool_id());
  const uint64_t host_before = core->Stats().host_bytes;

  struct Bad {
    std::function<void(v1::CascadeLevel&)> edit;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {[](v1::CascadeLevel& l) { l.set_qo_indptr(1, 2); }, absl::StatusCode::kInvalidArgument,
       "cascade_levels[0].qo_indptr runs from 0 to 2; it must cover the plan's query rows 0..3"},
      {[](v1::CascadeLevel& l) { l.set_qo_indptr(1, 1); }, absl::StatusCode::kInvalidArgument,
       "cascade_levels[0].qo_indptr[1]=1 is not a request boundary"},
      {[](v1::CascadeLevel& l) { l.add_qo_indptr(3); }, absl::StatusCode::kInvalidArgument,
       "cascade_levels[0].qo_indptr has 3 entries, expected num_groups + 1 = 2"},
      {[](v1::CascadeLevel& l) { l.set_kv_last_page_len(0, 5); },
       absl::StatusCode::kInvalidArgument,
       "cascade_levels[0].kv_last_page_len[0]=5 is outside 1..page_size (4)"},
      {[](v1::CascadeLevel& l) { l.set_kv_indptr(1, 3); }, absl::StatusCode::kInvalidArgument,
       "cascade_levels[0].kv_indptr[1]=3 but cascade_levels[0].kv_indices has 2 entries"},
      {[](v1::CascadeLevel& l) { l.set_kv_indices(1, 99); }, absl::StatusCode::kOutOfRange,
       "cascade_levels[0].kv_indices[1]=99 is outside 0..31"},
      {[&](v1::CascadeLevel& l) { l.set_kv_indices(1, own_b[0]); },
       absl::StatusCode::kInvalidArgument,
       absl::StrCat("cascade_levels[0].kv_indices[1]=", own_b[0],
                    ": page " + std::to_string(own_b[0]) +
                        " is appended to by the plan's own pages (the last level); a level's "
                        "pages are read only")},
      {[](v1::CascadeLevel& l) { l.clear_kv_indptr(); }, absl::StatusCode::kInvalidArgument,
       "cascade_levels[0].kv_indptr has 0 entries; it needs num_groups + 1 >= 2"},
  };
  for (const Bad& b : bad) {
    v1::CreatePlanRequest request = good;
    b.edit(*request.mutable_cascade_levels(0));
    auto plan = core->CreatePlan(s, request);
    EXPECT_EQ(plan.status().code(), b.code) << plan.status();
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr(b.message));
  }
  // Not held: a freed page.
  {
    const std::vector<int32_t> gone = Allocate(*core, s, pool.pool_id(), 1);
    v1::FreePagesRequest free;
    free.set_pool_id(pool.pool_id());
    free.add_page_ids(gone[0]);
    ASSERT_TRUE(core->FreePages(s, free).ok());
    v1::CreatePlanRequest request = good;
    request.mutable_cascade_levels(0)->set_kv_indices(0, gone[0]);
    EXPECT_STATUS(core->CreatePlan(s, request).status(), kPermissionDenied,
                  HasSubstr(absl::StrCat("cascade_levels[0].kv_indices[0]=", gone[0])));
  }
  v1::CreatePlanRequest too_many = base;
  for (int l = 0; l < 17; ++l) *too_many.add_cascade_levels() = good.cascade_levels(0);
  EXPECT_STATUS(core->CreatePlan(s, too_many).status(), kInvalidArgument,
                HasSubstr("cascade_levels has 17 levels, more than the limit of 16"));

  // Nothing was pinned, charged or kept.
  EXPECT_EQ(FreePagesOf(*core, s, pool.pool_id()), free_before);
  EXPECT_EQ(core->Stats().host_bytes, host_before);
  EXPECT_EQ(core->Stats().plans, 0);

  // The good plan: RoPE and windows are refused at Run, naming the option.
  auto plan = core->CreatePlan(s, good);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(core->Stats().host_bytes, host_before);
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  std::mt19937 rng(1);
  *run.mutable_q() = RandomTensor(rng, v1::DTYPE_FLOAT32, {3, kQoHeads, kHeadDim});
  run.mutable_options()->set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
  EXPECT_STATUS(core->Run(s, run).status(), kInvalidArgument, HasSubstr("options.pos_encoding"));
  run.mutable_options()->set_pos_encoding(v1::POS_ENCODING_NONE);
  run.mutable_options()->set_window_left(2);
  run.mutable_options()->set_window_left_set(true);
  EXPECT_STATUS(core->Run(s, run).status(), kInvalidArgument, HasSubstr("options.window_left=2"));
  // Pages of the level are pinned by the plan, and freed with it.
  v1::DeletePlanRequest del;
  del.set_plan_id(plan->plan_id());
  ASSERT_TRUE(core->DeletePlan(s, del).ok());
  EXPECT_EQ(core->Stats().host_bytes, host_before);
}

}  // namespace
}  // namespace attnd::server
