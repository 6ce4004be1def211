// The client's session mechanics against an in-process fake attnd service (no daemon): the
// `open` handshake, request ids, per-command error codes, typed-call packing, the command timeout,
// the unary path's metadata and close, and grpc.health.v1 through the generic stub.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "attnd/client/attnd_client.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

namespace attnd::client {
namespace {

// A fake daemon: just enough behaviour to observe what the client sends.
class FakeAttnd final : public v1::Attnd::Service {
 public:
  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::SessionResponse, v1::SessionRequest>* stream) override {
    RecordAuthorization(context);
    v1::SessionRequest request;
    bool opened = false;
    while (stream->Read(&request)) {
      v1::SessionResponse response;
      response.set_request_id(request.request_id());
      request_ids.push_back(request.request_id());
      if (!opened) {
        if (!request.has_open()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "first message must be open");
        }
        opened = true;
        last_client_name = request.open().client_name();
        response.mutable_open()->set_session_id("stream-session-1");
      } else if (request.has_create_pool()) {
        const v1::CreatePoolRequest& c = request.create_pool();
        last_pool = c;
        if (c.name() == "refused") {
          response.set_code(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
          response.set_message("head_dim=65 is not supported");
        } else {
          v1::PoolInfo* pool = response.mutable_create_pool()->mutable_pool();
          pool->set_pool_id("pool-" + c.name());
          pool->set_name(c.name());
          pool->set_num_layers(c.num_layers());
          pool->set_head_dim(c.head_dim());
          pool->set_num_pages(c.num_pages());
          pool->set_free_pages(c.num_pages());
        }
      } else if (request.has_create_plan()) {
        const v1::CreatePlanRequest& p = request.create_plan();
        last_plan = p;
        v1::CreatePlanResponse* out = response.mutable_create_plan();
        out->set_plan_id("plan-1");
        out->set_batch_size(p.kv_indptr_size() - 1);
      } else if (request.has_update_plan()) {
        RecordUpdate(request.update_plan(), response.mutable_update_plan());
      } else if (request.has_describe_pool()) {
        const std::string& id = request.describe_pool().pool_id();
        if (id == "slow") absl::SleepFor(absl::Seconds(3));
        if (id == "wrong-id") response.set_request_id(request.request_id() + 100);
        if (id == "drop") return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too big");
        response.mutable_describe_pool()->mutable_pool()->set_pool_id(id);
      } else if (request.has_run()) {
        last_run = request.run();
        // o = q (so the client's decoding can be checked), lse = 1.5 per row and head.
        v1::RunResponse* run = response.mutable_run();
        *run->mutable_o() = request.run().q();
        const int64_t rows = request.run().q().shape(0), heads = request.run().q().shape(1);
        if (request.run().options().return_lse()) {
          *run->mutable_lse() =
              *MakeTensor(std::vector<float>(rows * heads, 1.5f), {rows, heads}, v1::DTYPE_FLOAT32);
        }
      } else {
        response.set_code(static_cast<int>(grpc::StatusCode::UNIMPLEMENTED));
        response.set_message("fake");
      }
      if (!stream->Write(response)) break;
    }
    stream_ended = true;
    (void)context;
    return grpc::Status::OK;
  }

  grpc::Status OpenSession(grpc::ServerContext* context, const v1::OpenSessionRequest* request,
                           v1::OpenSessionResponse* response) override {
    RecordAuthorization(context);
    response->set_session_id("unary-session-7");
    response->set_lease_ms(request->lease_ms() == 0 ? 30000 : request->lease_ms());
    return grpc::Status::OK;
  }

  grpc::Status CloseSession(grpc::ServerContext* context, const v1::CloseSessionRequest*,
                            v1::CloseSessionResponse*) override {
    if (SessionOf(context) != "unary-session-7") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no session");
    }
    ++closes;
    return grpc::Status::OK;
  }

