// The path backends without host access (CUDA) take: inline tensors are copied into staging
// memory and outputs copied back. A decorator over the CPU backend reports host_accessible() =
// false and counts the copies; the results must equal those of the plain CPU backend.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attnd/kernels/float_convert.h"
#include "core_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"

namespace attnd::server {
namespace {

using testing::AddTestPeer;
using testing::Allocate;
using testing::CreatePool;
using testing::Open;
using testing::PlanRequest;
using testing::SendFd;
using testing::TestMemfd;

class NoHostAccessBackend final : public kernels::Backend {
 public:
  explicit NoHostAccessBackend(std::unique_ptr<kernels::Backend> inner)
      : inner_(std::move(inner)) {}
  const kernels::BackendInfo& info() const override { return inner_->info(); }
  bool host_accessible() const override { return false; }
  absl::StatusOr<std::unique_ptr<kernels::BackendMemory>> Allocate(size_t bytes) override {
    ++allocations;
    return inner_->Allocate(bytes);
  }
  absl::StatusOr<std::unique_ptr<kernels::BackendMemory>> OpenIpcBuffer(const std::string& h,
                                                                        int32_t d,
                                                                        size_t s) override {
    return inner_->OpenIpcBuffer(h, d, s);
  }
  absl::StatusOr<std::unique_ptr<kernels::Stream>> CreateStream() override {
    return inner_->CreateStream();
  }
  absl::Status CopyToBackend(void* dst, const void* src, size_t bytes,
                             kernels::Stream* stream) override {
    bytes_to_backend += bytes;
    return inner_->CopyToBackend(dst, src, bytes, stream);
  }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes,
                          kernels::Stream* stream) override {
    bytes_to_host += bytes;
    return inner_->CopyToHost(dst, src, bytes, stream);
  }
  // Like a device backend, it clears through the backend (the inner CPU backend's memset).
  absl::Status Zero(void* dst, size_t bytes, kernels::Stream* stream) override {
    ++zero_calls;
    return inner_->Zero(dst, bytes, stream);
  }
  // One strided call per run of pages (every layer's copy): what a device backend turns into one
  // 2-D memset. Counted, then done row by row through Zero above.
  absl::Status ZeroRows(void* dst, size_t bytes, size_t stride, int32_t rows,
                        kernels::Stream* stream) override {
    ++zero_rows_calls;
    zero_rows_rows = rows;
    return Backend::ZeroRows(dst, bytes, stride, rows, stream);
  }
  absl::Status Synchronize(kernels::Stream* stream) override {
    ++synchronizations;
    return inner_->Synchronize(stream);
  }
  absl::StatusOr<std::unique_ptr<kernels::PreparedPlan>> Prepare(kernels::PlanSpec spec,
                                                                 kernels::Stream* s) override {
    return inner_->Prepare(std::move(spec), s);
  }
  absl::Status AppendKv(const kernels::PreparedPlan& plan, const kernels::PagedKV& layer,
                        const void* k, const void* v, kernels::DType new_dtype,
                        kernels::Stream* s) override {
    return inner_->AppendKv(plan, layer, k, v, new_dtype, s);
  }
  absl::Status Attention(const kernels::RunArgs& args) override { return inner_->Attention(args); }
  absl::Status MergeStates(const kernels::MergeStatesParams& p, kernels::Stream* s) override {
    return inner_->MergeStates(p, s);
  }
  absl::Status RaggedAttention(const kernels::RaggedRunArgs& args) override {
    return inner_->RaggedAttention(args);
  }

  // Read by the test after the calls (single-threaded).
  uint64_t bytes_to_backend = 0;
  uint64_t bytes_to_host = 0;
  int allocations = 0;
  int zero_calls = 0;
  int zero_rows_calls = 0;
  int32_t zero_rows_rows = 0;
  int synchronizations = 0;

 private:
  std::unique_ptr<kernels::Backend> inner_;
};

std::unique_ptr<kernels::Backend> CpuBackend() {
  auto backend = kernels::CreateCpuBackend(kernels::CpuBackendOptions{.num_threads = 1});
  EXPECT_TRUE(backend.ok());
  return *std::move(backend);
}

std::unique_ptr<Core> CoreWith(std::unique_ptr<kernels::Backend> backend) {
  CoreOptions options;
  options.max_pool_bytes = 64 << 20;
  auto core = Core::Create(options, std::move(backend));
  EXPECT_TRUE(core.ok()) << core.status();
  return *std::move(core);
}

v1::Tensor RandomHalf(std::mt19937& rng, const std::vector<int64_t>& shape) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT16);
  int64_t n = 1;
  for (int64_t d : shape) {
    t.add_shape(d);
    n *= d;
  }
  std::string bytes(static_cast<size_t>(n) * 2, '\0');
  for (int64_t i = 0; i < n; ++i)
    kernels::StoreFromFloat(bytes.data(), kernels::DType::kFloat16, i, dist(rng));
  t.set_inline_data(std::move(bytes));
  return t;
}

