// Every class of bad input gets its documented status code and a message naming the field and
// the value; after each, the daemon still serves and another session's K/V and outputs are intact
// (the victim session decodes one more step, checked against the float64 reference).
#include <string>

#include "attnd/client/unary_session.h"
#include "attnd/v1/attnd.grpc.pb.h"
#include "daemon_fixture.h"
#include "grpcpp/client_context.h"

namespace attnd::testing {
namespace {

using absl::StatusCode;

constexpr uint64_t kMaxMessageBytes = 1 << 20;

class BadInputTest : public DaemonTest {
 public:
  static void SetUpTestSuite() {
    DaemonOptions options;
    options.max_message_bytes = kMaxMessageBytes;
    StartDaemon(options);
  }

 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    if (HasFatalFailure()) return;
    shape_.kv_heads = 2;
    shape_.qo_heads = 4;
    shape_.page_size = 16;
    shape_.num_pages = 32;
    pool_name_ = UniqueName("victim");
    auto victim = client_->OpenSession("victim");
    ATTND_ASSERT_OK(victim);
    victim_ = *std::move(victim);
    auto pool = victim_->CreatePool(MakePoolSpec(shape_, pool_name_));
    ATTND_ASSERT_OK(pool);
    pool_id_ = pool->pool_id();
    victim_work_ = std::make_unique<Workload>(victim_.get(), shape_, pool_id_, /*seed=*/77);
    ATTND_ASSERT_OK(victim_work_->Prefill({20, 5}));

    auto attacker = client_->OpenSession("attacker");
    ATTND_ASSERT_OK(attacker);
    attacker_ = *std::move(attacker);
    ATTND_ASSERT_OK(attacker_->AttachPool(pool_name_));
    auto grant = attacker_->AllocatePages(pool_id_, 2);
    ATTND_ASSERT_OK(grant);
    own_pages_ = grant->page_ids;
  }

  // The daemon serves, and the victim's cached K/V still produce reference outputs.
  void ExpectIntact() {
    ExpectServing();
    ATTND_EXPECT_OK(victim_work_->DecodeStep());
    ATTND_EXPECT_OK(attacker_->DescribePool(pool_id_));
  }

  // A valid single-request plan over the attacker's own pages (kv_len 20, prefill of qo_len).
  client::PlanSpec ValidPlan(v1::AttentionKind kind = v1::ATTENTION_KIND_DECODE) const {
    client::PlanSpec plan;
    plan.pool_id = pool_id_;
    plan.kind = kind;
    plan.num_qo_heads = shape_.qo_heads;
    plan.kv_indptr = {0, 2};
    plan.kv_indices = own_pages_;
    plan.kv_last_page_len = {4};
    plan.qo_indptr = {0, 1};
    return plan;
  }

  v1::Tensor Tensor(std::vector<int64_t> shape, v1::DType dtype) const {
    std::vector<float> values(client::NumElements(shape), 0.25f);
    return *client::MakeTensor(values, std::move(shape), dtype);
  }

