// In-process test of the whole front: a Daemon (real Core, CPU backend) on a temporary unix
// socket and an ephemeral HTTP port, driven through the generated gRPC stubs, gRPC health and
// an httplib client.
#include "server/front/daemon.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "attnd/client/peer_link.h"
#include "attnd/client/shared_memory.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "health.grpc.pb.h"
#include "prometheus_text_parser.h"

namespace attnd::server::front {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using testing::ParseExposition;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/attnd-daemon-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_path_ = dir_ + "/attnd.sock";

    DaemonConfig config;
    config.listen = "unix://" + socket_path_;
    config.http_listen = "127.0.0.1:0";
    config.max_pool_bytes = 256ull << 20;
    config.socket_mode = 0600;
    Configure(config);
    kernels::CpuBackendOptions cpu;
    cpu.num_threads = 1;
    auto backend = kernels::CreateCpuBackend(cpu);
    ASSERT_TRUE(backend.ok()) << backend.status();
    auto daemon = Daemon::Start(config, *std::move(backend));
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);

    peer_ = std::make_unique<client::PeerLink>(daemon_->peer_socket_path());
    channel_ = grpc::CreateChannel("unix://" + socket_path_, grpc::InsecureChannelCredentials());
    stub_ = v1::Attnd::NewStub(channel_);
    const v1::ServerInfo info = ServerInfo();
    ASSERT_GT(info.head_dims_size(), 0);
    ASSERT_GT(info.kv_dtypes_size(), 0);
    head_dim_ = info.head_dims(0);
    kv_dtype_ = info.kv_dtypes(0);
    page_size_ = info.page_sizes_size() > 0 ? info.page_sizes(0) : 16;
  }

  // Derived fixtures adjust the daemon's configuration here.
  virtual void Configure(DaemonConfig& /*config*/) {}

  void TearDown() override {
    peer_.reset();
    stub_.reset();
    channel_.reset();
    if (daemon_ != nullptr) daemon_->Shutdown(absl::Seconds(2));
    daemon_.reset();
    rmdir(dir_.c_str());
  }

  v1::ServerInfo ServerInfo() {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    const grpc::Status s = stub_->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return info;
  }

  std::string OpenUnarySession(const std::string& name) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kPeerMetadataKey, peer_->Key());
    v1::OpenSessionRequest req;
    req.set_client_name(name);
    v1::OpenSessionResponse resp;
    const grpc::Status s = stub_->OpenSession(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.session_id();
  }

  v1::CreatePoolRequest PoolRequest(const std::string& name, int64_t pages) const {
    v1::CreatePoolRequest req;
    req.set_name(name);
    req.set_num_layers(1);
    req.set_num_kv_heads(1);
    req.set_head_dim(head_dim_);
    req.set_page_size(page_size_);
    req.set_kv_dtype(static_cast<v1::DType>(kv_dtype_));
    req.set_num_pages(pages);
    return req;
  }

  // Names the session of a unary call, as this process (its peer key) would.
  void NameSession(grpc::ClientContext& ctx, const std::string& session_id) {
    ctx.AddMetadata(kSessionMetadataKey, session_id);
    ctx.AddMetadata(kPeerMetadataKey, peer_->Key());
  }

  // A grpc.health.v1 Watch of `service`; its first update must be SERVING.
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> WatchHealth(
      grpc::ClientContext& ctx, const std::string& service = "") {
    HealthCheckRequest req;
    req.set_service(service);
    auto watch = Health::NewStub(channel_)->Watch(&ctx, req);
    HealthCheckResponse first;
    EXPECT_TRUE(watch->Read(&first));
    EXPECT_EQ(first.status(), HealthCheckResponse::SERVING);
    return watch;
  }
  // Reads a watch's updates until NOT_SERVING (true) or its end (false).
  static bool ReadUntilNotServing(grpc::ClientReader<HealthCheckResponse>& watch) {
    HealthCheckResponse update;
    while (watch.Read(&update)) {
      if (update.status() == HealthCheckResponse::NOT_SERVING) return true;
    }
    return false;
  }

  // /metrics through real HTTP, parsed.
  testing::ParsedExposition ScrapeMetrics() {
    httplib::Client http("127.0.0.1", daemon_->http_port());
    auto res = http.Get("/metrics");
    EXPECT_TRUE(res);
    if (!res) return {};
    EXPECT_EQ(res->status, 200);
    auto parsed = ParseExposition(res->body);
    EXPECT_TRUE(parsed.errors.empty()) << parsed.errors.front();
    return parsed;
  }

  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<client::PeerLink> peer_;  // this process's peer connection
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Attnd::Stub> stub_;
  int head_dim_ = 0;
  int kv_dtype_ = 0;
  int page_size_ = 16;
};