// Prefill of 2 requests (7 and 3 tokens), then a run without append; returns both responses.
std::vector<v1::RunResponse> Drive(Core& core) {
  const std::string s = Open(core);
  const v1::PoolInfo pool = CreatePool(core, s);
  const std::vector<int32_t> pages = Allocate(core, s, pool.pool_id(), 3);
  auto plan = core.CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 4,
                                             {{pages[0], pages[1]}, {pages[2]}}, {3, 3}, {7, 3}));
  EXPECT_TRUE(plan.ok()) << plan.status();
  std::mt19937 rng(99);
  v1::RunRequest run;
  run.set_plan_id(plan->plan_id());
  run.set_layer(1);
  *run.mutable_q() = RandomHalf(rng, {10, 4, 64});
  *run.mutable_k() = RandomHalf(rng, {10, 2, 64});
  *run.mutable_v() = RandomHalf(rng, {10, 2, 64});
  run.mutable_options()->set_causal(true);
  run.mutable_options()->set_return_lse(true);
  std::vector<v1::RunResponse> out;
  auto first = core.Run(s, run);
  EXPECT_TRUE(first.ok()) << first.status();
  out.push_back(*first);
  run.clear_k();
  run.clear_v();
  *run.mutable_q() = RandomHalf(rng, {10, 4, 64});
  auto second = core.Run(s, run);
  EXPECT_TRUE(second.ok()) << second.status();
  out.push_back(*second);
  return out;
}

TEST(CoreStagingTest, StagedTensorsGiveTheSameResultsAsDirectHostAccess) {
  auto direct_core = CoreWith(CpuBackend());
  const std::vector<v1::RunResponse> direct = Drive(*direct_core);

  auto staged_backend = std::make_unique<NoHostAccessBackend>(CpuBackend());
  NoHostAccessBackend* staged_ptr = staged_backend.get();
  auto staged_core = CoreWith(std::move(staged_backend));
  const std::vector<v1::RunResponse> staged = Drive(*staged_core);

  ASSERT_EQ(direct.size(), 2u);
  ASSERT_EQ(staged.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(staged[i].o().dtype(), v1::DTYPE_FLOAT16);
    EXPECT_THAT(staged[i].o().shape(), ::testing::ElementsAre(10, 4, 64));
    EXPECT_EQ(staged[i].o().inline_data().size(), 10u * 4 * 64 * 2);
    EXPECT_TRUE(staged[i].o().inline_data() == direct[i].o().inline_data());
    EXPECT_TRUE(staged[i].lse().inline_data() == direct[i].lse().inline_data());
  }
  EXPECT_NE(direct[0].o().inline_data(), direct[1].o().inline_data());
  // Run 1 copied q, k, v in and o, lse out; run 2 q in and o, lse out.
  const uint64_t q = 10 * 4 * 64 * 2, kv = 10 * 2 * 64 * 2, lse = 10 * 4 * 4;
  EXPECT_EQ(staged_ptr->bytes_to_backend, q + 2 * kv + q);
  EXPECT_EQ(staged_ptr->bytes_to_host, 2 * (q + lse));
  EXPECT_GE(staged_ptr->synchronizations, 2);
  // One pool + a staging area that is reused by the second run (it needs less).
  EXPECT_EQ(staged_ptr->allocations, 2);
}

// Merges copy their inline inputs in and the merged v and s back, as runs do; a merge without
// states (zero-byte inputs) stages nothing but its outputs.
TEST(CoreStagingTest, StagedMergesGiveTheSameResultsAsDirectHostAccess) {
  std::mt19937 rng(4);
  v1::MergeStateRequest pair;
  *pair.mutable_v_a() = RandomHalf(rng, {3, 2, 8});
  *pair.mutable_v_b() = RandomHalf(rng, {3, 2, 8});
  for (v1::Tensor* s : {pair.mutable_s_a(), pair.mutable_s_b()}) {
    s->set_dtype(v1::DTYPE_FLOAT32);
    s->add_shape(3);
    s->add_shape(2);
    std::vector<float> lse = {0.f, 1.f, -INFINITY, 2.f, -3.f, 0.5f};
    s->set_inline_data(std::string(reinterpret_cast<const char*>(lse.data()), 24));
  }
  v1::MergeStatesRequest none;
  *none.mutable_v() = RandomHalf(rng, {3, 0, 2, 8});
  none.mutable_s()->set_dtype(v1::DTYPE_FLOAT32);
  for (int64_t d : {3, 0, 2}) none.mutable_s()->add_shape(d);
  none.mutable_s()->set_inline_data("");

  auto direct_core = CoreWith(CpuBackend());
  auto staged_backend = std::make_unique<NoHostAccessBackend>(CpuBackend());
  NoHostAccessBackend* staged_ptr = staged_backend.get();
  auto staged_core = CoreWith(std::move(staged_backend));
  const std::string d = Open(*direct_core), s = Open(*staged_core);
  auto direct = direct_core->MergeState(d, pair);
  auto staged = staged_core->MergeState(s, pair);
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_TRUE(staged->v().inline_data() == direct->v().inline_data());
  EXPECT_TRUE(staged->s().inline_data() == direct->s().inline_data());
  const uint64_t v = 3 * 2 * 8 * 2, lse = 3 * 2 * 4;
  EXPECT_EQ(staged_ptr->bytes_to_backend, 2 * (v + lse));
  EXPECT_EQ(staged_ptr->bytes_to_host, v + lse);

  auto empty = staged_core->MergeStates(s, none);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->v().inline_data(), std::string(v, '\0'));
  const std::vector<float> minus_inf(6, -INFINITY);
  EXPECT_EQ(empty->s().inline_data(),
            std::string(reinterpret_cast<const char*>(minus_inf.data()), lse));
  EXPECT_EQ(staged_ptr->bytes_to_backend, 2 * (v + lse));  // nothing more copied in
}