  // RunArgs for a valid decode plan of 1 row.
  client::RunArgs ValidRun(const std::string& plan_id) const {
    client::RunArgs run;
    run.plan_id = plan_id;
    run.layer = 0;
    run.q = Tensor({1, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);
    return run;
  }

  ModelShape shape_;
  std::string pool_name_, pool_id_;
  std::unique_ptr<client::Session> victim_, attacker_;
  std::unique_ptr<Workload> victim_work_;
  std::vector<int32_t> own_pages_;
};

TEST_F(BadInputTest, CreatePoolGeometry) {
  client::PoolSpec spec = MakePoolSpec(shape_, UniqueName("bad"));
  spec.head_dim = 65;
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"head_dim=65"}));
  spec = MakePoolSpec(shape_, UniqueName("bad"));
  spec.num_layers = 0;
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"num_layers=0"}));
  spec = MakePoolSpec(shape_, UniqueName("bad"));
  spec.num_kv_heads = -3;
  EXPECT_TRUE(
      StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"num_kv_heads=-3"}));
  spec = MakePoolSpec(shape_, UniqueName("bad"));
  spec.page_size = 0;
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"page_size=0"}));
  spec = MakePoolSpec(shape_, UniqueName("bad"));
  spec.kv_dtype = v1::DTYPE_UNSPECIFIED;
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"kv_dtype"}));
  spec = MakePoolSpec(shape_, UniqueName("bad"));
  spec.num_pages = 0;
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"num_pages"}));
  spec = MakePoolSpec(shape_, "bad name/with slash");
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kInvalidArgument, {"name"}));
  spec = MakePoolSpec(shape_, pool_name_);  // taken by the victim
  EXPECT_TRUE(StatusIs(attacker_->CreatePool(spec), StatusCode::kAlreadyExists, {pool_name_}));
  ExpectIntact();
}

TEST_F(BadInputTest, UnknownPoolPlanBufferAndSession) {
  EXPECT_TRUE(StatusIs(attacker_->AttachPool("no-such-pool"), StatusCode::kNotFound,
                       {"no-such-pool"}));
  EXPECT_TRUE(StatusIs(attacker_->DescribePool("pool-does-not-exist"), StatusCode::kNotFound,
                       {"pool-does-not-exist"}));
  EXPECT_TRUE(StatusIs(attacker_->AllocatePages("pool-does-not-exist", 1), StatusCode::kNotFound,
                       {"pool-does-not-exist"}));
  client::PlanSpec plan = ValidPlan();
  plan.pool_id = "pool-does-not-exist";
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kNotFound, {"pool-does-not-exist"}));
  EXPECT_TRUE(StatusIs(attacker_->Run(ValidRun("plan-does-not-exist")), StatusCode::kNotFound,
                       {"plan-does-not-exist"}));
  EXPECT_TRUE(StatusIs(attacker_->DeletePlan("plan-does-not-exist"), StatusCode::kNotFound,
                       {"plan-does-not-exist"}));
  EXPECT_TRUE(StatusIs(attacker_->UnregisterBuffer("buffer-does-not-exist"), StatusCode::kNotFound,
                       {"buffer-does-not-exist"}));

  // A unary call naming a session that does not exist.
  auto stub = v1::Attnd::NewStub(client_->channel());
  grpc::ClientContext context;
  context.AddMetadata(client::kSessionMetadataKey, "session-does-not-exist");
  v1::DescribePoolRequest request;
  request.set_pool_id(pool_id_);
  v1::DescribePoolResponse response;
  // (Messages name sessions by their log tag, never echo an id: "s?" for a malformed one.)
  EXPECT_TRUE(StatusIs(client::FromGrpcStatus(stub->DescribePool(&context, request, &response)),
                       StatusCode::kNotFound, {"session s? does not exist"}));
  // No session header at all: refused, naming the header.
  grpc::ClientContext bare;
  const absl::Status no_header =
      client::FromGrpcStatus(stub->DescribePool(&bare, request, &response));
  EXPECT_FALSE(no_header.ok());
  EXPECT_NE(no_header.message().find(client::kSessionMetadataKey), std::string::npos) << no_header;
  ExpectIntact();
}

TEST_F(BadInputTest, PageCounts) {
  EXPECT_TRUE(StatusIs(attacker_->AllocatePages(pool_id_, 0), StatusCode::kInvalidArgument,
                       {"count=0"}));
  EXPECT_TRUE(StatusIs(attacker_->AllocatePages(pool_id_, 1000), StatusCode::kResourceExhausted,
                       {"1000"}));
  // All or nothing: nothing was taken.
  auto pool = attacker_->DescribePool(pool_id_);
  ATTND_ASSERT_OK(pool);
  const int64_t victim_pages = static_cast<int64_t>(victim_work_->AllPages().size());
  EXPECT_EQ(pool->free_pages(), shape_.num_pages - victim_pages - 2);
  EXPECT_TRUE(StatusIs(attacker_->FreePages(pool_id_, {static_cast<int32_t>(shape_.num_pages + 3)}),
                       StatusCode::kOutOfRange, {std::to_string(shape_.num_pages + 3)}));
  ExpectIntact();
}

