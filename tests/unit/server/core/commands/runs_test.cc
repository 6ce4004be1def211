// Attention through Core, checked against the CPU reference kernel run directly on the same data:
// a prefill + decode loop with inline tensors (KV appended through Run and through AppendKv), and
// shared-memory buffers for q / o / lse.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <atomic>
#include <random>
#include <sys/stat.h>
#include <thread>
#include <string>
#include <vector>

#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/float_convert.h"
#include "core_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"
#include "server/core/dtype_convert.h"

namespace attnd::server {
namespace {

using ::testing::HasSubstr;
using testing::Allocate;
using testing::CreatePool;
using testing::MakeCore;
using testing::Open;
using testing::PlanRequest;
using testing::PoolSpec;
using testing::AddTestPeer;
using testing::RegisterMemfd;
using testing::SendFd;
using testing::TestMemfd;

// Random tensor bytes of `dtype`, values uniform in [-1, 1] (rounded to the dtype).
std::string RandomBytes(std::mt19937& rng, kernels::DType dtype, int64_t count) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::string bytes(static_cast<size_t>(count) * kernels::DTypeSize(dtype), '\0');
  for (int64_t i = 0; i < count; ++i) kernels::StoreFromFloat(bytes.data(), dtype, i, dist(rng));
  return bytes;
}

v1::Tensor InlineTensor(kernels::DType dtype, std::vector<int64_t> shape, std::string bytes) {
  v1::Tensor t;
  t.set_dtype(ToProtoDType(dtype));
  for (int64_t d : shape) t.add_shape(d);
  t.set_inline_data(std::move(bytes));
  return t;
}

bool AllZero(const std::string& bytes) {
  for (char c : bytes) {
    if (c != 0) return false;
  }
  return true;
}

struct Scenario {
  std::string name;
  kernels::DType kv_dtype;
  kernels::DType q_dtype;
  bool causal;
  bool rope;
  float soft_cap;
  int32_t window_left;  // -1: none
};
void PrintTo(const Scenario& sc, std::ostream* os) { *os << sc.name; }

// The test keeps its own copy of the paged cache, written by its own code from the same k/v,
// and runs cpu::PagedAttention on it; Core's outputs must match bit for bit.
class ReferenceCache {
 public:
  ReferenceCache(const PoolSpec& spec, kernels::DType dtype)
      : spec_(spec), dtype_(dtype),
        layer_elems_(spec.num_pages * 2 * spec.page_size * spec.num_kv_heads * spec.head_dim),
        data_(spec.num_layers, std::string(layer_elems_ * kernels::DTypeSize(dtype), '\0')) {}

  // Writes token `pos` of a sequence on `pages`: k/v rows of [num_kv_heads, head_dim].
  void Write(int layer, const std::vector<int32_t>& pages, int64_t pos, const char* k,
             const char* v) {
    const size_t elem = kernels::DTypeSize(dtype_);
    const int64_t row = static_cast<int64_t>(spec_.num_kv_heads) * spec_.head_dim;
    const int32_t page = pages[pos / spec_.page_size];
    const int64_t slot = pos % spec_.page_size;
    const int64_t k_off = ((static_cast<int64_t>(page) * 2 + 0) * spec_.page_size + slot) * row;
    const int64_t v_off = ((static_cast<int64_t>(page) * 2 + 1) * spec_.page_size + slot) * row;
    std::memcpy(data_[layer].data() + k_off * elem, k, row * elem);
    std::memcpy(data_[layer].data() + v_off * elem, v, row * elem);
  }

  kernels::PagedKV View(int layer) {
    kernels::PagedKV kv;
    kv.data = data_[layer].data();
    kv.dtype = dtype_;
    kv.num_pages = static_cast<int32_t>(spec_.num_pages);
    kv.page_size = spec_.page_size;
    kv.num_kv_heads = spec_.num_kv_heads;
    kv.head_dim = spec_.head_dim;
    kv.SetNhdStrides();
    return kv;
  }