  grpc::Status AllocatePages(grpc::ServerContext* context, const v1::AllocatePagesRequest* request,
                             v1::AllocatePagesResponse* response) override {
    const std::string session = SessionOf(context);
    if (session != "unary-session-7") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "session '" + session + "' not found");
    }
    if (request->count() < 1) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("count=", request->count(), " must be >= 1"));
    }
    for (int i = 0; i < request->count(); ++i) response->add_page_ids(10 + i);
    response->set_free_pages(100 - request->count());
    return grpc::Status::OK;
  }

  grpc::Status UpdatePlan(grpc::ServerContext* context, const v1::UpdatePlanRequest* request,
                          v1::UpdatePlanResponse* response) override {
    if (SessionOf(context) != "unary-session-7") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no session");
    }
    if (request->plan_id() == "refused") {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "deltas[0].grow.new_pages[0]=9: page 9 of pool 'p' is not held by "
                          "this session");
    }
    RecordUpdate(*request, response);
    return grpc::Status::OK;
  }

  // An UpdatePlan as the fake answers it: batch_size = number of deltas, kv_tokens = 100.
  void RecordUpdate(const v1::UpdatePlanRequest& request, v1::UpdatePlanResponse* response) {
    std::lock_guard<std::mutex> lock(mu);
    last_update = request;
    response->set_batch_size(request.deltas_size());
    response->set_qo_tokens(request.deltas_size());
    response->set_kv_tokens(100);
  }

  void RecordAuthorization(grpc::ServerContext* context) {
    auto it = context->client_metadata().find("authorization");
    std::lock_guard<std::mutex> lock(mu);
    authorization.push_back(it == context->client_metadata().end()
                                ? "<none>"
                                : std::string(it->second.data(), it->second.size()));
  }

  static std::string SessionOf(grpc::ServerContext* context) {
    auto it = context->client_metadata().find(kSessionMetadataKey);
    if (it == context->client_metadata().end()) return "";
    return std::string(it->second.data(), it->second.size());
  }

  std::mutex mu;
  std::vector<std::string> authorization;  // per OpenSession / Session call
  std::vector<uint64_t> request_ids;
  std::string last_client_name;
  v1::CreatePoolRequest last_pool;
  v1::CreatePlanRequest last_plan;
  v1::UpdatePlanRequest last_update;
  v1::RunRequest last_run;
  std::atomic<int> closes{0};
  std::atomic<bool> stream_ended{false};
};

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/attnd-client-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    target_ = absl::StrCat("unix://", dir_, "/fake.sock");
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(target_, grpc::InsecureServerCredentials());
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ClientOptions options;
    options.target = target_;
    options.default_deadline = absl::Seconds(1);
    options.client_name = "unit-test";
    auto client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    ASSERT_TRUE(client_->WaitForConnected(absl::Seconds(5)).ok());
  }
  void TearDown() override {
    client_.reset();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    std::filesystem::remove_all(dir_);
  }

  FakeAttnd service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Client> client_;
  std::string dir_, target_;
};