TEST_F(BadInputTest, PlanPageIds) {
  client::PlanSpec plan = ValidPlan();
  plan.kv_indices = {own_pages_[0], static_cast<int32_t>(shape_.num_pages + 5)};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kOutOfRange,
                       {absl::StrCat("kv_indices[1]=", shape_.num_pages + 5)}));
  plan.kv_indices = {-1, own_pages_[1]};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kOutOfRange, {"kv_indices[0]=-1"}));
  // The victim's pages.
  const int32_t victims = victim_work_->AllPages()[0];
  plan.kv_indices = {own_pages_[0], victims};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kPermissionDenied,
                       {absl::StrCat("kv_indices[1]=", victims)}));
  // A page of this pool nobody holds.
  auto pool = attacker_->DescribePool(pool_id_);
  ATTND_ASSERT_OK(pool);
  std::vector<int32_t> used = victim_work_->AllPages();
  used.insert(used.end(), own_pages_.begin(), own_pages_.end());
  int32_t unowned = 0;
  while (std::count(used.begin(), used.end(), unowned)) ++unowned;
  plan.kv_indices = {unowned, own_pages_[0]};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kPermissionDenied,
                       {absl::StrCat("kv_indices[0]=", unowned)}));
  ExpectIntact();
}

TEST_F(BadInputTest, PlanLengthsAndIndptr) {
  client::PlanSpec plan = ValidPlan();
  plan.kv_last_page_len = {shape_.page_size + 1};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {absl::StrCat("kv_last_page_len[0]=", shape_.page_size + 1)}));
  plan.kv_last_page_len = {0};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"kv_last_page_len[0]=0"}));
  plan = ValidPlan();
  plan.kv_last_page_len = {4, 4};  // one too many for batch 1
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"kv_last_page_len"}));

  // kv_indptr not monotone: [0, 2, 1] over 2 pages.
  plan = ValidPlan();
  plan.kv_indptr = {0, 2, 1};
  plan.kv_last_page_len = {4, 4};
  plan.qo_indptr = {0, 1, 2};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"kv_indptr[2]=1"}));
  // kv_indptr not matching len(kv_indices).
  plan = ValidPlan();
  plan.kv_indptr = {0, 3};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"kv_indptr[1]=3"}));
  plan.kv_indptr = {1, 2};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"kv_indptr[0]=1"}));
  // qo_indptr: wrong length, not monotone, qo_len > kv_len.
  plan = ValidPlan(v1::ATTENTION_KIND_PREFILL);
  plan.qo_indptr = {0, 1, 2};
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument, {"qo_indptr"}));
  plan.qo_indptr = {0, 21};  // kv_len is 20
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"qo_indptr[1]=21"}));
  plan = ValidPlan(v1::ATTENTION_KIND_DECODE);
  plan.qo_indptr = {0, 2};  // decode takes one row per request
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"qo_indptr[1]=2"}));
  // Head counts: num_qo_heads must be a multiple of num_kv_heads (2).
  plan = ValidPlan();
  plan.num_qo_heads = 3;
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"num_qo_heads=3"}));
  plan.num_qo_heads = 0;
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument,
                       {"num_qo_heads=0"}));
  plan = ValidPlan();
  plan.kind = v1::ATTENTION_KIND_UNSPECIFIED;
  EXPECT_TRUE(StatusIs(attacker_->CreatePlan(plan), StatusCode::kInvalidArgument, {"kind"}));
  ExpectIntact();
}