 private:
  PoolSpec spec_;
  kernels::DType dtype_;
  int64_t layer_elems_;
  std::vector<std::string> data_;
};

class CoreAttentionTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(CoreAttentionTest, PrefillThenDecodeMatchesTheCpuReference) {
  const Scenario& sc = GetParam();
  auto core = MakeCore();
  const std::string s = Open(*core);
  PoolSpec spec;
  spec.num_layers = 2;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size = 4;
  spec.num_pages = 32;
  spec.kv_dtype = ToProtoDType(sc.kv_dtype);
  const v1::PoolInfo pool = CreatePool(*core, s, spec);
  const int32_t num_qo_heads = 4;
  const int64_t kv_row = spec.num_kv_heads * spec.head_dim;
  const int64_t q_row = num_qo_heads * spec.head_dim;
  const size_t kv_elem = kernels::DTypeSize(sc.kv_dtype);
  const size_t q_elem = kernels::DTypeSize(sc.q_dtype);

  std::mt19937 rng(1234);
  ReferenceCache reference(spec, sc.kv_dtype);
  std::vector<int64_t> seq_len = {5, 9, 1};
  const int32_t batch = static_cast<int32_t>(seq_len.size());
  std::vector<std::vector<int32_t>> pages(batch);
  std::vector<int32_t> rope_offsets = {0, 3, 11};

  v1::AttentionOptions options;
  options.set_causal(sc.causal);
  options.set_return_lse(true);
  if (sc.rope) {
    options.set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
    for (int32_t off : rope_offsets) options.add_rope_offsets(off);
  }
  options.set_logits_soft_cap(sc.soft_cap);
  if (sc.window_left >= 0) {
    options.set_window_left(sc.window_left);
    options.set_window_left_set(true);
  }
  kernels::AttentionOptions ref_options;
  ref_options.causal = sc.causal;
  ref_options.pos_encoding = sc.rope ? kernels::PosEncoding::kRopeLlama : kernels::PosEncoding::kNone;
  ref_options.rope_offsets = sc.rope ? rope_offsets.data() : nullptr;
  ref_options.logits_soft_cap = sc.soft_cap;
  ref_options.window_left = sc.window_left;

  // Steps: one prefill of every prompt, then decode steps of one token each.
  std::vector<int64_t> qo_len(seq_len.begin(), seq_len.end());
  for (int step = 0; step < 6; ++step) {
    const bool prefill = step == 0;
    if (!prefill) {
      for (int b = 0; b < batch; ++b) seq_len[b] += 1;
      std::fill(qo_len.begin(), qo_len.end(), 1);
    }
    // Pages for the new tokens.
    for (int b = 0; b < batch; ++b) {
      const int64_t needed = (seq_len[b] + spec.page_size - 1) / spec.page_size;
      while (static_cast<int64_t>(pages[b].size()) < needed) {
        pages[b].push_back(Allocate(*core, s, pool.pool_id(), 1).at(0));
      }
    }
    std::vector<int32_t> last_page_len(batch), qo32(batch);
    int64_t qo_tokens = 0;
    for (int b = 0; b < batch; ++b) {
      last_page_len[b] = static_cast<int32_t>((seq_len[b] - 1) % spec.page_size + 1);
      qo32[b] = static_cast<int32_t>(qo_len[b]);
      qo_tokens += qo_len[b];
    }
    auto plan = core->CreatePlan(
        s, PlanRequest(pool.pool_id(),
                       prefill ? v1::ATTENTION_KIND_PREFILL : v1::ATTENTION_KIND_DECODE,
                       num_qo_heads, pages, last_page_len, prefill ? qo32 : std::vector<int32_t>{}));
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->qo_tokens(), qo_tokens);

    std::vector<int32_t> kv_indptr = {0}, kv_indices, qo_indptr = {0};
    for (int b = 0; b < batch; ++b) {
      kv_indices.insert(kv_indices.end(), pages[b].begin(), pages[b].end());
      kv_indptr.push_back(static_cast<int32_t>(kv_indices.size()));
      qo_indptr.push_back(qo_indptr.back() + qo32[b]);
    }