TEST_F(SessionTest, OpenSendsOpenFirstAndClosesTheStream) {
  {
    auto session = client_->OpenSession();
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ((*session)->session_id(), "stream-session-1");
    EXPECT_EQ(service_.last_client_name, "unit-test");
    EXPECT_TRUE((*session)->is_open());
  }  // destructor closes
  for (int i = 0; i < 100 && !service_.stream_ended; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(service_.stream_ended);
}

TEST_F(SessionTest, RequestIdsIncreaseAndTypedCallsPackFields) {
  auto session = client_->OpenSession("named");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(service_.last_client_name, "named");
  PoolSpec spec;
  spec.name = "p";
  spec.num_layers = 3;
  spec.head_dim = 64;
  spec.num_pages = 12;
  spec.kv_dtype = v1::DTYPE_FLOAT8_E5M2;
  spec.k_scale = {0.5f, 1.f, 2.f};  // FP8 scales, one per layer, sent as they are
  auto pool = (*session)->CreatePool(spec);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(
      std::vector<float>(service_.last_pool.k_scale().begin(), service_.last_pool.k_scale().end()),
      spec.k_scale);
  EXPECT_TRUE(service_.last_pool.v_scale().empty());
  EXPECT_EQ(service_.last_pool.kv_dtype(), v1::DTYPE_FLOAT8_E5M2);
  EXPECT_EQ(pool->pool_id(), "pool-p");
  EXPECT_EQ(pool->num_layers(), 3);
  EXPECT_EQ(pool->num_pages(), 12);

  PlanSpec plan;
  plan.pool_id = "pool-p";
  plan.kind = v1::ATTENTION_KIND_PREFILL;
  plan.num_qo_heads = 8;
  plan.kv_indptr = {0, 2, 3};
  plan.kv_indices = {4, 5, 9};
  plan.kv_last_page_len = {3, 16};
  plan.qo_indptr = {0, 5, 6};
  // A cascade level: both requests share prefix pages 7 and 8.
  plan.cascade_levels.push_back(
      {.qo_indptr = {0, 6}, .kv_indptr = {0, 2}, .kv_indices = {7, 8}, .kv_last_page_len = {16}});
  plan.custom_mask = std::string("\x0f\xff\x01", 3);  // packed bits, passed through as they are
  auto info = (*session)->CreatePlan(plan);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->plan_id, "plan-1");
  EXPECT_EQ(info->batch_size, 2);
  const v1::CreatePlanRequest& sent = service_.last_plan;
  EXPECT_EQ(sent.kind(), v1::ATTENTION_KIND_PREFILL);
  EXPECT_EQ(sent.num_qo_heads(), 8);
  EXPECT_EQ(std::vector<int32_t>(sent.kv_indices().begin(), sent.kv_indices().end()),
            plan.kv_indices);
  EXPECT_EQ(std::vector<int32_t>(sent.qo_indptr().begin(), sent.qo_indptr().end()), plan.qo_indptr);
  EXPECT_EQ(std::vector<int32_t>(sent.kv_last_page_len().begin(), sent.kv_last_page_len().end()),
            plan.kv_last_page_len);
  ASSERT_EQ(sent.cascade_levels_size(), 1);
  const v1::CascadeLevel& level = sent.cascade_levels(0);
  EXPECT_EQ(std::vector<int32_t>(level.qo_indptr().begin(), level.qo_indptr().end()),
            plan.cascade_levels[0].qo_indptr);
  EXPECT_EQ(std::vector<int32_t>(level.kv_indptr().begin(), level.kv_indptr().end()),
            plan.cascade_levels[0].kv_indptr);
  EXPECT_EQ(std::vector<int32_t>(level.kv_indices().begin(), level.kv_indices().end()),
            plan.cascade_levels[0].kv_indices);
  EXPECT_EQ(std::vector<int32_t>(level.kv_last_page_len().begin(), level.kv_last_page_len().end()),
            plan.cascade_levels[0].kv_last_page_len);
  EXPECT_EQ(sent.custom_mask(), plan.custom_mask);
  ASSERT_EQ(service_.request_ids.size(), 3u);
  EXPECT_EQ(service_.request_ids[0] + 1, service_.request_ids[1]);
  EXPECT_EQ(service_.request_ids[1] + 1, service_.request_ids[2]);
}

