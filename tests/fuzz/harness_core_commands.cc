#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "attnd/v1/attnd.pb.h"
#include "server/core/core.h"
#include "server/front/command_runner.h"
#include "server/front/metrics.h"
#include "spdlog/spdlog.h"
#include "tests/fuzz/harness.h"

namespace attnd::fuzz {
namespace {

namespace v1 = ::attnd::v1;
using server::Core;
using server::Identity;
using server::SessionBinding;

// Every session of the harness has one principal, so fuzzed sessions attach to the shared pool
// by name as sessions of one user do.
Identity FuzzOwner() { return Identity{"uid:fuzz", ""}; }

constexpr int64_t kPoolPages = 32;
constexpr int32_t kKvHeads = 2, kQoHeads = 4, kHeadDim = 64, kPageSize = 4, kLayers = 2;

struct World {
  std::unique_ptr<Core> core;
  std::unique_ptr<server::front::Metrics> metrics;
  std::unique_ptr<server::front::CommandRunner> runner;
  std::string holder;
  std::string holder_grant;          // the holder's fork grant for the shared pool
  uint64_t baseline_host_bytes = 0;  // the shared pool's bookkeeping
  std::string pool_id;
};

void Check(bool ok, const char* what, const std::string& detail = "") {
  if (!ok) FuzzCheckFailed(what, detail);
}

World& TheWorld() {
  static World* world = [] {
    spdlog::set_level(spdlog::level::off);
    auto* w = new World();
    auto backend = kernels::CreateCpuBackend(kernels::CpuBackendOptions{.num_threads = 1});
    Check(backend.ok(), "cpu backend", backend.status().ToString());
    server::CoreOptions options;
    options.max_pool_bytes = 16ull << 20;  // fuzzed CreatePool requests stay small
    options.max_plans_per_session = 16;
    options.max_buffers_per_session = 4;
    options.max_pages_per_session = 64;
    options.max_sessions = 64;
    auto core = Core::Create(options, *std::move(backend));
    Check(core.ok(), "core", core.status().ToString());
    w->core = *std::move(core);
    w->metrics = std::make_unique<server::front::Metrics>();
    w->runner = std::make_unique<server::front::CommandRunner>(*w->core, *w->metrics);
    auto holder =
        w->core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kStream, FuzzOwner());
    Check(holder.ok(), "holder session");
    w->holder = holder->session_id();
    v1::CreatePoolRequest pool;
    pool.set_name("fz");
    pool.set_num_layers(kLayers);
    pool.set_num_kv_heads(kKvHeads);
    pool.set_head_dim(kHeadDim);
    pool.set_page_size(kPageSize);
    pool.set_kv_dtype(v1::DTYPE_FLOAT16);
    pool.set_num_pages(kPoolPages);
    auto created = w->core->CreatePool(w->holder, pool);
    Check(created.ok(), "shared pool", created.status().ToString());
    w->pool_id = created->pool().pool_id();
    w->holder_grant = created->pool().fork_grant();
    w->baseline_host_bytes = w->core->Stats().host_bytes;
    return w;
  }();
  return *world;
}

void Substitute(std::string* id, const std::string& real) {
  if (id->size() <= 1) *id = real;
}

// Ids a fuzzer cannot guess (random) are swapped in for short placeholders.
void SubstituteIds(v1::SessionRequest& request, const std::string& pool_id,
                   const std::string& plan_id, const std::string& holder_grant) {
  switch (request.command_case()) {
    case v1::SessionRequest::kDescribePool:
      Substitute(request.mutable_describe_pool()->mutable_pool_id(), pool_id);
      break;
    case v1::SessionRequest::kDeletePool:
      Substitute(request.mutable_delete_pool()->mutable_pool_id(), pool_id);
      break;
    case v1::SessionRequest::kAllocatePages:
      Substitute(request.mutable_allocate_pages()->mutable_pool_id(), pool_id);
      break;
    case v1::SessionRequest::kFreePages:
      Substitute(request.mutable_free_pages()->mutable_pool_id(), pool_id);
      break;
    case v1::SessionRequest::kForkPages:
      Substitute(request.mutable_fork_pages()->mutable_pool_id(), pool_id);
      // A one-character grant stands for the holder's (references given to another session).
      if (request.fork_pages().target_grant().size() == 1) {
        *request.mutable_fork_pages()->mutable_target_grant() = holder_grant;
      }
      break;
    case v1::SessionRequest::kCreatePlan:
      Substitute(request.mutable_create_plan()->mutable_pool_id(), pool_id);
      break;
    case v1::SessionRequest::kDeletePlan:
      Substitute(request.mutable_delete_plan()->mutable_plan_id(), plan_id);
      break;
    case v1::SessionRequest::kAppendKv:
      Substitute(request.mutable_append_kv()->mutable_plan_id(), plan_id);
      break;
    case v1::SessionRequest::kRun:
      Substitute(request.mutable_run()->mutable_plan_id(), plan_id);
      break;
    case v1::SessionRequest::kUpdatePlan:
      Substitute(request.mutable_update_plan()->mutable_plan_id(), plan_id);
      break;
    default: break;
  }
}

}  // namespace