    for (int layer = 0; layer < spec.num_layers; ++layer) {
      SCOPED_TRACE(::testing::Message() << "step " << step << " layer " << layer);
      const std::string q = RandomBytes(rng, sc.q_dtype, qo_tokens * q_row);
      const std::string k = RandomBytes(rng, sc.kv_dtype, qo_tokens * kv_row);
      const std::string v = RandomBytes(rng, sc.kv_dtype, qo_tokens * kv_row);

      v1::RunRequest run;
      run.set_plan_id(plan->plan_id());
      run.set_layer(layer);
      *run.mutable_q() = InlineTensor(sc.q_dtype, {qo_tokens, num_qo_heads, spec.head_dim}, q);
      *run.mutable_options() = options;
      // Layer 1 of decode steps appends through AppendKv first; the others append within Run.
      if (!prefill && layer == 1) {
        v1::AppendKvRequest append;
        append.set_plan_id(plan->plan_id());
        append.set_layer(layer);
        *append.mutable_k() = InlineTensor(sc.kv_dtype, {qo_tokens, spec.num_kv_heads, spec.head_dim}, k);
        *append.mutable_v() = InlineTensor(sc.kv_dtype, {qo_tokens, spec.num_kv_heads, spec.head_dim}, v);
        ASSERT_TRUE(core->AppendKv(s, append).ok());
      } else {
        *run.mutable_k() = InlineTensor(sc.kv_dtype, {qo_tokens, spec.num_kv_heads, spec.head_dim}, k);
        *run.mutable_v() = InlineTensor(sc.kv_dtype, {qo_tokens, spec.num_kv_heads, spec.head_dim}, v);
      }
      auto response = core->Run(s, run);
      ASSERT_TRUE(response.ok()) << response.status();

      // The reference: write the same rows into the test's cache, run the kernel directly.
      for (int b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < qo_len[b]; ++i) {
          const int64_t row = qo_indptr[b] + i;
          reference.Write(layer, pages[b], seq_len[b] - qo_len[b] + i,
                          k.data() + row * kv_row * kv_elem, v.data() + row * kv_row * kv_elem);
        }
      }
      std::string expected_o(static_cast<size_t>(qo_tokens * q_row) * q_elem, '\x7f');
      std::vector<float> expected_lse(static_cast<size_t>(qo_tokens * num_qo_heads), -7.f);
      kernels::PagedAttentionParams params;
      params.kv = reference.View(layer);
      params.kv.batch_size = batch;
      params.kv.indptr = kv_indptr.data();
      params.kv.indices = kv_indices.data();
      params.kv.last_page_len = last_page_len.data();
      params.qo.q = q.data();
      params.qo.o = expected_o.data();
      params.qo.lse = expected_lse.data();
      params.qo.q_dtype = sc.q_dtype;
      params.qo.num_qo_heads = num_qo_heads;
      params.qo.batch_size = batch;
      params.qo.qo_indptr = prefill ? qo_indptr.data() : nullptr;
      params.options = ref_options;
      ASSERT_TRUE(kernels::cpu::PagedAttention(params, 1).ok());

      ASSERT_EQ(response->o().dtype(), ToProtoDType(sc.q_dtype));
      ASSERT_THAT(response->o().shape(), ::testing::ElementsAre(qo_tokens, num_qo_heads, spec.head_dim));
      ASSERT_EQ(response->o().inline_data().size(), expected_o.size());
      EXPECT_FALSE(AllZero(response->o().inline_data()));
      EXPECT_TRUE(response->o().inline_data() == expected_o) << "o differs from the reference";
      ASSERT_EQ(response->lse().dtype(), v1::DTYPE_FLOAT32);
      ASSERT_EQ(response->lse().inline_data().size(), expected_lse.size() * sizeof(float));
      std::vector<float> lse(expected_lse.size());
      std::memcpy(lse.data(), response->lse().inline_data().data(), lse.size() * sizeof(float));
      for (size_t i = 0; i < lse.size(); ++i) {
        ASSERT_EQ(lse[i], expected_lse[i]) << "lse[" << i << "]";
        ASSERT_TRUE(std::isfinite(lse[i])) << "lse[" << i << "]";
      }
    }
    v1::DeletePlanRequest del;
    del.set_plan_id(plan->plan_id());
    ASSERT_TRUE(core->DeletePlan(s, del).ok());
  }
  const CoreStats stats = core->Stats();
  EXPECT_GT(stats.bytes_in, 0u);
  EXPECT_GT(stats.bytes_out, 0u);
  EXPECT_EQ(stats.plans, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Scenarios, CoreAttentionTest,
    ::testing::Values(
        Scenario{"fp16_causal_rope", kernels::DType::kFloat16, kernels::DType::kFloat16, true, true, 0.f, -1},
        Scenario{"bf16_kv_fp32_q_softcap_window", kernels::DType::kBFloat16, kernels::DType::kFloat32, true, false, 20.f, 3},
        Scenario{"fp32_noncausal", kernels::DType::kFloat32, kernels::DType::kFloat32, false, true, 0.f, -1}),
    [](const ::testing::TestParamInfo<Scenario>& info) { return info.param.name; });