// The deltas of a streamed page-table update reach the wire as given, on the stream and on the
// unary path; the reply becomes a PlanInfo; a refusal keeps its code and message.
TEST_F(SessionTest, UpdatePlanPacksItsDeltas) {
  const std::vector<PlanDeltaSpec> deltas = {
      PlanGrow{.request = 3, .num_tokens = 17, .new_pages = {40, 41}, .qo_len = 5},
      PlanLeave{.request = 1},
      PlanJoin{.kv_indices = {7, 8, 9}, .kv_last_page_len = 2, .qo_len = 1},
  };
  auto expect_sent = [&](const v1::UpdatePlanRequest& sent) {
    EXPECT_EQ(sent.plan_id(), "plan-1");
    ASSERT_EQ(sent.deltas_size(), 3);
    ASSERT_TRUE(sent.deltas(0).has_grow());
    const v1::PlanDelta::Grow& grow = sent.deltas(0).grow();
    EXPECT_EQ(grow.request(), 3);
    EXPECT_EQ(grow.num_tokens(), 17);
    EXPECT_EQ(std::vector<int32_t>(grow.new_pages().begin(), grow.new_pages().end()),
              std::vector<int32_t>({40, 41}));
    EXPECT_EQ(grow.qo_len(), 5);
    ASSERT_TRUE(sent.deltas(1).has_leave());
    EXPECT_EQ(sent.deltas(1).leave().request(), 1);
    ASSERT_TRUE(sent.deltas(2).has_join());
    const v1::PlanDelta::Join& join = sent.deltas(2).join();
    EXPECT_EQ(std::vector<int32_t>(join.kv_indices().begin(), join.kv_indices().end()),
              std::vector<int32_t>({7, 8, 9}));
    EXPECT_EQ(join.kv_last_page_len(), 2);
    EXPECT_EQ(join.qo_len(), 1);
  };
  {
    auto session = client_->OpenSession();
    ASSERT_TRUE(session.ok()) << session.status();
    auto info = (*session)->UpdatePlan("plan-1", deltas);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->plan_id, "plan-1");
    EXPECT_EQ(info->batch_size, 3);
    EXPECT_EQ(info->kv_tokens, 100);
    expect_sent(service_.last_update);
  }
  service_.last_update.Clear();
  auto unary = client_->OpenUnarySession();
  ASSERT_TRUE(unary.ok()) << unary.status();
  auto info = (*unary)->UpdatePlan("plan-1", deltas);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->qo_tokens, 3);
  expect_sent(service_.last_update);
  auto refused = (*unary)->UpdatePlan("refused", {PlanGrow{.request = 0, .num_tokens = 1}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(refused.status().message(),
            "deltas[0].grow.new_pages[0]=9: page 9 of pool 'p' is not held by this session");
  // An empty update is a valid call (it reports the plan's shape).
  EXPECT_TRUE((*unary)->UpdatePlan("plan-1", {}).ok());
}

TEST_F(SessionTest, CommandErrorsKeepCodeAndMessageAndTheStreamGoesOn) {
  auto session = client_->OpenSession();
  ASSERT_TRUE(session.ok());
  PoolSpec spec;
  spec.name = "refused";
  auto refused = (*session)->CreatePool(spec);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.status().message(), "head_dim=65 is not supported");
  EXPECT_TRUE((*session)->is_open());
  auto unimplemented = (*session)->AllocatePages("p", 1);
  EXPECT_EQ(unimplemented.status().code(), absl::StatusCode::kUnimplemented);
  auto described = (*session)->DescribePool("ok");
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_EQ(described->pool_id(), "ok");
}