void RunCoreCommand(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  v1::SessionRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  if (request.command_case() == v1::SessionRequest::kOpen) return;  // the stream's job

  auto opened = w.core->OpenSession(v1::OpenSessionRequest(), SessionBinding::kStream, FuzzOwner());
  Check(opened.ok(), "open", opened.status().ToString());
  const std::string session = opened->session_id();
  v1::AttachPoolRequest attach;
  attach.set_name("fz");
  Check(w.core->AttachPool(session, attach).ok(), "attach");
  v1::AllocatePagesRequest allocate;
  allocate.set_pool_id(w.pool_id);
  allocate.set_count(3);
  auto pages = w.core->AllocatePages(session, allocate);
  Check(pages.ok(), "allocate", pages.status().ToString());
  v1::CreatePlanRequest plan;
  plan.set_pool_id(w.pool_id);
  plan.set_kind(v1::ATTENTION_KIND_DECODE);
  plan.set_num_qo_heads(kQoHeads);
  plan.add_kv_indptr(0);
  plan.add_kv_indptr(3);
  for (int32_t p : pages->page_ids()) plan.add_kv_indices(p);
  plan.add_kv_last_page_len(2);
  auto created = w.core->CreatePlan(session, plan);
  Check(created.ok(), "plan", created.status().ToString());

  SubstituteIds(request, w.pool_id, created->plan_id(), w.holder_grant);
  v1::SessionResponse response;
  w.runner->Dispatch(session, request, &response);
  Check(response.request_id() == request.request_id(), "request_id echoed");
  Check((response.code() == 0) == (response.result_case() != v1::SessionResponse::RESULT_NOT_SET),
        "a result iff OK", response.ShortDebugString().substr(0, 400));
  Check(response.code() == 0 || !response.message().empty(), "an error has a message",
        response.ShortDebugString().substr(0, 400));

  Check(w.core->CloseSession(session).ok(), "close");
  // References the input gave the holder (a fork through its grant) go back.
  if (response.code() == 0 && request.command_case() == v1::SessionRequest::kForkPages &&
      request.fork_pages().target_grant() == w.holder_grant) {
    v1::FreePagesRequest free;
    free.set_pool_id(w.pool_id);
    *free.mutable_page_ids() = request.fork_pages().page_ids();
    Check(w.core->FreePages(w.holder, free).ok(), "holder frees forked references");
  }
  // Everything the session held is back: pages, plans, buffers, pools it created.
  const server::CoreStats stats = w.core->Stats();
  Check(stats.sessions == 1, "only the holder left", absl::StrCat(stats.sessions));
  Check(stats.plans == 0 && stats.buffers == 0, "no plan or buffer left",
        absl::StrCat(stats.plans, " plans, ", stats.buffers, " buffers"));
  Check(stats.pools.size() == 1, "only the shared pool left", absl::StrCat(stats.pools.size()));
  Check(stats.host_bytes == w.baseline_host_bytes, "host memory charges returned",
        absl::StrCat(stats.host_bytes, " bytes charged, ", w.baseline_host_bytes, " at start"));
  Check(stats.pools[0].free_pages == kPoolPages, "every page free after close",
        absl::StrCat(stats.pools[0].free_pages, " of ", kPoolPages,
                     " free; request: ", request.ShortDebugString().substr(0, 400)));
}

