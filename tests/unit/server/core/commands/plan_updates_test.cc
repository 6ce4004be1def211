// Streamed page-table updates through Core (UpdatePlan, server/core/commands/plans.cc; the delta
// rules in request_rules.cc, CheckUpdatePlan): a plan changed by deltas (grow within a page and
// across pages, leave, join, prefill query rows) runs bit for bit like a plan created from scratch
// with the resulting table (the CPU backend), over many decode steps with K/V appended and
// requests leaving and joining; every bad delta is refused naming its field, and nothing changes
// (host bytes, free pages, pins, the plan's output); pages of other sessions and pages shared
// with them (where appends would write) are refused; cascade and custom-mask plans are refused.
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kKvHeads = 2, kHeadDim = 64, kPageSize = 4, kQoHeads = 4, kPoolPages = 96;

// The test's own model of a plan's batch: what UpdatePlan must turn the plan into.
struct Request {
  std::vector<int32_t> pages;
  int32_t kv_len = 0;
  int32_t qo_len = 1;
};
struct Table {
  v1::AttentionKind kind = v1::ATTENTION_KIND_DECODE;
  std::vector<Request> requests;
};

v1::CreatePlanRequest CreateRequestOf(const std::string& pool_id, const Table& table) {
  std::vector<std::vector<int32_t>> pages;
  std::vector<int32_t> last, qo;
  for (const Request& r : table.requests) {
    pages.push_back(r.pages);
    last.push_back(r.kv_len - (static_cast<int32_t>(r.pages.size()) - 1) * kPageSize);
    qo.push_back(r.qo_len);
  }
  return PlanRequest(pool_id, table.kind, kQoHeads, pages, last,
                     table.kind == v1::ATTENTION_KIND_DECODE ? std::vector<int32_t>{} : qo);
}

// The semantics of attnd.proto PlanDelta, written independently of the daemon's: requests named
// by their index before the update, the survivors in order, then the joins in order.
Table Apply(const Table& before, const v1::UpdatePlanRequest& update) {
  Table after;
  after.kind = before.kind;
  std::vector<bool> leaves(before.requests.size(), false);
  std::vector<Request> requests = before.requests;
  for (const v1::PlanDelta& d : update.deltas()) {
    if (d.has_leave()) leaves[d.leave().request()] = true;
    if (d.has_grow()) {
      Request& r = requests[d.grow().request()];
      r.kv_len += d.grow().num_tokens();
      r.pages.insert(r.pages.end(), d.grow().new_pages().begin(), d.grow().new_pages().end());
      if (before.kind == v1::ATTENTION_KIND_PREFILL) r.qo_len = d.grow().qo_len();
    }
  }
  for (size_t b = 0; b < requests.size(); ++b) {
    if (!leaves[b]) after.requests.push_back(requests[b]);
  }
  for (const v1::PlanDelta& d : update.deltas()) {
    if (!d.has_join()) continue;
    Request r;
    r.pages.assign(d.join().kv_indices().begin(), d.join().kv_indices().end());
    r.kv_len = (static_cast<int32_t>(r.pages.size()) - 1) * kPageSize + d.join().kv_last_page_len();
    r.qo_len = before.kind == v1::ATTENTION_KIND_PREFILL ? d.join().qo_len() : 1;
    after.requests.push_back(r);
  }
  return after;
}

int64_t QoTokens(const Table& t) {
  int64_t n = 0;
  for (const Request& r : t.requests) n += r.qo_len;
  return n;
}

v1::PlanDelta Grow(int32_t request, int32_t tokens, std::vector<int32_t> new_pages = {},
                   int32_t qo_len = 0) {
  v1::PlanDelta d;
  d.mutable_grow()->set_request(request);
  d.mutable_grow()->set_num_tokens(tokens);
  d.mutable_grow()->mutable_new_pages()->Add(new_pages.begin(), new_pages.end());
  d.mutable_grow()->set_qo_len(qo_len);
  return d;
}
v1::PlanDelta Leave(int32_t request) {
  v1::PlanDelta d;
  d.mutable_leave()->set_request(request);
  return d;
}
v1::PlanDelta Join(std::vector<int32_t> pages, int32_t last_page_len, int32_t qo_len = 0) {
  v1::PlanDelta d;
  d.mutable_join()->mutable_kv_indices()->Add(pages.begin(), pages.end());
  d.mutable_join()->set_kv_last_page_len(last_page_len);
  d.mutable_join()->set_qo_len(qo_len);
  return d;
}
v1::UpdatePlanRequest Update(const std::string& plan_id, std::vector<v1::PlanDelta> deltas) {
  v1::UpdatePlanRequest request;
  request.set_plan_id(plan_id);
  for (v1::PlanDelta& d : deltas) *request.add_deltas() = std::move(d);
  return request;
}

class PlanUpdatesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    core_ = MakeCore();
    s_ = Open(*core_);
    PoolSpec spec;
    spec.num_kv_heads = kKvHeads;
    spec.head_dim = kHeadDim;
    spec.page_size = kPageSize;
    spec.num_pages = kPoolPages;
    pool_ = CreatePool(*core_, s_, spec).pool_id();
    pages_ = Allocate(*core_, s_, pool_, kPoolPages - 16);  // 16 left for another session
    ASSERT_EQ(pages_.size(), kPoolPages - 16u);
    FillPages(*core_, s_, pool_, pages_, rng_, spec, kQoHeads);
  }

  void DeletePlan(const std::string& plan_id) {
    v1::DeletePlanRequest del;
    del.set_plan_id(plan_id);
    ASSERT_TRUE(core_->DeletePlan(s_, del).ok());
  }

  std::string Create(const Table& table) {
    auto plan = core_->CreatePlan(s_, CreateRequestOf(pool_, table));
    EXPECT_TRUE(plan.ok()) << plan.status();
    return plan.ok() ? plan->plan_id() : "";
  }

  // One run of layer 1 over `plan_id` with q (float32) and, when given, k/v appended first.
  v1::RunResponse Run(const std::string& plan_id, const v1::Tensor& q,
                      const v1::Tensor* k = nullptr, const v1::Tensor* v = nullptr) {
    v1::RunRequest run;
    run.set_plan_id(plan_id);
    run.set_layer(1);
    *run.mutable_q() = q;
    if (k != nullptr) {
      *run.mutable_k() = *k;
      *run.mutable_v() = *v;
    }
    run.mutable_options()->set_return_lse(true);
    run.mutable_options()->set_causal(true);
    auto response = core_->Run(s_, run);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::RunResponse();
  }

  v1::Tensor Q(int64_t rows) {
    return RandomTensor(rng_, v1::DTYPE_FLOAT32, {rows, kQoHeads, kHeadDim});
  }

  // Updates `plan_id` (whose batch is `table`), checks the reply against the model, then runs
  // the updated plan (appending new k/v when `append`) and a plan created from scratch with the
  // resulting table on the same q: their o and lse must be equal bit for bit.
  void UpdateAndCompare(const std::string& plan_id, Table& table, v1::UpdatePlanRequest update,
                        bool append, const std::string& what) {
    SCOPED_TRACE(what);
    update.set_plan_id(plan_id);
    const Table expected = Apply(table, update);
    auto updated = core_->UpdatePlan(s_, update);
    ASSERT_TRUE(updated.ok()) << updated.status();
    table = expected;
    auto fresh = core_->CreatePlan(s_, CreateRequestOf(pool_, table));
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    EXPECT_EQ(updated->batch_size(), fresh->batch_size());
    EXPECT_EQ(updated->qo_tokens(), fresh->qo_tokens());
    EXPECT_EQ(updated->kv_tokens(), fresh->kv_tokens());
    const int64_t rows = QoTokens(table);
    const v1::Tensor q = Q(rows);
    v1::RunResponse mine;
    if (append) {
      const v1::Tensor k = RandomTensor(rng_, v1::DTYPE_FLOAT16, {rows, kKvHeads, kHeadDim});
      const v1::Tensor v = RandomTensor(rng_, v1::DTYPE_FLOAT16, {rows, kKvHeads, kHeadDim});
      mine = Run(plan_id, q, &k, &v);  // the appended rows are in the cache for both runs
    } else {
      mine = Run(plan_id, q);
    }
    const v1::RunResponse theirs = Run(fresh->plan_id(), q);
    ASSERT_FALSE(theirs.o().inline_data().empty());
    EXPECT_EQ(mine.o().inline_data(), theirs.o().inline_data()) << "o differs";
    EXPECT_EQ(mine.lse().inline_data(), theirs.lse().inline_data()) << "lse differs";
    DeletePlan(fresh->plan_id());
  }

  std::mt19937 rng_{1234};
  std::unique_ptr<Core> core_;
  std::string s_, pool_;
  std::vector<int32_t> pages_;  // held by s_, filled with random K/V
};