TEST_F(SessionTest, RunAndDecodeReturnsFloats) {
  auto session = client_->OpenSession();
  ASSERT_TRUE(session.ok());
  RunArgs args;
  args.plan_id = "plan-1";
  const std::vector<float> q = {0.5f, -1.f, 2.f, 0.25f, 3.f, -0.125f};
  args.q = *MakeTensor(q, {1, 2, 3}, v1::DTYPE_FLOAT16);
  args.options.set_return_lse(true);
  auto out = (*session)->RunAndDecode(args);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->o, q);
  EXPECT_EQ(out->lse, std::vector<float>(2, 1.5f));
  EXPECT_EQ(service_.last_run.plan_id(), "plan-1");
  EXPECT_EQ(service_.last_run.completion(), v1::COMPLETION_SYNC);
  EXPECT_TRUE(service_.last_run.wait_event_id().empty());
  EXPECT_FALSE(service_.last_run.has_k());

  args.wait_event_id = "event-3";
  args.completion = v1::COMPLETION_ASYNC;
  args.layer = 5;
  args.k = args.q;
  args.v = args.q;
  ASSERT_TRUE((*session)->Run(args).ok());
  EXPECT_EQ(service_.last_run.wait_event_id(), "event-3");
  EXPECT_EQ(service_.last_run.completion(), v1::COMPLETION_ASYNC);
  EXPECT_EQ(service_.last_run.layer(), 5);
  EXPECT_TRUE(service_.last_run.has_k());
  EXPECT_TRUE(service_.last_run.has_v());
  EXPECT_TRUE(service_.last_run.options().return_lse());
}