std::vector<std::string> CoreCommandSeeds() {
  std::vector<v1::SessionRequest> seeds;
  auto add = [&](auto&& fill) {
    v1::SessionRequest r;
    r.set_request_id(seeds.size() + 1);
    fill(r);
    seeds.push_back(std::move(r));
  };
  add([](auto& r) { r.mutable_get_server_info(); });
  add([](auto& r) { r.mutable_describe_pool()->set_pool_id("P"); });
  add([](auto& r) {
    auto* c = r.mutable_create_pool();
    c->set_name("seed-pool");
    c->set_num_layers(1);
    c->set_num_kv_heads(1);
    c->set_head_dim(64);
    c->set_page_size(16);
    c->set_kv_dtype(v1::DTYPE_FLOAT16);
    c->set_num_pages(8);
  });
  add([](auto& r) { r.mutable_attach_pool()->set_name("fz"); });
  add([](auto& r) {
    r.mutable_allocate_pages()->set_pool_id("P");
    r.mutable_allocate_pages()->set_count(2);
  });
  add([](auto& r) {
    r.mutable_free_pages()->set_pool_id("P");
    r.mutable_free_pages()->add_page_ids(0);
  });
  add([](auto& r) {
    r.mutable_fork_pages()->set_pool_id("P");
    r.mutable_fork_pages()->add_page_ids(0);
  });
  add([](auto& r) {
    auto* p = r.mutable_create_plan();
    p->set_pool_id("P");
    p->set_kind(v1::ATTENTION_KIND_PREFILL);
    p->set_num_qo_heads(kQoHeads);
    for (int x : {0, 2}) p->add_kv_indptr(x);
    for (int x : {0, 1}) p->add_kv_indices(x);
    p->add_kv_last_page_len(3);
    for (int x : {0, 7}) p->add_qo_indptr(x);
  });
  add([](auto& r) { r.mutable_delete_plan()->set_plan_id("L"); });
  add([](auto& r) {
    // The session's plan (one request over its 3 pages, 10 tokens) grows into its last page,
    // and a request joins over its first two.
    auto* u = r.mutable_update_plan();
    u->set_plan_id("L");
    auto* grow = u->add_deltas()->mutable_grow();
    grow->set_request(0);
    grow->set_num_tokens(1);
    auto* join = u->add_deltas()->mutable_join();
    for (int x : {0, 1}) join->add_kv_indices(x);
    join->set_kv_last_page_len(2);
  });
  auto tensor = [](v1::Tensor* t, v1::DType dtype, const std::vector<int64_t>& shape) {
    t->set_dtype(dtype);
    int64_t n = 1;
    for (int64_t d : shape) {
      t->add_shape(d);
      n *= d;
    }
    t->mutable_inline_data()->assign(n * (dtype == v1::DTYPE_FLOAT32 ? 4 : 2), '\x01');
  };
  add([&](auto& r) {
    auto* run = r.mutable_run();
    run->set_plan_id("L");
    tensor(run->mutable_q(), v1::DTYPE_FLOAT16, {1, kQoHeads, kHeadDim});
    run->mutable_options()->set_return_lse(true);
  });
  add([&](auto& r) {
    auto* run = r.mutable_run();
    run->set_plan_id("L");
    run->set_layer(1);
    tensor(run->mutable_q(), v1::DTYPE_FLOAT32, {1, kQoHeads, kHeadDim});
    tensor(run->mutable_k(), v1::DTYPE_FLOAT16, {1, kKvHeads, kHeadDim});
    tensor(run->mutable_v(), v1::DTYPE_FLOAT16, {1, kKvHeads, kHeadDim});
    auto* o = run->mutable_options();
    o->set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
    o->set_logits_soft_cap(30);
    o->set_window_left(2);
    o->set_window_left_set(true);
    o->add_rope_offsets(5);
  });
  add([&](auto& r) {
    auto* g = r.mutable_run_ragged();
    tensor(g->mutable_q(), v1::DTYPE_FLOAT16, {3, kQoHeads, kHeadDim});
    tensor(g->mutable_k(), v1::DTYPE_FLOAT16, {5, kKvHeads, kHeadDim});
    tensor(g->mutable_v(), v1::DTYPE_FLOAT16, {5, kKvHeads, kHeadDim});
    for (int x : {0, 1, 3}) g->add_qo_indptr(x);
    for (int x : {0, 2, 5}) g->add_kv_indptr(x);
    g->mutable_options()->set_causal(true);
    g->mutable_options()->set_return_lse(true);
  });
  add([&](auto& r) {
    auto* m = r.mutable_merge_state();
    tensor(m->mutable_v_a(), v1::DTYPE_FLOAT16, {3, kQoHeads, kHeadDim});
    tensor(m->mutable_s_a(), v1::DTYPE_FLOAT32, {3, kQoHeads});
    tensor(m->mutable_v_b(), v1::DTYPE_FLOAT16, {3, kQoHeads, kHeadDim});
    tensor(m->mutable_s_b(), v1::DTYPE_FLOAT32, {3, kQoHeads});
  });
  add([&](auto& r) {
    auto* m = r.mutable_merge_states();
    tensor(m->mutable_v(), v1::DTYPE_BFLOAT16, {2, 3, kQoHeads, kHeadDim});
    tensor(m->mutable_s(), v1::DTYPE_FLOAT32, {2, 3, kQoHeads});
    m->set_omit_s(true);
  });
  add([&](auto& r) {
    auto* a = r.mutable_append_kv();
    a->set_plan_id("L");
    tensor(a->mutable_k(), v1::DTYPE_FLOAT16, {1, kKvHeads, kHeadDim});
    tensor(a->mutable_v(), v1::DTYPE_FLOAT16, {1, kKvHeads, kHeadDim});
  });
  add([](auto& r) {
    r.mutable_register_buffer()->mutable_shared_memory()->set_name("/attnd-fuzz-none");
    r.mutable_register_buffer()->set_size_bytes(4096);
  });
  add([](auto& r) { r.mutable_unregister_buffer()->set_buffer_id("b-x"); });
  add([](auto& r) { r.mutable_delete_pool()->set_pool_id("P"); });
  std::vector<std::string> out;
  for (const auto& s : seeds) out.push_back(s.SerializeAsString());
  return out;
}

}  // namespace attnd::fuzz