TEST_F(BadInputTest, RunShapesDtypesAndLayers) {
  auto plan = attacker_->CreatePlan(ValidPlan());
  ATTND_ASSERT_OK(plan);
  ATTND_ASSERT_OK(attacker_->Run(ValidRun(plan->plan_id)));  // the baseline works

  client::RunArgs run = ValidRun(plan->plan_id);
  run.q = Tensor({1, shape_.qo_heads * 2, shape_.head_dim}, shape_.q_dtype);  // head count
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument,
                       {"q.shape=[1,8,64]", "[1,4,64]"}));
  run.q = Tensor({1, shape_.qo_heads, 32}, shape_.q_dtype);  // head_dim
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"q.shape=[1,4,32]"}));
  run.q = Tensor({2, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);  // rows
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"q.shape=[2,4,64]"}));
  run.q = Tensor({1, shape_.qo_heads, shape_.head_dim}, v1::DTYPE_FLOAT8_E4M3);  // dtype
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"q.dtype"}));
  run.q = Tensor({1, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);
  run.q.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"q.dtype"}));
  run.q = Tensor({1, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);
  run.q.mutable_inline_data()->resize(10);  // bytes do not match the shape
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"q.inline_data", "10"}));
  run.q.clear_inline_data();  // no data at all
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"q"}));

  // k/v: dtype must be the pool's, shape [rows, kv_heads, head_dim]; both or neither.
  run = ValidRun(plan->plan_id);
  run.k = Tensor({1, shape_.kv_heads, shape_.head_dim}, v1::DTYPE_FLOAT32);
  run.v = Tensor({1, shape_.kv_heads, shape_.head_dim}, v1::DTYPE_FLOAT32);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument,
                       {"k.dtype=", "FLOAT32"}));
  run.k = Tensor({1, shape_.kv_heads + 1, shape_.head_dim}, shape_.kv_dtype);
  run.v = Tensor({1, shape_.kv_heads, shape_.head_dim}, shape_.kv_dtype);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"k.shape=[1,3,64]"}));
  run.k = Tensor({1, shape_.kv_heads, shape_.head_dim}, shape_.kv_dtype);
  run.v.reset();
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"v"}));
  EXPECT_TRUE(StatusIs(attacker_->AppendKv(plan->plan_id, 0,
                                           Tensor({1, shape_.kv_heads, 16}, shape_.kv_dtype),
                                           Tensor({1, shape_.kv_heads, 16}, shape_.kv_dtype)),
                       StatusCode::kInvalidArgument, {"k.shape=[1,2,16]"}));

  // Layer out of range, on Run and AppendKv.
  run = ValidRun(plan->plan_id);
  run.layer = shape_.layers;
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kOutOfRange,
                       {absl::StrCat("layer=", shape_.layers)}));
  run.layer = -1;
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kOutOfRange, {"layer=-1"}));
  EXPECT_TRUE(StatusIs(attacker_->AppendKv(plan->plan_id, 7,
                                           Tensor({1, shape_.kv_heads, shape_.head_dim}, shape_.kv_dtype),
                                           Tensor({1, shape_.kv_heads, shape_.head_dim}, shape_.kv_dtype)),
                       StatusCode::kOutOfRange, {"layer=7"}));

  // Options.
  run = ValidRun(plan->plan_id);
  run.options.set_sm_scale(-1.f);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"sm_scale"}));
  run = ValidRun(plan->plan_id);
  run.options.set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
  run.options.add_rope_offsets(1);
  run.options.add_rope_offsets(2);  // the plan has batch_size 1
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"rope_offsets"}));
  run = ValidRun(plan->plan_id);
  run.options.set_logits_soft_cap(-2.f);
  EXPECT_FALSE(attacker_->Run(run).ok()) << "a negative logits_soft_cap was accepted";
  run = ValidRun(plan->plan_id);
  run.lse = Tensor({1, shape_.qo_heads}, v1::DTYPE_FLOAT32);
  run.lse->clear_inline_data();
  run.lse->mutable_buffer()->set_buffer_id("x");
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kInvalidArgument, {"lse"}));
  ExpectIntact();
}