// A ragged run stages q, k, v in and o, lse out, and gives what direct host access gives.
TEST(CoreStagingTest, StagedRaggedRunsGiveTheSameResultsAsDirectHostAccess) {
  std::mt19937 rng(5);
  v1::RunRaggedRequest r;
  *r.mutable_q() = RandomHalf(rng, {6, 4, 64});
  *r.mutable_k() = RandomHalf(rng, {9, 2, 64});
  *r.mutable_v() = RandomHalf(rng, {9, 2, 64});
  for (int32_t x : {0, 2, 6}) r.add_qo_indptr(x);
  for (int32_t x : {0, 4, 9}) r.add_kv_indptr(x);
  r.mutable_options()->set_causal(true);
  r.mutable_options()->set_return_lse(true);
  auto direct_core = CoreWith(CpuBackend());
  auto staged_backend = std::make_unique<NoHostAccessBackend>(CpuBackend());
  NoHostAccessBackend* staged_ptr = staged_backend.get();
  auto staged_core = CoreWith(std::move(staged_backend));
  auto direct = direct_core->RunRagged(Open(*direct_core), r);
  auto staged = staged_core->RunRagged(Open(*staged_core), r);
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_TRUE(staged->o().inline_data() == direct->o().inline_data());
  EXPECT_TRUE(staged->lse().inline_data() == direct->lse().inline_data());
  const uint64_t q = 6 * 4 * 64 * 2, kv = 9 * 2 * 64 * 2, lse = 6 * 4 * 4;
  EXPECT_EQ(staged_ptr->bytes_to_backend, q + 2 * kv);
  EXPECT_EQ(staged_ptr->bytes_to_host, q + lse);
}

TEST(CoreStagingTest, SharedMemoryNeedsHostAccess) {
  auto core = CoreWith(std::make_unique<NoHostAccessBackend>(CpuBackend()));
  EXPECT_FALSE(core->GetServerInfo().shared_memory());
  const Identity peer = AddTestPeer(*core);
  const std::string s = Open(*core, SessionBinding::kStream, "test", 0, peer);
  TestMemfd memfd(64);
  auto token = SendFd(*core, peer, memfd.fd());
  ASSERT_TRUE(token.ok()) << token.status();
  v1::RegisterBufferRequest request;
  request.mutable_shared_memory_fd()->set_fd_token(*token);
  request.set_size_bytes(64);
  const absl::Status status = core->RegisterBuffer(s, request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("cuda_ipc"));
}

// On a backend whose memory the core cannot touch (CUDA), newly allocated pages are still
// cleared, through Backend::ZeroRows: one strided call per run of consecutive page ids covering
// every layer (each row one layer's copy of the run).
TEST(CoreStagingTest, AllocatedPagesAreClearedThroughTheBackend) {
  auto fake = std::make_unique<NoHostAccessBackend>(CpuBackend());
  NoHostAccessBackend* backend = fake.get();
  auto core = CoreWith(std::move(fake));
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(*core, s);
  const int before = backend->zero_calls, before_rows = backend->zero_rows_calls;
  std::vector<int32_t> pages = Allocate(*core, s, pool.pool_id(), 3);
  std::sort(pages.begin(), pages.end());
  int runs = 1;
  for (size_t i = 1; i < pages.size(); ++i) runs += pages[i] != pages[i - 1] + 1;
  EXPECT_EQ(backend->zero_rows_calls - before_rows, runs);
  EXPECT_EQ(backend->zero_rows_rows, pool.num_layers());
  EXPECT_EQ(backend->zero_calls - before, runs * pool.num_layers());
}

}  // namespace
}  // namespace attnd::server