TEST_F(PlanUpdatesTest, GrowLeaveAndJoinMatchAFreshPlan) {
  const std::vector<int32_t>& p = pages_;
  Table table;
  table.requests = {{{p[0], p[1]}, 6}, {{p[2]}, 4}, {{p[3], p[4], p[5]}, 9}};
  const std::string plan = Create(table);
  // Within the last page, filling it, and across into a new page.
  UpdateAndCompare(plan, table, Update("", {Grow(0, 1), Grow(1, 1, {p[6]}), Grow(2, 3)}),
                   /*append=*/false, "grow");
  // Several tokens and pages at once; a request that does not grow keeps its table.
  UpdateAndCompare(plan, table, Update("", {Grow(2, 8, {p[7], p[8]})}), false, "grow by 8");
  // A request leaves and two join (at the end, in the order of their deltas).
  UpdateAndCompare(plan, table, Update("", {Join({p[9]}, 2), Leave(1), Join({p[10], p[11]}, 4)}),
                   false, "leave and join");
  ASSERT_EQ(table.requests.size(), 4u);
  EXPECT_EQ(table.requests[2].pages, std::vector<int32_t>({p[9]}));
  // Everything in one update, with K/V appended by the run.
  UpdateAndCompare(plan, table,
                   Update("", {Leave(0), Grow(3, 1, {p[12]}), Join({p[13], p[14]}, 1), Grow(1, 0)}),
                   true, "all kinds");
  // An empty update changes nothing and reports the plan's shape.
  auto same = core_->UpdatePlan(s_, Update(plan, {}));
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->batch_size(), static_cast<int32_t>(table.requests.size()));
}

TEST_F(PlanUpdatesTest, PrefillPlansTakeTheirQueryRowsFromTheDeltas) {
  const std::vector<int32_t>& p = pages_;
  Table table;
  table.kind = v1::ATTENTION_KIND_PREFILL;
  table.requests = {{{p[0], p[1]}, 7, 3}, {{p[2]}, 2, 2}, {{p[3]}, 4, 0}};
  const std::string plan = Create(table);
  // Chunked prefill: the new tokens are the queries; request 2 gets rows without growing.
  UpdateAndCompare(plan, table,
                   Update("", {Grow(0, 6, {p[4], p[5]}, 5), Grow(1, 1, {}, 1), Grow(2, 0, {}, 4)}),
                   /*append=*/true, "chunks");
  UpdateAndCompare(plan, table, Update("", {Leave(2), Join({p[6], p[7]}, 3, 7), Grow(0, 0, {}, 0)}),
                   true, "join with rows, a request without rows");
  // No request with query rows left: refused.
  EXPECT_STATUS(
      core_->UpdatePlan(s_, Update(plan, {Grow(0, 0, {}, 0), Grow(1, 0, {}, 0), Grow(2, 0, {}, 0)}))
          .status(),
      kInvalidArgument, HasSubstr("no query rows"));
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(plan, {Grow(1, 0, {}, 4)})).status(), kInvalidArgument,
                HasSubstr("deltas[0].grow.qo_len=4 is outside 0..3 (the request's kv_len after"));
}