TEST_F(DaemonTest, SocketFileHasTheConfiguredMode) {
  struct stat st {};
  ASSERT_EQ(stat(socket_path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(DaemonTest, ServerInfoNeedsNoSession) {
  const v1::ServerInfo info = ServerInfo();
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_FALSE(info.version().empty());
}

TEST_F(DaemonTest, UnaryCallsWithoutSessionMetadataFailCleanly) {
  {
    grpc::ClientContext ctx;
    v1::CreatePoolResponse resp;
    const grpc::Status s = stub_->CreatePool(&ctx, PoolRequest("nometa", 4), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(s.error_message(),
              "missing x-attnd-session metadata; call OpenSession first or use the Session stream");
  }
  {
    grpc::ClientContext ctx;
    v1::CloseSessionResponse resp;
    EXPECT_EQ(stub_->CloseSession(&ctx, v1::CloseSessionRequest(), &resp).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    NameSession(ctx, "s-does-not-exist");
    v1::DescribePoolRequest req;
    req.set_pool_id("p-x");
    v1::DescribePoolResponse resp;
    EXPECT_EQ(stub_->DescribePool(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // The daemon still serves, and the refusals were counted.
  EXPECT_EQ(ServerInfo().backend(), "cpu");
  const auto m = ScrapeMetrics();
  EXPECT_EQ(
      m.Get("attnd_requests_total", {{"method", "CreatePool"}, {"code", "FAILED_PRECONDITION"}}),
      1);
  EXPECT_EQ(m.Get("attnd_requests_total", {{"method", "DescribePool"}, {"code", "NOT_FOUND"}}), 1);
}

// Session ids are no credentials: a unary call needs the caller's peer key, cannot reach a
// stream's session (however it learnt the id), and a process's unary sessions end with its peer
// connection.
TEST_F(DaemonTest, UnarySessionsAreBoundToTheCallersPeerConnection) {
  {
    grpc::ClientContext ctx;  // no x-attnd-peer
    v1::OpenSessionResponse resp;
    const grpc::Status s = stub_->OpenSession(&ctx, v1::OpenSessionRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
    EXPECT_NE(s.error_message().find("x-attnd-peer"), std::string::npos) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kPeerMetadataKey, "pk-made-up");
    v1::OpenSessionResponse resp;
    EXPECT_EQ(stub_->OpenSession(&ctx, v1::OpenSessionRequest(), &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  // A stream's session, by id, from a unary call of the same process: not found, untouched.
  grpc::ClientContext stream_ctx;
  auto stream = stub_->Session(&stream_ctx);
  v1::SessionRequest open;
  open.mutable_open()->set_client_name("stream-owner");
  ASSERT_TRUE(stream->Write(open));
  v1::SessionResponse opened;
  ASSERT_TRUE(stream->Read(&opened));
  const std::string stream_session = opened.open().session_id();
  v1::SessionRequest create;
  *create.mutable_create_pool() = PoolRequest("stream-pool", 4);
  ASSERT_TRUE(stream->Write(create));
  v1::SessionResponse created;
  ASSERT_TRUE(stream->Read(&created));
  ASSERT_EQ(created.code(), 0) << created.message();
  {
    grpc::ClientContext ctx;
    NameSession(ctx, stream_session);
    v1::CloseSessionResponse resp;
    EXPECT_EQ(stub_->CloseSession(&ctx, v1::CloseSessionRequest(), &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    NameSession(ctx, stream_session);
    v1::DescribePoolRequest req;
    req.set_pool_id(created.create_pool().pool().pool_id());
    v1::DescribePoolResponse resp;
    EXPECT_EQ(stub_->DescribePool(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  v1::SessionRequest describe;
  describe.mutable_describe_pool()->set_pool_id(created.create_pool().pool().pool_id());
  ASSERT_TRUE(stream->Write(describe));
  v1::SessionResponse described;
  ASSERT_TRUE(stream->Read(&described));
  EXPECT_EQ(described.code(), 0) << described.message();  // the stream's session lives on
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());

  // A unary session of another process (another peer connection) is not reachable either, and
  // this process's sessions are released as soon as its peer connection closes.
  const std::string mine = OpenUnarySession("mine");
  ASSERT_FALSE(mine.empty());
  client::PeerLink other(daemon_->peer_socket_path());
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kSessionMetadataKey, mine);
    ctx.AddMetadata(kPeerMetadataKey, other.Key());
    v1::CreatePoolResponse resp;
    EXPECT_EQ(stub_->CreatePool(&ctx, PoolRequest("theirs", 4), &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  const int64_t sessions_before = daemon_->core().Stats().sessions;
  peer_ = std::make_unique<client::PeerLink>(daemon_->peer_socket_path());  // the old one closes
  for (int i = 0; i < 200 && daemon_->core().Stats().sessions >= sessions_before; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(daemon_->core().Stats().sessions, sessions_before - 1);
}

TEST_F(DaemonTest, UnarySessionLifecycle) {
  const std::string session = OpenUnarySession("unary-test");
  ASSERT_FALSE(session.empty());
  std::string pool_id;
  {
    grpc::ClientContext ctx;
    NameSession(ctx, session);
    v1::CreatePoolResponse resp;
    const grpc::Status s = stub_->CreatePool(&ctx, PoolRequest("unary-pool", 8), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    pool_id = resp.pool().pool_id();
    EXPECT_EQ(resp.pool().num_pages(), 8);
  }
  {
    grpc::ClientContext ctx;
    NameSession(ctx, session);
    v1::AllocatePagesRequest req;
    req.set_pool_id(pool_id);
    req.set_count(3);
    v1::AllocatePagesResponse resp;
    ASSERT_TRUE(stub_->AllocatePages(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.page_ids_size(), 3);
    EXPECT_EQ(resp.free_pages(), 5);
  }
  {
    grpc::ClientContext ctx;
    NameSession(ctx, session);
    v1::CloseSessionResponse resp;
    const grpc::Status s = stub_->CloseSession(&ctx, v1::CloseSessionRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    NameSession(ctx, session);
    v1::DescribePoolRequest req;
    req.set_pool_id(pool_id);
    v1::DescribePoolResponse resp;
    EXPECT_EQ(stub_->DescribePool(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(DaemonTest, StreamWhoseFirstMessageIsNotOpenFails) {
  grpc::ClientContext ctx;
  auto stream = stub_->Session(&ctx);
  v1::SessionRequest req;
  req.set_request_id(7);
  *req.mutable_create_pool() = PoolRequest("early", 4);
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  v1::SessionResponse resp;
  EXPECT_FALSE(stream->Read(&resp));
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("first message must be `open`"), std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("create_pool"), std::string::npos) << s.error_message();
}

// Bytes that are no SessionRequest end the stream with INVALID_ARGUMENT saying so, as the first
// message and later (gRPC's typed stream took them for the client's half-close: OK, no message).
TEST_F(DaemonTest, UnparsableStreamMessageEndsTheStreamWithInvalidArgument) {
  using RawStream = grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;
  const grpc::internal::RpcMethod method("/attnd.v1.Attnd/Session",
                                         grpc::internal::RpcMethod::BIDI_STREAMING);
  auto write = [](RawStream& stream, const std::string& bytes) {
    grpc::Slice slice(bytes);
    return stream.Write(grpc::ByteBuffer(&slice, 1));
  };
  // Field 2 (`open`, length-delimited) claiming 5 bytes of which 2 follow.
  const std::string truncated(
      "\x12\x05"
      "ab",
      4);
  for (const bool after_open : {false, true}) {
    grpc::ClientContext ctx;
    std::unique_ptr<RawStream> stream(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
            channel_.get(), method, &ctx));
    grpc::ByteBuffer answer;
    if (after_open) {
      v1::SessionRequest open;
      open.set_request_id(1);
      open.mutable_open()->set_client_name("raw");
      ASSERT_TRUE(write(*stream, open.SerializeAsString()));
      ASSERT_TRUE(stream->Read(&answer));
    }
    ASSERT_TRUE(write(*stream, truncated));
    stream->WritesDone();
    EXPECT_FALSE(stream->Read(&answer));
    const grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << after_open;
    EXPECT_NE(status.error_message().find(after_open ? "message 2 of the Session stream (4 bytes)"
                                                     : "message 1 of the Session stream (4 bytes)"),
              std::string::npos)
        << status.error_message();
    EXPECT_NE(status.error_message().find("is not a valid attnd.v1.SessionRequest"),
              std::string::npos);
  }
  EXPECT_EQ(daemon_->core().Stats().sessions, 0);  // the second stream's session was closed
}

TEST_F(DaemonTest, StreamErrorsKeepTheStreamAlive) {
  grpc::ClientContext ctx;
  auto stream = stub_->Session(&ctx);
  v1::SessionRequest req;
  v1::SessionResponse resp;

  req.set_request_id(1);
  req.mutable_open()->set_client_name("stream-test");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 1u);
  EXPECT_EQ(resp.code(), 0);
  ASSERT_TRUE(resp.has_open());
  EXPECT_FALSE(resp.open().session_id().empty());

  // A bad command: answered with its error, same request_id.
  req.Clear();
  req.set_request_id(2);
  req.mutable_allocate_pages()->set_pool_id("p-unknown");
  req.mutable_allocate_pages()->set_count(1);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 2u);
  EXPECT_NE(resp.code(), 0);
  EXPECT_FALSE(resp.message().empty());
  EXPECT_EQ(resp.result_case(), v1::SessionResponse::RESULT_NOT_SET);

  // A second `open` is refused, the stream goes on.
  req.Clear();
  req.set_request_id(3);
  req.mutable_open();
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 3u);
  EXPECT_EQ(resp.code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));

  // An empty command.
  req.Clear();
  req.set_request_id(4);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 4u);
  EXPECT_EQ(resp.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));

  // Good commands still work.
  req.Clear();
  req.set_request_id(5);
  *req.mutable_create_pool() = PoolRequest("stream-pool", 4);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 5u);
  ASSERT_EQ(resp.code(), 0) << resp.message();
  ASSERT_TRUE(resp.has_create_pool());
  const std::string pool_id = resp.create_pool().pool().pool_id();

  req.Clear();
  req.set_request_id(6);
  req.mutable_get_server_info();
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 6u);
  EXPECT_EQ(resp.server_info().backend(), "cpu");

  req.Clear();
  req.set_request_id(7);
  req.mutable_describe_pool()->set_pool_id(pool_id);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.request_id(), 7u);
  EXPECT_EQ(resp.code(), 0);
  EXPECT_EQ(resp.describe_pool().pool().free_pages(), 4);

  const auto m = ScrapeMetrics();
  EXPECT_EQ(m.Get("attnd_streams_active"), 1);
  EXPECT_EQ(m.Get("attnd_requests_total", {{"method", "CreatePool"}, {"code", "OK"}}), 1);
  EXPECT_GE(*m.Get("attnd_sessions"), 1);

  stream->WritesDone();
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(DaemonTest, CancelledStreamReleasesItsPages) {
  constexpr int kPages = 6;
  auto ctx = std::make_unique<grpc::ClientContext>();
  // The stream presents the process's peer key, so its pools belong to this uid's principal.
  ctx->AddMetadata(kPeerMetadataKey, peer_->Key());
  auto stream = stub_->Session(ctx.get());
  v1::SessionRequest req;
  v1::SessionResponse resp;
  req.set_request_id(1);
  req.mutable_open()->set_client_name("doomed");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_EQ(resp.code(), 0) << resp.message();

  req.Clear();
  req.set_request_id(2);
  *req.mutable_create_pool() = PoolRequest("shared-pool", kPages);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_EQ(resp.code(), 0) << resp.message();
  const std::string pool_id = resp.create_pool().pool().pool_id();

  // A second (unary) session attaches, so the pool outlives the stream.
  const std::string watcher = OpenUnarySession("watcher");
  {
    grpc::ClientContext actx;
    NameSession(actx, watcher);
    v1::AttachPoolRequest areq;
    areq.set_name("shared-pool");
    v1::AttachPoolResponse aresp;
    const grpc::Status s = stub_->AttachPool(&actx, areq, &aresp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  req.Clear();
  req.set_request_id(3);
  req.mutable_allocate_pages()->set_pool_id(pool_id);
  req.mutable_allocate_pages()->set_count(kPages - 1);
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_EQ(resp.code(), 0) << resp.message();
  EXPECT_EQ(resp.allocate_pages().free_pages(), 1);

  auto free_pages_seen_by_watcher = [&]() -> int64_t {
    grpc::ClientContext dctx;
    NameSession(dctx, watcher);
    v1::DescribePoolRequest dreq;
    dreq.set_pool_id(pool_id);
    v1::DescribePoolResponse dresp;
    const grpc::Status s = stub_->DescribePool(&dctx, dreq, &dresp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return dresp.pool().free_pages();
  };
  EXPECT_EQ(free_pages_seen_by_watcher(), 1);

  // The client "crashes": its call is cancelled without a goodbye.
  ctx->TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);

  int64_t free_pages = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    free_pages = free_pages_seen_by_watcher();
    if (free_pages == kPages) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(free_pages, kPages);
}

TEST_F(DaemonTest, GrpcHealthSaysServing) {
  auto health = Health::NewStub(channel_);
  for (const std::string service : {"", "attnd.v1.Attnd"}) {
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    const grpc::Status s = health->Check(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << "'" << service << "': " << s.error_message();
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << "'" << service << "'";
  }
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service("no.such.Service");
  HealthCheckResponse resp;
  EXPECT_EQ(health->Check(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DaemonTest, GrpcHealthWatchSeesNotServingOnShutdown) {
  grpc::ClientContext ctx;
  auto watch = WatchHealth(ctx, "attnd.v1.Attnd");
  std::thread stopper([this] { daemon_->Shutdown(absl::Seconds(2)); });
  const bool saw_not_serving = ReadUntilNotServing(*watch);
  ctx.TryCancel();
  watch->Finish();
  stopper.join();
  EXPECT_TRUE(saw_not_serving);
}

// A stream command that is running when shutdown starts is answered; then the stream ends.
TEST_F(DaemonTest, ShutdownDrainsARunningCommand) {
  constexpr int kTokens = 512, kQoHeads = 8, kHeadDim = 128, kPageSize = 16;
  constexpr int kPages = kTokens / kPageSize;
  grpc::ClientContext ctx;
  auto stream = stub_->Session(&ctx);
  v1::SessionRequest req;
  v1::SessionResponse resp;
  auto roundtrip = [&](uint64_t id) {
    req.set_request_id(id);
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.request_id(), id);
    EXPECT_EQ(resp.code(), 0) << resp.message();
    req.Clear();
  };
  req.mutable_open()->set_client_name("drain");
  roundtrip(1);
  v1::CreatePoolRequest pool = PoolRequest("drain-pool", kPages);
  pool.set_head_dim(kHeadDim);
  pool.set_page_size(kPageSize);
  pool.set_kv_dtype(v1::DTYPE_FLOAT32);
  *req.mutable_create_pool() = pool;
  roundtrip(2);
  const std::string pool_id = resp.create_pool().pool().pool_id();
  req.mutable_allocate_pages()->set_pool_id(pool_id);
  req.mutable_allocate_pages()->set_count(kPages);
  roundtrip(3);
  const auto pages = resp.allocate_pages().page_ids();
  v1::CreatePlanRequest* plan = req.mutable_create_plan();
  plan->set_pool_id(pool_id);
  plan->set_kind(v1::ATTENTION_KIND_PREFILL);
  plan->set_num_qo_heads(kQoHeads);
  plan->add_kv_indptr(0);
  plan->add_kv_indptr(kPages);
  for (int32_t page : pages) plan->add_kv_indices(page);
  plan->add_kv_last_page_len(kPageSize);
  plan->add_qo_indptr(0);
  plan->add_qo_indptr(kTokens);
  roundtrip(4);
  const std::string plan_id = resp.create_plan().plan_id();

  auto tensor = [](v1::Tensor* t, int heads) {
    t->set_dtype(v1::DTYPE_FLOAT32);
    t->add_shape(kTokens);
    t->add_shape(heads);
    t->add_shape(kHeadDim);
    t->set_inline_data(std::string(size_t{4} * kTokens * heads * kHeadDim, '\0'));
  };
  v1::RunRequest* run = req.mutable_run();
  run->set_plan_id(plan_id);
  run->set_layer(0);
  tensor(run->mutable_q(), kQoHeads);
  tensor(run->mutable_k(), 1);
  tensor(run->mutable_v(), 1);
  run->mutable_options()->set_causal(true);
  req.set_request_id(5);
  ASSERT_TRUE(stream->Write(req));

  // Start the shutdown only once the Run is executing.
  const auto wait_until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (daemon_->commands_in_flight() == 0 && std::chrono::steady_clock::now() < wait_until) {
    std::this_thread::yield();
  }
  const bool caught_running = daemon_->commands_in_flight() > 0;
  std::thread stopper([this] { daemon_->Shutdown(absl::Seconds(30)); });
  ASSERT_TRUE(stream->Read(&resp));
  stopper.join();
  EXPECT_EQ(resp.request_id(), 5u);
  EXPECT_EQ(resp.code(), 0) << resp.message();
  EXPECT_EQ(resp.run().o().inline_data().size(), size_t{4} * kTokens * kQoHeads * kHeadDim);
  EXPECT_FALSE(stream->Read(&resp));
  const grpc::Status end = stream->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  if (!caught_running) GTEST_SKIP() << "the Run finished before shutdown could start";
}

TEST_F(DaemonTest, OpenHealthWatchDoesNotHoldShutdown) {
  grpc::ClientContext ctx;
  auto watch = WatchHealth(ctx);
  const auto start = std::chrono::steady_clock::now();
  daemon_->Shutdown(absl::Seconds(10));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  ctx.TryCancel();
  watch->Finish();
}

TEST_F(DaemonTest, HttpEndpointsAnswer) {
  httplib::Client http("127.0.0.1", daemon_->http_port());
  auto healthz = http.Get("/healthz");
  ASSERT_TRUE(healthz);
  EXPECT_EQ(healthz->status, 200);
  EXPECT_EQ(healthz->body, "ok\n");
  auto readyz = http.Get("/readyz");
  ASSERT_TRUE(readyz);
  EXPECT_EQ(readyz->status, 200) << readyz->body;

  OpenUnarySession("metrics-test");
  const auto m = ScrapeMetrics();
  EXPECT_EQ(m.Get("attnd_requests_total", {{"method", "OpenSession"}, {"code", "OK"}}), 1);
  EXPECT_GE(*m.Get("attnd_request_duration_seconds_count", {{"method", "GetServerInfo"}}), 1);
  EXPECT_GE(*m.Get("attnd_sessions"), 1);
  EXPECT_EQ(m.Get("attnd_backend_healthy"), 1);
  const auto info = m.All("attnd_info");
  ASSERT_EQ(info.size(), 1u);
  EXPECT_EQ(info[0].labels.at("backend"), "cpu");
  EXPECT_EQ(info[0].value, 1);

  // After shutdown has begun /readyz says so (HTTP is the last thing to stop).
  daemon_->serving_state().BeginShutdown();
  readyz = http.Get("/readyz");
  ASSERT_TRUE(readyz);
  EXPECT_EQ(readyz->status, 503);
  EXPECT_NE(readyz->body.find("shutting down"), std::string::npos);
}

TEST_F(DaemonTest, ShutdownClosesOpenStreamsAndRemovesTheSocket) {
  grpc::ClientContext ctx;
  auto stream = stub_->Session(&ctx);
  v1::SessionRequest req;
  v1::SessionResponse resp;
  req.set_request_id(1);
  req.mutable_open()->set_client_name("lingering");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_EQ(resp.code(), 0);

  // An idle stream does not hold the drain for its whole deadline.
  const auto start = std::chrono::steady_clock::now();
  daemon_->Shutdown(absl::Seconds(10));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_FALSE(stream->Read(&resp));
  const grpc::Status finished = stream->Finish();
  EXPECT_FALSE(finished.ok());
  EXPECT_NE(access(socket_path_.c_str(), F_OK), 0);
  EXPECT_EQ(daemon_->core().Stats().sessions, 0);
}

}  // namespace
}  // namespace attnd::server::front

namespace attnd::server::front {
namespace {

class SmallMessagesDaemonTest : public DaemonTest {
 protected:
  void Configure(DaemonConfig& config) override { config.max_message_bytes = 1 << 20; }
};

// An inline answer over --max_message_bytes is that command's RESOURCE_EXHAUSTED; the stream and
// its session live on (a failed write would have ended both).
TEST_F(SmallMessagesDaemonTest, OversizedInlineOutputFailsOnlyThatCommand) {
  constexpr int kTokens = 384, kQoHeads = 8, kHeadDim = 128, kPageSize = 16;
  constexpr int kPages = kTokens / kPageSize;
  constexpr size_t kQBytes = size_t{4} * kTokens * kQoHeads * kHeadDim;  // 1.5 MiB
  auto region = client::SharedMemoryRegion::Create("attnd-front-test", kQBytes);
  ASSERT_TRUE(region.ok()) << region.status();
  auto fd_token = peer_->SendFd((*region)->fd());
  ASSERT_TRUE(fd_token.ok()) << fd_token.status();

  grpc::ClientContext ctx;
  ctx.AddMetadata(kPeerMetadataKey, peer_->Key());  // the stream's session owns the descriptor
  auto stream = stub_->Session(&ctx);
  v1::SessionRequest req;
  v1::SessionResponse resp;
  auto roundtrip = [&](uint64_t id) {
    req.set_request_id(id);
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.request_id(), id);
    req.Clear();
    return resp.code();
  };
  req.mutable_open()->set_client_name("big-output");
  ASSERT_EQ(roundtrip(1), 0);
  v1::CreatePoolRequest pool = PoolRequest("big-output-pool", kPages);
  pool.set_head_dim(kHeadDim);
  pool.set_page_size(kPageSize);
  pool.set_kv_dtype(v1::DTYPE_FLOAT32);
  *req.mutable_create_pool() = pool;
  ASSERT_EQ(roundtrip(2), 0) << resp.message();
  const std::string pool_id = resp.create_pool().pool().pool_id();
  req.mutable_allocate_pages()->set_pool_id(pool_id);
  req.mutable_allocate_pages()->set_count(kPages);
  ASSERT_EQ(roundtrip(3), 0) << resp.message();
  const auto pages = resp.allocate_pages().page_ids();
  v1::CreatePlanRequest* plan = req.mutable_create_plan();
  plan->set_pool_id(pool_id);
  plan->set_kind(v1::ATTENTION_KIND_PREFILL);
  plan->set_num_qo_heads(kQoHeads);
  plan->add_kv_indptr(0);
  plan->add_kv_indptr(kPages);
  for (int32_t page : pages) plan->add_kv_indices(page);
  plan->add_kv_last_page_len(kPageSize);
  plan->add_qo_indptr(0);
  plan->add_qo_indptr(kTokens);
  ASSERT_EQ(roundtrip(4), 0) << resp.message();
  const std::string plan_id = resp.create_plan().plan_id();
  req.mutable_register_buffer()->mutable_shared_memory_fd()->set_fd_token(*fd_token);
  req.mutable_register_buffer()->set_size_bytes(kQBytes);
  ASSERT_EQ(roundtrip(5), 0) << resp.message();
  const std::string buffer_id = resp.register_buffer().buffer_id();

  v1::RunRequest* run = req.mutable_run();
  run->set_plan_id(plan_id);
  run->mutable_q()->set_dtype(v1::DTYPE_FLOAT32);
  for (int dim : {kTokens, kQoHeads, kHeadDim}) run->mutable_q()->add_shape(dim);
  run->mutable_q()->mutable_buffer()->set_buffer_id(buffer_id);
  run->mutable_options()->set_causal(true);
  EXPECT_EQ(roundtrip(6), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_NE(resp.message().find("--max_message_bytes=1048576"), std::string::npos)
      << resp.message();

  // The stream and the session are alive.
  req.mutable_describe_pool()->set_pool_id(pool_id);
  EXPECT_EQ(roundtrip(7), 0) << resp.message();
  EXPECT_EQ(resp.describe_pool().pool().free_pages(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());

  const auto m = ScrapeMetrics();
  EXPECT_EQ(m.Get("attnd_requests_total", {{"method", "Run"}, {"code", "RESOURCE_EXHAUSTED"}}), 1);
}

}  // namespace
}  // namespace attnd::server::front

namespace attnd::server::front {
namespace {

constexpr int kFaultAfterRuns = 2;

// --testonly_device_fault_after_runs on the CPU backend: the decorator emulates a sticky device
// error after kFaultAfterRuns successful runs.
class DeviceFaultDaemonTest : public DaemonTest {
 protected:
  void Configure(DaemonConfig& config) override {
    config.testonly_device_fault_after_runs = kFaultAfterRuns;
    config.exit_on_device_error = exit_on_device_error_;
  }

  // A unary session with a one-request decode plan; the Run request over it.
  v1::RunRequest DecodeRun() {
    session_ = OpenUnarySession("device-fault");
    grpc::ClientContext pool_ctx;
    NameSession(pool_ctx, session_);
    v1::CreatePoolResponse pool;
    EXPECT_TRUE(stub_->CreatePool(&pool_ctx, PoolRequest("fault-pool", 2), &pool).ok());
    grpc::ClientContext pages_ctx;
    NameSession(pages_ctx, session_);
    v1::AllocatePagesRequest pages_req;
    pages_req.set_pool_id(pool.pool().pool_id());
    pages_req.set_count(1);
    v1::AllocatePagesResponse pages;
    EXPECT_TRUE(stub_->AllocatePages(&pages_ctx, pages_req, &pages).ok());
    grpc::ClientContext plan_ctx;
    NameSession(plan_ctx, session_);
    v1::CreatePlanRequest plan_req;
    plan_req.set_pool_id(pool.pool().pool_id());
    plan_req.set_kind(v1::ATTENTION_KIND_DECODE);
    plan_req.set_num_qo_heads(1);
    plan_req.add_kv_indptr(0);
    plan_req.add_kv_indptr(1);
    plan_req.add_kv_indices(pages.page_ids(0));
    plan_req.add_kv_last_page_len(1);
    v1::CreatePlanResponse plan;
    const grpc::Status planned = stub_->CreatePlan(&plan_ctx, plan_req, &plan);
    EXPECT_TRUE(planned.ok()) << planned.error_message();
    v1::RunRequest run;
    run.set_plan_id(plan.plan_id());
    run.mutable_q()->set_dtype(static_cast<v1::DType>(kv_dtype_));
    for (int dim : {1, 1, head_dim_}) run.mutable_q()->add_shape(dim);
    const size_t element = kv_dtype_ == v1::DTYPE_FLOAT32 ? 4 : 2;
    run.mutable_q()->set_inline_data(std::string(element * head_dim_, '\0'));
    return run;
  }

  grpc::Status Run(const v1::RunRequest& run) {
    grpc::ClientContext ctx;
    NameSession(ctx, session_);
    v1::RunResponse response;
    return stub_->Run(&ctx, run, &response);
  }

  HealthCheckResponse::ServingStatus CheckHealth() {
    auto health = Health::NewStub(channel_);
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service("attnd.v1.Attnd");
    HealthCheckResponse resp;
    EXPECT_TRUE(health->Check(&ctx, req, &resp).ok());
    return resp.status();
  }

  bool exit_on_device_error_ = true;
  std::string session_;
};

TEST_F(DeviceFaultDaemonTest, FailedRunOnABrokenDeviceIsNotServingAtOnce) {
  const v1::RunRequest run = DecodeRun();
  grpc::ClientContext watch_ctx;
  auto watch = WatchHealth(watch_ctx);

  for (int i = 0; i < kFaultAfterRuns; ++i) {
    const grpc::Status ok = Run(run);
    ASSERT_TRUE(ok.ok()) << i << ": " << ok.error_message();
  }
  EXPECT_FALSE(daemon_->device_error().has_value());
  const grpc::Status failed = Run(run);
  EXPECT_EQ(failed.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(failed.error_message().find("sticky device error injected"), std::string::npos)
      << failed.error_message();

  // Seen when the failed command returned, not at the next periodic check (1 s away).
  EXPECT_EQ(CheckHealth(), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(daemon_->device_error().has_value());
  EXPECT_NE(daemon_->device_error()->message().find("injected"), std::string::npos);
  httplib::Client http("127.0.0.1", daemon_->http_port());
  auto readyz = http.Get("/readyz");
  ASSERT_TRUE(readyz);
  EXPECT_EQ(readyz->status, 503);
  EXPECT_NE(readyz->body.find("sticky device error injected"), std::string::npos) << readyz->body;
  const auto m = ScrapeMetrics();
  EXPECT_EQ(m.Get("attnd_backend_healthy"), 0);
  EXPECT_EQ(m.Get("attnd_device_errors_total"), 1);
  EXPECT_EQ(m.Get("attnd_requests_total", {{"method", "Run"}, {"code", "INTERNAL"}}), 1);
  // The health watcher is told.
  EXPECT_TRUE(ReadUntilNotServing(*watch));
  watch_ctx.TryCancel();
  watch->Finish();
}

class DeviceFaultStayUpDaemonTest : public DeviceFaultDaemonTest {
 protected:
  void Configure(DaemonConfig& config) override {
    exit_on_device_error_ = false;
    DeviceFaultDaemonTest::Configure(config);
  }
};

TEST_F(DeviceFaultStayUpDaemonTest, WithoutExitOnDeviceErrorItStaysNotServing) {
  const v1::RunRequest run = DecodeRun();
  for (int i = 0; i < kFaultAfterRuns; ++i) ASSERT_TRUE(Run(run).ok());
  EXPECT_EQ(Run(run).error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(Run(run).error_code(), grpc::StatusCode::INTERNAL);  // sticky
  EXPECT_EQ(CheckHealth(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(daemon_->device_error().has_value());  // no exit requested
  // The periodic check keeps it so and does not count the same error again.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(CheckHealth(), HealthCheckResponse::NOT_SERVING);
  const auto m = ScrapeMetrics();
  EXPECT_EQ(m.Get("attnd_backend_healthy"), 0);
  EXPECT_EQ(m.Get("attnd_device_errors_total"), 2);
}

}  // namespace
}  // namespace attnd::server::front