// A POSIX shared memory object created (and unlinked) by the test.
class CoreBufferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    core_ = MakeCore();
    peer_ = AddTestPeer(*core_);
    session_ = Open(*core_, SessionBinding::kStream, "test", 0, peer_);
    pool_ = CreatePool(*core_, session_);  // fp16, 2 kv heads, head_dim 64, page_size 4
    pages_ = Allocate(*core_, session_, pool_.pool_id(), 2);
    auto plan = core_->CreatePlan(session_, PlanRequest(pool_.pool_id(), v1::ATTENTION_KIND_PREFILL,
                                                        4, {pages_}, {3}, {7}));
    ASSERT_TRUE(plan.ok()) << plan.status();
    plan_id_ = plan->plan_id();
    // Fill the KV cache of layer 0 with a prefill (inline).
    std::mt19937 rng(7);
    v1::RunRequest run;
    run.set_plan_id(plan_id_);
    *run.mutable_q() = InlineTensor(kernels::DType::kFloat16, {7, 4, 64},
                                    RandomBytes(rng, kernels::DType::kFloat16, 7 * 4 * 64));
    *run.mutable_k() = InlineTensor(kernels::DType::kFloat16, {7, 2, 64},
                                    RandomBytes(rng, kernels::DType::kFloat16, 7 * 2 * 64));
    *run.mutable_v() = InlineTensor(kernels::DType::kFloat16, {7, 2, 64},
                                    RandomBytes(rng, kernels::DType::kFloat16, 7 * 2 * 64));
    ASSERT_TRUE(core_->Run(session_, run).ok());
    q_ = RandomBytes(rng, kernels::DType::kFloat16, 7 * 4 * 64);
  }

  std::string Register(const TestMemfd& memfd, uint64_t size) {
    auto buffer = RegisterMemfd(*core_, session_, peer_, memfd, size);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    return buffer.ok() ? *buffer : "";
  }

  static v1::Tensor Slice(v1::DType dtype, std::vector<int64_t> shape, const std::string& buffer,
                          uint64_t offset) {
    v1::Tensor t;
    t.set_dtype(dtype);
    for (int64_t d : shape) t.add_shape(d);
    t.mutable_buffer()->set_buffer_id(buffer);
    t.mutable_buffer()->set_offset_bytes(offset);
    return t;
  }

  std::unique_ptr<Core> core_;
  Identity peer_;
  std::string session_;
  v1::PoolInfo pool_;
  std::vector<int32_t> pages_;
  std::string plan_id_;
  std::string q_;  // [7, 4, 64] fp16
};

TEST_F(CoreBufferTest, RunReadsQAndWritesOAndLseThroughSharedMemory) {
  const size_t q_bytes = q_.size(), lse_bytes = 7 * 4 * sizeof(float);
  const uint64_t q_off = 128, o_off = q_off + q_bytes + 64, lse_off = o_off + q_bytes;
  TestMemfd shm(lse_off + lse_bytes + 100);
  std::memcpy(shm.data() + q_off, q_.data(), q_bytes);
  std::memset(shm.data() + o_off, 0x55, q_bytes + lse_bytes);  // poison
  const std::string buffer = Register(shm, lse_off + lse_bytes + 100);
  ASSERT_FALSE(buffer.empty());

  v1::RunRequest by_buffer;
  by_buffer.set_plan_id(plan_id_);
  *by_buffer.mutable_q() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, q_off);
  *by_buffer.mutable_o() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, o_off);
  *by_buffer.mutable_lse() = Slice(v1::DTYPE_FLOAT32, {7, 4}, buffer, lse_off);
  by_buffer.mutable_options()->set_causal(true);
  by_buffer.mutable_options()->set_return_lse(true);
  auto response = core_->Run(session_, by_buffer);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->has_o());  // written to the buffer, not returned inline
  EXPECT_FALSE(response->has_lse());

  v1::RunRequest inline_run = by_buffer;
  *inline_run.mutable_q() = InlineTensor(kernels::DType::kFloat16, {7, 4, 64}, q_);
  inline_run.clear_o();
  inline_run.clear_lse();
  auto inline_response = core_->Run(session_, inline_run);
  ASSERT_TRUE(inline_response.ok()) << inline_response.status();
  EXPECT_FALSE(AllZero(inline_response->o().inline_data()));
  EXPECT_TRUE(std::string(shm.data() + o_off, q_bytes) == inline_response->o().inline_data());
  EXPECT_TRUE(std::string(shm.data() + lse_off, lse_bytes) == inline_response->lse().inline_data());
}