TEST_F(PlanUpdatesTest, ManyDecodeStepsWithAppendedPagesAndChangingBatches) {
  std::vector<int32_t> free(pages_.begin() + 8, pages_.end());
  auto take = [&] {
    if (free.empty()) {
      ADD_FAILURE() << "the test ran out of pages";
      return pages_[0];
    }
    const int32_t page = free.back();
    free.pop_back();
    return page;
  };
  Table table;
  table.requests = {
      {{pages_[0]}, 3}, {{pages_[1], pages_[2]}, 5}, {{pages_[3]}, 4}, {{pages_[4], pages_[5]}, 8}};
  const std::string plan = Create(table);
  const uint64_t host_at_create = core_->Stats().host_bytes;
  for (int step = 0; step < 48; ++step) {
    v1::UpdatePlanRequest update;
    const int32_t batch = static_cast<int32_t>(table.requests.size());
    // Every 12 steps the oldest request leaves (its pages go back below) and one joins.
    const bool churn = step % 12 == 11;
    for (int32_t b = 0; b < batch; ++b) {
      if (churn && b == 0) {
        *update.add_deltas() = Leave(0);
        continue;
      }
      const Request& r = table.requests[b];
      const int32_t tokens = (step + b) % 5 == 0 ? 2 : 1;  // a speculative step now and then
      const int32_t pages_after = (r.kv_len + tokens + kPageSize - 1) / kPageSize;
      std::vector<int32_t> new_pages;
      while (static_cast<int32_t>(r.pages.size() + new_pages.size()) < pages_after) {
        new_pages.push_back(take());
      }
      *update.add_deltas() = Grow(b, tokens, new_pages);
    }
    std::vector<int32_t> released;
    if (churn) {
      released = table.requests[0].pages;
      *update.add_deltas() = Join({take(), take()}, 2);
    }
    UpdateAndCompare(plan, table, update, /*append=*/true, absl::StrCat("step ", step));
    if (HasFailure()) return;
    free.insert(free.end(), released.begin(), released.end());  // unpinned by the update
  }
  EXPECT_GT(core_->Stats().host_bytes, host_at_create);  // the table grew, and its charge
  // The plan holds exactly its table's pages: free every client reference, and only those stay.
  int32_t in_table = 0;
  for (const Request& r : table.requests) in_table += static_cast<int32_t>(r.pages.size());
  v1::FreePagesRequest free_all;
  free_all.set_pool_id(pool_);
  free_all.mutable_page_ids()->Add(pages_.begin(), pages_.end());
  ASSERT_TRUE(core_->FreePages(s_, free_all).ok());
  EXPECT_EQ(FreePagesOf(*core_, s_, pool_), kPoolPages - in_table);
  DeletePlan(plan);
  EXPECT_EQ(FreePagesOf(*core_, s_, pool_), kPoolPages);
}

TEST_F(PlanUpdatesTest, PagesNoRequestUsesAnyMoreAreUnpinned) {
  const std::vector<int32_t>& p = pages_;
  // Request 1 shares request 0's first page (a prefix within the plan).
  Table table;
  table.requests = {{{p[0], p[1]}, 8}, {{p[0], p[2]}, 5}};
  const std::string plan = Create(table);
  UpdateAndCompare(plan, table, Update("", {Leave(0)}), false, "leave");
  v1::FreePagesRequest free;
  free.set_pool_id(pool_);
  for (int32_t page : {p[0], p[1], p[2]}) free.add_page_ids(page);
  auto freed = core_->FreePages(s_, free);
  ASSERT_TRUE(freed.ok()) << freed.status();
  // p[1] went back to the pool; p[0] (still request 0's) and p[2] stay pinned.
  EXPECT_EQ(freed->free_pages(), 16 + 1);
  DeletePlan(plan);
  EXPECT_EQ(FreePagesOf(*core_, s_, pool_), 16 + 3);
}