TEST_F(BadInputTest, BufferSlicesOutOfBounds) {
  constexpr size_t kShmBytes = 4096;
  auto region = client::SharedMemoryRegion::Create(absl::StrCat("/", UniqueName("attnd-bad")),
                                                   kShmBytes);
  ATTND_ASSERT_OK(region);
  // Registering more than the object holds, or an object that does not exist.
  EXPECT_TRUE(StatusIs(attacker_->RegisterSharedMemory(**region, kShmBytes * 2),
                       StatusCode::kOutOfRange, {absl::StrCat("size_bytes=", kShmBytes * 2)}));
  // Shared memory by name is refused (anyone with the daemon's permissions could name another
  // user's object), and a descriptor token this caller never sent is unknown.
  v1::RegisterBufferRequest by_name;
  by_name.mutable_shared_memory()->set_name("/attnd-no-such-object");
  by_name.set_size_bytes(64);
  EXPECT_TRUE(StatusIs(attacker_->RegisterBuffer(by_name), StatusCode::kFailedPrecondition,
                       {"/attnd-no-such-object", "memfd"}));
  v1::RegisterBufferRequest unknown_fd;
  unknown_fd.mutable_shared_memory_fd()->set_fd_token("fd-0123456789abcdef");
  unknown_fd.set_size_bytes(64);
  EXPECT_TRUE(StatusIs(attacker_->RegisterBuffer(unknown_fd), StatusCode::kNotFound,
                       {"fd_token='fd-0123456789abcdef'"}));
  auto buffer = attacker_->RegisterSharedMemory(**region, kShmBytes);
  ATTND_ASSERT_OK(buffer);

  auto plan = attacker_->CreatePlan(ValidPlan());
  ATTND_ASSERT_OK(plan);
  const int64_t q_bytes = shape_.qo_heads * shape_.head_dim * 2;  // 512
  client::RunArgs run = ValidRun(plan->plan_id);
  // q slice starting inside the buffer but ending past it.
  const uint64_t offset = kShmBytes - q_bytes / 2;
  run.q = client::MakeBufferTensor(*buffer, offset, {1, shape_.qo_heads, shape_.head_dim},
                                   shape_.q_dtype);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kOutOfRange,
                       {absl::StrCat("offset_bytes=", offset), *buffer}));
  // Entirely past the end.
  run.q = client::MakeBufferTensor(*buffer, kShmBytes * 10, {1, shape_.qo_heads, shape_.head_dim},
                                   shape_.q_dtype);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kOutOfRange,
                       {absl::StrCat("offset_bytes=", kShmBytes * 10)}));
  // Output slice past the end.
  run = ValidRun(plan->plan_id);
  run.o = client::MakeBufferTensor(*buffer, kShmBytes - 8, {1, shape_.qo_heads, shape_.head_dim},
                                   shape_.q_dtype);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kOutOfRange, {"o.buffer"}));
  // Unknown buffer id.
  run = ValidRun(plan->plan_id);
  run.q = client::MakeBufferTensor("buffer-does-not-exist", 0,
                                   {1, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);
  EXPECT_TRUE(StatusIs(attacker_->Run(run), StatusCode::kNotFound, {"buffer-does-not-exist"}));
  // The victim cannot use the attacker's buffer.
  {
    auto victim_plan = victim_->CreatePlan(
        victim_work_->PlanFor(v1::ATTENTION_KIND_PREFILL, {0}, {1}));
    ATTND_ASSERT_OK(victim_plan);
    client::RunArgs victim_run = ValidRun(victim_plan->plan_id);
    victim_run.q = client::MakeBufferTensor(*buffer, 0, {1, shape_.qo_heads, shape_.head_dim},
                                            shape_.q_dtype);
    EXPECT_TRUE(StatusIs(victim_->Run(victim_run), StatusCode::kNotFound, {*buffer}));
    ATTND_EXPECT_OK(victim_->DeletePlan(victim_plan->plan_id));
  }
  // The whole buffer is fine.
  run = ValidRun(plan->plan_id);
  run.q = client::MakeBufferTensor(*buffer, kShmBytes - q_bytes,
                                   {1, shape_.qo_heads, shape_.head_dim}, shape_.q_dtype);
  ATTND_EXPECT_OK(attacker_->Run(run));
  ATTND_EXPECT_OK(attacker_->UnregisterBuffer(*buffer));
  ExpectIntact();
}