TEST_F(CoreBufferTest, BadSlicesAndBuffersAreRefused) {
  TestMemfd shm(4096);
  const std::string buffer = Register(shm, 4096);
  v1::RunRequest run;
  run.set_plan_id(plan_id_);
  *run.mutable_q() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 0);  // 3584 bytes: fits
  ASSERT_TRUE(core_->Run(session_, run).ok());
  *run.mutable_q() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 1024);  // ends at 4608
  auto s = core_->Run(session_, run).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("q.buffer: offset_bytes=1024 + 3584 bytes"));
  *run.mutable_q() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 1);
  EXPECT_EQ(core_->Run(session_, run).status().code(), absl::StatusCode::kInvalidArgument);

  // Another session cannot name this buffer.
  const std::string other = Open(*core_);
  v1::UnregisterBufferRequest unregister;
  unregister.set_buffer_id(buffer);
  EXPECT_EQ(core_->UnregisterBuffer(other, unregister).status().code(), absl::StatusCode::kNotFound);
  // Unregistered: gone.
  ASSERT_TRUE(core_->UnregisterBuffer(session_, unregister).ok());
  *run.mutable_q() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 0);
  EXPECT_EQ(core_->Run(session_, run).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->Stats().buffers, 0);
}

// The client's memory must never fault the daemon: only memfds sealed against shrinking are
// accepted, and a sealed one cannot be shrunk while the daemon reads it (the old name-based
// registration let a client ftruncate its object mid-AppendKv and end the daemon with SIGBUS).
// A Run refused for any of its fields changes nothing: k/v it carries are not appended first
// (the CUDA backend used to append before checking the rest). Every field is checked before any
// write, for every backend, by the executor.
TEST_F(CoreBufferTest, ARefusedRunDoesNotAppendItsKv) {
  v1::RunRequest read;
  read.set_plan_id(plan_id_);
  *read.mutable_q() = InlineTensor(kernels::DType::kFloat16, {7, 4, 64}, q_);
  read.mutable_options()->set_causal(true);
  auto before = core_->Run(session_, read);
  ASSERT_TRUE(before.ok()) << before.status();

  TestMemfd shm(4096);
  const std::string buffer = Register(shm, 4096);
  std::mt19937 rng(99);
  v1::RunRequest bad = read;
  *bad.mutable_k() = InlineTensor(kernels::DType::kFloat16, {7, 2, 64},
                                  RandomBytes(rng, kernels::DType::kFloat16, 7 * 2 * 64));
  *bad.mutable_v() = InlineTensor(kernels::DType::kFloat16, {7, 2, 64},
                                  RandomBytes(rng, kernels::DType::kFloat16, 7 * 2 * 64));
  // Each of these is refused after k and v passed their own checks.
  std::vector<v1::RunRequest> refused;
  refused.push_back(bad);
  *refused.back().mutable_o() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 2048);  // past end
  refused.push_back(bad);
  *refused.back().mutable_o() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 1);  // misaligned
  refused.push_back(bad);
  refused.back().mutable_options()->set_return_lse(true);
  *refused.back().mutable_lse() = Slice(v1::DTYPE_FLOAT32, {7, 4}, "b-nope", 0);  // unknown
  refused.push_back(bad);
  refused.back().mutable_options()->set_logits_soft_cap(-1.f);
  refused.push_back(bad);
  refused.back().set_layer(5);
  for (const v1::RunRequest& r : refused) {
    EXPECT_FALSE(core_->Run(session_, r).ok());
  }
  auto after = core_->Run(session_, read);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->o().inline_data(), before->o().inline_data()) << "the cache changed";
}