TEST_F(PlanUpdatesTest, BadDeltasAreRefusedByNameAndChangeNothing) {
  const std::vector<int32_t>& p = pages_;
  Table table;
  table.requests = {{{p[0]}, 3}, {{p[1], p[2]}, 8}, {{p[3]}, 2}};
  const std::string plan = Create(table);
  const v1::Tensor q = Q(3);
  const v1::RunResponse before = Run(plan, q);
  const uint64_t host_bytes = core_->Stats().host_bytes;
  const int64_t free_pages = FreePagesOf(*core_, s_, pool_);
  // Pages of the pool this session does not hold.
  std::vector<int32_t> not_held;
  for (int32_t page = 0; page < kPoolPages && not_held.size() < 2; ++page) {
    if (std::find(pages_.begin(), pages_.end(), page) == pages_.end()) not_held.push_back(page);
  }
  struct Case {
    std::vector<v1::PlanDelta> deltas;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{Grow(0, 1), Grow(3, 1)},
       absl::StatusCode::kInvalidArgument,
       "deltas[1].grow.request=3 is outside 0..2 (the plan's batch before the update)"},
      {{Leave(-1)}, absl::StatusCode::kInvalidArgument, "deltas[0].leave.request=-1 is outside"},
      {{Grow(0, 1), Leave(0)},
       absl::StatusCode::kInvalidArgument,
       "deltas[1].leave.request=0: request 0 is also named by deltas[0]"},
      {{Grow(0, -1)},
       absl::StatusCode::kInvalidArgument,
       "deltas[0].grow.num_tokens=-1 must be >= 0"},
      {{Grow(0, 2)},
       absl::StatusCode::kInvalidArgument,
       "deltas[0].grow.new_pages has 0 entries; request 0 grows from kv_len 3 (1 pages) to 5 and "
       "needs exactly 1 new pages"},
      {{Grow(0, 1, {p[4]})}, absl::StatusCode::kInvalidArgument, "needs exactly 0 new pages"},
      {{Grow(0, 1), Grow(1, 1, {kPoolPages + 3})},
       absl::StatusCode::kOutOfRange,
       absl::StrCat("deltas[1].grow.new_pages[0]=", kPoolPages + 3, " is outside 0..",
                    kPoolPages - 1)},
      {{Grow(0, 1), Grow(1, 1, {not_held[0]})},
       absl::StatusCode::kPermissionDenied,
       absl::StrCat("deltas[1].grow.new_pages[0]=", not_held[0], ": page ", not_held[0],
                    " of pool 'pool' is not held by this session")},
      {{Join({p[4], not_held[1]}, 1)},
       absl::StatusCode::kPermissionDenied,
       absl::StrCat("deltas[0].join.kv_indices[1]=", not_held[1], ": page ", not_held[1])},
      {{Join({}, 1)}, absl::StatusCode::kInvalidArgument, "deltas[0].join.kv_indices is empty"},
      {{Join({p[4]}, 0)},
       absl::StatusCode::kInvalidArgument,
       "deltas[0].join.kv_last_page_len=0 is outside 1..page_size (4)"},
      {{Join({p[4]}, 5)}, absl::StatusCode::kInvalidArgument, "kv_last_page_len=5"},
      {{Join({p[4]}, 1, 2)},
       absl::StatusCode::kInvalidArgument,
       "deltas[0].join.qo_len=2: a decode plan's requests have exactly one query row"},
      {{Grow(2, 1, {}, 3)}, absl::StatusCode::kInvalidArgument, "deltas[0].grow.qo_len=3"},
      // Appends would write p[3] for request 2 and for the joined one.
      {{Join({p[4], p[3]}, 1)},
       absl::StatusCode::kInvalidArgument,
       absl::StrCat("deltas[0].join.kv_indices[1]=", p[3], ": page ", p[3],
                    " is appended to by another request of the plan")},
      {{Join({p[5]}, 1), Join({p[6], p[5]}, 2)},
       absl::StatusCode::kInvalidArgument,
       absl::StrCat("deltas[1].join.kv_indices[1]=", p[5], ": page ", p[5],
                    " would be appended to by requests 3 and 4 of the updated plan")},
      // Request 0 grows into its page p[0]... and request 2 into p[0] too (as a new page).
      {{Grow(2, 3, {p[0]})},
       absl::StatusCode::kInvalidArgument,
       absl::StrCat("deltas[0].grow.new_pages[0]=", p[0], ": page ", p[0], " is appended to")},
      {{Leave(0), Leave(1), Leave(2)},
       absl::StatusCode::kInvalidArgument,
       "the update leaves the plan without requests (all 3 leave)"},
      {{v1::PlanDelta()}, absl::StatusCode::kInvalidArgument, "deltas[0] sets no change"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("case ", i, ": ", cases[i].message));
    const absl::Status s = core_->UpdatePlan(s_, Update(plan, cases[i].deltas)).status();
    EXPECT_EQ(s.code(), cases[i].code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(cases[i].message));
    // Nothing changed: the charge, the pool, the plan's shape and what it computes.
    EXPECT_EQ(core_->Stats().host_bytes, host_bytes);
    EXPECT_EQ(FreePagesOf(*core_, s_, pool_), free_pages);
    auto shape = core_->UpdatePlan(s_, Update(plan, {}));
    ASSERT_TRUE(shape.ok());
    EXPECT_EQ(shape->batch_size(), 3);
    EXPECT_EQ(shape->kv_tokens(), 13);
    const v1::RunResponse after = Run(plan, q);
    EXPECT_EQ(after.o().inline_data(), before.o().inline_data());
    EXPECT_EQ(after.lse().inline_data(), before.lse().inline_data());
  }
  EXPECT_EQ(core_->UpdatePlan(s_, Update("plan-nope", {Grow(0, 1)})).status().code(),
            absl::StatusCode::kNotFound);
  // No refused update left a pin behind: without the plan and the client's references, every
  // page is free.
  DeletePlan(plan);
  v1::FreePagesRequest free_all;
  free_all.set_pool_id(pool_);
  free_all.mutable_page_ids()->Add(pages_.begin(), pages_.end());
  ASSERT_TRUE(core_->FreePages(s_, free_all).ok());
  EXPECT_EQ(FreePagesOf(*core_, s_, pool_), kPoolPages);
}