TEST_F(BadInputTest, OversizedMessagesAreResourceExhausted) {
  auto plan = attacker_->CreatePlan(ValidPlan());
  ATTND_ASSERT_OK(plan);
  // 2 MiB of inline q (the daemon accepts 1 MiB): over the unary path ...
  auto unary = client_->OpenUnarySession("oversized");
  ATTND_ASSERT_OK(unary);
  v1::RunRequest big;
  big.set_plan_id(plan->plan_id);
  big.mutable_q()->set_dtype(v1::DTYPE_FLOAT16);
  big.mutable_q()->add_shape(1);
  big.mutable_q()->set_inline_data(std::string(2 * kMaxMessageBytes, '\0'));
  EXPECT_TRUE(StatusIs((*unary)->Run(big), StatusCode::kResourceExhausted));
  // ... and over a stream, which the daemon then ends (the stream's status is returned).
  auto stream = client_->OpenSession("oversized-stream");
  ATTND_ASSERT_OK(stream);
  EXPECT_TRUE(StatusIs((*stream)->Run(big), StatusCode::kResourceExhausted));
  EXPECT_FALSE((*stream)->is_open());
  // Just under the limit is accepted as a message (and then refused as a bad shape).
  big.mutable_q()->set_inline_data(std::string(kMaxMessageBytes - 4096, '\0'));
  EXPECT_NE((*unary)->Run(big).status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(StatusIs(attacker_->Run(big), StatusCode::kInvalidArgument, {"q."}));
  ExpectIntact();
}

// An inline output larger than --max_message_bytes cannot be sent back: RESOURCE_EXHAUSTED, and
// the daemon keeps serving. (q comes from shared memory, so the request itself is small.)
TEST_F(BadInputTest, OversizedInlineOutputIsResourceExhausted) {
  ModelShape shape;
  shape.layers = 1;
  shape.kv_heads = 2;
  shape.qo_heads = 32;  // 4 KiB per fp16 output row
  shape.num_pages = 64;  // 24 pages for each of two sessions
  const int rows = 384;  // 1.5 MiB of o > 1 MiB
  auto pool = attacker_->CreatePool(MakePoolSpec(shape, UniqueName("big-output")));
  ATTND_ASSERT_OK(pool);
  auto grant = attacker_->AllocatePages(pool->pool_id(), rows / shape.page_size);
  ATTND_ASSERT_OK(grant);
  client::PlanSpec spec;
  spec.pool_id = pool->pool_id();
  spec.kind = v1::ATTENTION_KIND_PREFILL;
  spec.num_qo_heads = shape.qo_heads;
  spec.kv_indptr = {0, static_cast<int32_t>(grant->page_ids.size())};
  spec.kv_indices = grant->page_ids;
  spec.kv_last_page_len = {shape.page_size};
  spec.qo_indptr = {0, rows};
  auto plan = attacker_->CreatePlan(spec);
  ATTND_ASSERT_OK(plan);
  const size_t q_bytes = static_cast<size_t>(rows) * shape.qo_heads * shape.head_dim * 2;
  auto region = client::SharedMemoryRegion::Create(absl::StrCat("/", UniqueName("attnd-bigq")),
                                                   q_bytes);
  ATTND_ASSERT_OK(region);
  auto buffer = attacker_->RegisterSharedMemory(**region, q_bytes);
  ATTND_ASSERT_OK(buffer);
  client::RunArgs run;
  run.plan_id = plan->plan_id;
  run.q = client::MakeBufferTensor(*buffer, 0, {rows, shape.qo_heads, shape.head_dim},
                                   shape.q_dtype);
  run.options.set_causal(true);
  // Over the unary path (a session of its own, sharing nothing): the call fails, nothing else.
  {
    auto unary = client_->OpenUnarySession("big-output-unary");
    ATTND_ASSERT_OK(unary);
    ATTND_ASSERT_OK((*unary)->AttachPool(pool->name()));
    auto own = (*unary)->AllocatePages(pool->pool_id(), rows / shape.page_size);
    ATTND_ASSERT_OK(own);
    client::PlanSpec unary_spec = spec;
    unary_spec.kv_indices = own->page_ids;
    auto unary_plan = (*unary)->CreatePlan(unary_spec);
    ATTND_ASSERT_OK(unary_plan);
    auto unary_buffer = (*unary)->RegisterSharedMemory(**region, q_bytes);
    ATTND_ASSERT_OK(unary_buffer);
    client::RunArgs unary_run = run;
    unary_run.plan_id = unary_plan->plan_id;
    unary_run.q = client::MakeBufferTensor(*unary_buffer, 0, {rows, shape.qo_heads, shape.head_dim},
                                           shape.q_dtype);
    EXPECT_EQ((*unary)->Run(unary_run).status().code(), StatusCode::kResourceExhausted);
    ATTND_EXPECT_OK((*unary)->DescribePool(pool->pool_id()));  // the session lives on
  }
  // Over the stream: the command fails with RESOURCE_EXHAUSTED as a per-command status (the
  // wire API's error model: one SessionResponse.code per command); the session must not be
  // torn down, or a client that forgot an output buffer loses every page it holds.
  const absl::Status status = attacker_->Run(run).status();
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(attacker_->is_open())
      << "the daemon ended the Session stream (and released the session) because an inline "
         "output exceeded --max_message_bytes: "
      << status;
  ExpectServing();
  ATTND_EXPECT_OK(victim_work_->DecodeStep());
}

TEST_F(BadInputTest, StreamProtocolViolations) {
  // A stream whose first message is not `open`, and one that sends `open` twice.
  auto stub = v1::Attnd::NewStub(client_->channel());
  {
    grpc::ClientContext context;
    auto rw = stub->Session(&context);
    v1::SessionRequest request;
    request.set_request_id(1);
    request.mutable_describe_pool()->set_pool_id(pool_id_);
    rw->Write(request);
    v1::SessionResponse response;
    const bool got = rw->Read(&response);
    rw->WritesDone();
    grpc::Status status = rw->Finish();
    // Either a per-command error or the stream's status; never a success.
    EXPECT_TRUE((got && response.code() != 0) || !status.ok())
        << "a command before `open` succeeded: " << response.DebugString();
  }
  {
    grpc::ClientContext context;
    auto rw = stub->Session(&context);
    v1::SessionRequest request;
    request.set_request_id(1);
    request.mutable_open()->set_client_name("twice");
    ASSERT_TRUE(rw->Write(request));
    v1::SessionResponse response;
    ASSERT_TRUE(rw->Read(&response));
    EXPECT_EQ(response.code(), 0) << response.message();
    request.set_request_id(2);
    rw->Write(request);
    const bool got = rw->Read(&response);
    rw->WritesDone();
    grpc::Status status = rw->Finish();
    EXPECT_TRUE((got && response.code() != 0) || !status.ok()) << "a second `open` succeeded";
  }
  ExpectIntact();
}

}  // namespace
}  // namespace attnd::testing