TEST_F(CoreBufferTest, OnlySealedMemfdsAreAcceptedAndTheyCannotShrinkUnderARun) {
  TestMemfd unsealed(8192, /*seal=*/false);
  auto refused = SendFd(*core_, peer_, unsealed.fd());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("F_SEAL_SHRINK"));
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  ::close(pipe_fds[1]);
  refused = core_->AddPeerFd(peer_.peer, pipe_fds[0]);  // taken and closed
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("not a regular file"));

  TestMemfd shm(8192);
  std::memcpy(shm.data(), q_.data(), q_.size());
  const std::string buffer = Register(shm, 8192);
  v1::RunRequest run;
  run.set_plan_id(plan_id_);
  *run.mutable_q() = Slice(v1::DTYPE_FLOAT16, {7, 4, 64}, buffer, 0);
  *run.mutable_k() = Slice(v1::DTYPE_FLOAT16, {7, 2, 64}, buffer, 4096);
  *run.mutable_v() = Slice(v1::DTYPE_FLOAT16, {7, 2, 64}, buffer, 4096 + 1792);
  // The owner keeps trying to shrink it to 0 while runs (appending k/v) read it.
  std::atomic<bool> stop{false};
  std::atomic<int> refusals{0};
  std::thread shrinker([&] {
    while (!stop.load()) {
      if (::ftruncate(shm.fd(), 0) != 0 && errno == EPERM) refusals.fetch_add(1);
    }
  });
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(core_->Run(session_, run).ok());
  stop = true;
  shrinker.join();
  EXPECT_GT(refusals.load(), 0);
  struct stat st {};
  ASSERT_EQ(::fstat(shm.fd(), &st), 0);
  EXPECT_EQ(st.st_size, 8192);
}

TEST_F(CoreBufferTest, RegistrationChecksTheDescriptorAndWhoSentIt) {
  TestMemfd shm(1000);
  v1::RegisterBufferRequest request;
  auto token = SendFd(*core_, peer_, shm.fd());
  ASSERT_TRUE(token.ok()) << token.status();
  request.mutable_shared_memory_fd()->set_fd_token(*token);
  request.set_size_bytes(1001);
  auto s = core_->RegisterBuffer(session_, request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("size_bytes=1001"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("(1000 bytes)"));
  // A token is good once: the refused registration used it up.
  request.set_size_bytes(1000);
  EXPECT_EQ(core_->RegisterBuffer(session_, request).status().code(), absl::StatusCode::kNotFound);

  // Another process's descriptor cannot be registered by a session that is not its own, even
  // knowing the token.
  const Identity other_peer = AddTestPeer(*core_);
  token = SendFd(*core_, other_peer, shm.fd());
  ASSERT_TRUE(token.ok()) << token.status();
  request.mutable_shared_memory_fd()->set_fd_token(*token);
  s = core_->RegisterBuffer(session_, request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  // ... while its own session can.
  const std::string theirs = Open(*core_, SessionBinding::kStream, "other", 0, other_peer);
  EXPECT_TRUE(core_->RegisterBuffer(theirs, request).ok());

  // By name: refused, whatever the name.
  request.mutable_shared_memory()->set_name("/attnd-core-test-does-not-exist");
  EXPECT_EQ(core_->RegisterBuffer(session_, request).status().code(),
            absl::StatusCode::kFailedPrecondition);

  request.mutable_cuda_ipc()->set_ipc_handle(std::string(64, '\1'));
  s = core_->RegisterBuffer(session_, request).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(core_->Stats().buffers, 1);  // theirs
  // A peer that leaves takes its unregistered descriptors with it.
  token = SendFd(*core_, other_peer, shm.fd());
  ASSERT_TRUE(token.ok());
  core_->RemovePeer(other_peer.peer);
  request.mutable_shared_memory_fd()->set_fd_token(*token);
  EXPECT_FALSE(core_->RegisterBuffer(theirs, request).ok());
}

}  // namespace
}  // namespace attnd::server