TEST_F(PlanUpdatesTest, SessionsAreIsolated) {
  const std::vector<int32_t>& p = pages_;
  const std::string other = Open(*core_);
  ASSERT_TRUE(AttachByName(*core_, other).ok());
  const std::vector<int32_t> theirs = Allocate(*core_, other, pool_, 2);
  ASSERT_EQ(theirs.size(), 2u);
  Table table;
  table.requests = {{{p[0]}, 4}, {{p[1], p[2]}, 7}};
  const std::string plan = Create(table);
  const uint64_t host_bytes = core_->Stats().host_bytes;
  // A page of another session.
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(plan, {Grow(0, 1, {theirs[0]})})).status(),
                kPermissionDenied,
                HasSubstr(absl::StrCat("deltas[0].grow.new_pages[0]=", theirs[0], ": page ",
                                       theirs[0], " of pool 'pool' is not held")));
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(plan, {Join({theirs[1]}, 1)})).status(),
                kPermissionDenied, HasSubstr("deltas[0].join.kv_indices[0]="));
  // A page this session shares with the other (ForkPages through its grant): read, fine; appended
  // to, refused as CreatePlan refuses it.
  v1::ForkPagesRequest fork;
  fork.set_pool_id(pool_);
  fork.add_page_ids(p[3]);
  fork.add_page_ids(p[4]);
  fork.set_target_grant(ForkGrantOf(*core_, other, pool_));
  ASSERT_TRUE(core_->ForkPages(s_, fork).ok());
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(plan, {Grow(0, 1, {p[3]})})).status(),
                kFailedPrecondition,
                HasSubstr(absl::StrCat("deltas[0].grow.new_pages[0]=", p[3], ": page ", p[3],
                                       " is shared with another session; appends need an "
                                       "unshared page")));
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(plan, {Join({p[5], p[4]}, 1)})).status(),
                kFailedPrecondition,
                HasSubstr(absl::StrCat("deltas[0].join.kv_indices[1]=", p[4])));
  // More query rows make a prefill request write a page it had (and only read before).
  auto prefill = core_->CreatePlan(
      s_, PlanRequest(pool_, v1::ATTENTION_KIND_PREFILL, kQoHeads, {{p[3], p[6]}}, {4}, {1}));
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  const uint64_t with_prefill = core_->Stats().host_bytes;
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(prefill->plan_id(), {Grow(0, 0, {}, 8)})).status(),
                kFailedPrecondition,
                HasSubstr(absl::StrCat("deltas[0].grow.request=0: its page=", p[3], ": page ", p[3],
                                       " is shared with another session")));
  EXPECT_EQ(core_->Stats().host_bytes, with_prefill);
  DeletePlan(prefill->plan_id());
  EXPECT_EQ(core_->Stats().host_bytes, host_bytes);
  // A shared prefix page is only read: allowed.
  UpdateAndCompare(plan, table, Update("", {Join({p[4], p[5]}, 1)}), false, "shared prefix");
  // The other session cannot reach this plan.
  EXPECT_EQ(core_->UpdatePlan(other, Update(plan, {Leave(0)})).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(PlanUpdatesTest, CascadeAndCustomMaskPlansAreRefused) {
  const std::vector<int32_t>& p = pages_;
  v1::CreatePlanRequest cascade =
      PlanRequest(pool_, v1::ATTENTION_KIND_DECODE, kQoHeads, {{p[1]}, {p[2]}}, {2, 3}, {});
  v1::CascadeLevel* level = cascade.add_cascade_levels();
  for (int x : {0, 2}) level->add_qo_indptr(x);
  for (int x : {0, 1}) level->add_kv_indptr(x);
  level->add_kv_indices(p[0]);
  level->add_kv_last_page_len(kPageSize);
  auto cascade_plan = core_->CreatePlan(s_, cascade);
  ASSERT_TRUE(cascade_plan.ok()) << cascade_plan.status();
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(cascade_plan->plan_id(), {Grow(0, 1)})).status(),
                kFailedPrecondition, HasSubstr("is a cascade plan (1 cascade_levels)"));

  v1::CreatePlanRequest masked =
      PlanRequest(pool_, v1::ATTENTION_KIND_PREFILL, kQoHeads, {{p[3]}}, {4}, {2});
  masked.set_custom_mask(std::string("\xff", 1));  // 2 x 4 bits, all visible
  auto masked_plan = core_->CreatePlan(s_, masked);
  ASSERT_TRUE(masked_plan.ok()) << masked_plan.status();
  EXPECT_STATUS(core_->UpdatePlan(s_, Update(masked_plan->plan_id(), {Grow(0, 0, {}, 1)})).status(),
                kFailedPrecondition, HasSubstr("has a custom_mask"));
}