TEST_F(SessionTest, BrokenStreamReturnsItsStatusAndStaysClosed) {
  auto session = client_->OpenSession();
  ASSERT_TRUE(session.ok());
  auto dropped = (*session)->DescribePool("drop");
  EXPECT_EQ(dropped.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(dropped.status().message(), "too big");
  EXPECT_FALSE((*session)->is_open());
  auto after = (*session)->DescribePool("ok");
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(after.status().message().find("too big"), std::string::npos);
  EXPECT_EQ((*session)->Close().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(SessionTest, MismatchedRequestIdIsInternalAndEndsTheStream) {
  auto session = client_->OpenSession();
  ASSERT_TRUE(session.ok());
  auto mismatched = (*session)->DescribePool("wrong-id");
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInternal);
  EXPECT_FALSE((*session)->is_open());
}

TEST_F(SessionTest, SlowCommandHitsTheCommandTimeout) {
  SessionOptions options;
  options.command_timeout = absl::Milliseconds(300);
  auto session = Session::Open(client_->channel(), options);
  ASSERT_TRUE(session.ok());
  const absl::Time start = absl::Now();
  auto slow = (*session)->DescribePool("slow");
  EXPECT_EQ(slow.status().code(), absl::StatusCode::kDeadlineExceeded) << slow.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_FALSE((*session)->is_open());
}

TEST_F(SessionTest, UnarySessionSendsMetadataAndClosesOnce) {
  {
    auto session = client_->OpenUnarySession("u", 1234);
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ((*session)->session_id(), "unary-session-7");
    EXPECT_EQ((*session)->lease_ms(), 1234u);
    auto grant = (*session)->AllocatePages("pool", 3);
    ASSERT_TRUE(grant.ok()) << grant.status();
    EXPECT_EQ(grant->page_ids, (std::vector<int32_t>{10, 11, 12}));
    EXPECT_EQ(grant->free_pages, 97);
    auto refused = (*session)->AllocatePages("pool", 0);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(refused.status().message(), "count=0 must be >= 1");
    auto unimplemented = (*session)->DescribePool("p");
    EXPECT_EQ(unimplemented.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_TRUE((*session)->Close().ok());
    EXPECT_TRUE((*session)->Close().ok());  // idempotent, no second RPC
  }
  EXPECT_EQ(service_.closes, 1);
  {
    auto released = client_->OpenUnarySession();
    ASSERT_TRUE(released.ok());
    (*released)->Release();
  }
  EXPECT_EQ(service_.closes, 1);  // Release() does not close
  {
    auto closed_by_destructor = client_->OpenUnarySession();
    ASSERT_TRUE(closed_by_destructor.ok());
  }
  EXPECT_EQ(service_.closes, 2);
}

TEST_F(SessionTest, HealthCheckThroughTheGenericStub) {
  auto overall = client_->CheckHealth();
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_EQ(*overall, HealthStatus::kServing);
  server_->GetHealthCheckService()->SetServingStatus("attnd.v1.Attnd", false);
  auto service = client_->CheckHealth("attnd.v1.Attnd");
  ASSERT_TRUE(service.ok()) << service.status();
  EXPECT_EQ(*service, HealthStatus::kNotServing);
  EXPECT_EQ(client_->CheckHealth("no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SessionTest, TokenGoesIntoTheAuthorizationHeaderOfEveryKindOfCall) {
  ClientOptions options = client_->options();
  options.token = "0123456789abcdef";
  auto with_token = Client::Create(options);
  ASSERT_TRUE(with_token.ok()) << with_token.status();
  ASSERT_TRUE((*with_token)->OpenSession().ok());
  ASSERT_TRUE((*with_token)->OpenUnarySession().ok());
  ASSERT_TRUE(client_->OpenSession().ok());  // the client without a token sends none
  std::lock_guard<std::mutex> lock(service_.mu);
  EXPECT_EQ(
      service_.authorization,
      (std::vector<std::string>{"Bearer 0123456789abcdef", "Bearer 0123456789abcdef", "<none>"}));
}

TEST(ClientTest, TlsOptionsAreChecked) {
  ClientOptions options;
  options.target = "localhost:1";
  options.tls = true;
  options.tls_client_cert_pem = "-----BEGIN CERTIFICATE-----";  // no key
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.tls_client_key_pem = "-----BEGIN PRIVATE KEY-----";
  EXPECT_TRUE(Client::Create(options).ok());  // connects lazily
}

TEST(ClientTest, CreateValidatesOptionsAndFailsFastWithoutADaemon) {
  ClientOptions options;
  options.target = "";
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.target = "unix:///tmp/attnd-no-such-socket-for-tests.sock";
  options.max_message_bytes = 0;
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.max_message_bytes = 1 << 20;
  options.default_deadline = absl::Seconds(2);
  auto client = Client::Create(options);
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->WaitForConnected(absl::Milliseconds(200)).ok());
  auto session = (*client)->OpenSession();
  EXPECT_EQ(session.status().code(), absl::StatusCode::kUnavailable) << session.status();
  EXPECT_EQ((*client)->GetServerInfo().status().code(), absl::StatusCode::kUnavailable);
}

// A region is a memfd sealed against shrinking before anything maps it: nobody (not even its
// creator) can make it shorter than what the daemon maps, so touching it never faults.
TEST(SharedMemoryTest, CreatesASealedMemfdNothingCanShrink) {
  auto region = SharedMemoryRegion::Create("attnd-client-unit", 4096);
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ((*region)->size(), 4096u);
  (*region)->data()[4095] = 42;
  const int seals = fcntl((*region)->fd(), F_GET_SEALS);
  EXPECT_NE(seals & F_SEAL_SHRINK, 0);
  EXPECT_NE(seals & F_SEAL_SEAL, 0);
  EXPECT_NE(ftruncate((*region)->fd(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  struct stat st {};
  ASSERT_EQ(fstat((*region)->fd(), &st), 0);
  EXPECT_EQ(st.st_size, 4096);
  EXPECT_EQ((*region)->data()[4095], 42);
  EXPECT_EQ(SharedMemoryRegion::Create("/x", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PeerLinkTest, DefaultPathFollowsTheUnixTarget) {
  EXPECT_EQ(PeerLink::DefaultPathFor("unix:///tmp/attnd.sock"), "/tmp/attnd.sock.peer");
  EXPECT_EQ(PeerLink::DefaultPathFor("unix:run/a.sock"), "run/a.sock.peer");
  EXPECT_EQ(PeerLink::DefaultPathFor("localhost:9400"), "");
  // No daemon there: no key (calls then go without one), and descriptors cannot be sent.
  PeerLink link("/nonexistent/attnd.sock.peer");
  EXPECT_EQ(link.Key(), "");
  EXPECT_EQ(link.SendFd(0).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace attnd::client