TEST_F(PlanUpdatesTest, ClosingTheSessionReleasesAnUpdatedPlan) {
  const uint64_t baseline = core_->Stats().host_bytes;
  const std::string s2 = Open(*core_);
  ASSERT_TRUE(AttachByName(*core_, s2).ok());
  const std::vector<int32_t> mine = Allocate(*core_, s2, pool_, 6);
  ASSERT_EQ(mine.size(), 6u);
  auto plan = core_->CreatePlan(s2, PlanRequest(pool_, v1::ATTENTION_KIND_DECODE, kQoHeads,
                                                {{mine[0]}, {mine[1]}}, {4, 1}, {}));
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto updated = core_->UpdatePlan(
      s2, Update(plan->plan_id(), {Grow(0, 5, {mine[2], mine[3]}), Join({mine[4], mine[5]}, 3)}));
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->kv_tokens(), 9 + 1 + 7);
  ASSERT_TRUE(core_->CloseSession(s2).ok());
  EXPECT_EQ(core_->Stats().host_bytes, baseline);
  EXPECT_EQ(FreePagesOf(*core_, s_, pool_), 16);
}

// The plan's host charge follows its table: an update that would take the session past
// --max_session_host_bytes is refused (RESOURCE_EXHAUSTED), and nothing changes.
TEST(PlanUpdatesBudgetTest, AnUpdatePastTheSessionsHostBudgetIsRefused) {
  struct Setup {
    std::string session, pool, plan;
    std::vector<int32_t> pages;
  };
  auto set_up = [](Core& core) {
    Setup s;
    s.session = Open(core);
    s.pool = CreatePool(core, s.session).pool_id();
    s.pages = Allocate(core, s.session, s.pool, 16);
    auto plan = core.CreatePlan(
        s.session, PlanRequest(s.pool, v1::ATTENTION_KIND_DECODE, 2, {{s.pages[0]}}, {2}, {}));
    EXPECT_TRUE(plan.ok()) << plan.status();
    s.plan = plan.ok() ? plan->plan_id() : "";
    return s;
  };
  uint64_t used = 0;
  {
    auto core = MakeCore();
    set_up(*core);
    used = core->Stats().host_bytes;  // all of it this one session's
  }
  CoreOptions options;
  options.max_session_host_bytes = used + 512;
  auto core = MakeCore(options);
  const Setup s = set_up(*core);
  ASSERT_EQ(core->Stats().host_bytes, used);
  // A request of 14 pages joins: its entries, copies and index take more than 512 bytes.
  const std::vector<int32_t> joined(s.pages.begin() + 1, s.pages.begin() + 15);
  EXPECT_STATUS(core->UpdatePlan(s.session, Update(s.plan, {Join(joined, 1)})).status(),
                kResourceExhausted, HasSubstr("--max_session_host_bytes"));
  EXPECT_EQ(core->Stats().host_bytes, used);
  auto shape = core->UpdatePlan(s.session, Update(s.plan, {}));
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->batch_size(), 1);
  // Nothing pinned: with the plan gone and the references freed, every page is free.
  v1::DeletePlanRequest del;
  del.set_plan_id(s.plan);
  ASSERT_TRUE(core->DeletePlan(s.session, del).ok());
  v1::FreePagesRequest free;
  free.set_pool_id(s.pool);
  free.mutable_page_ids()->Add(s.pages.begin(), s.pages.end());
  ASSERT_TRUE(core->FreePages(s.session, free).ok());
  EXPECT_EQ(FreePagesOf(*core, s.session, s.pool), 16);
}

}  // namespace
}  // namespace attnd::server::testing
