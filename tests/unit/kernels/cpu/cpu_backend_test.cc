// The CPU Backend (CreateCpuBackend): info, memory, streams, copies, plans, and Attention with
// k_new/v_new (append, then attend) checked against the naive reference and the expected pool.
#include <cstring>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/backend.h"
#include "gtest/gtest.h"

namespace attnd::kernels {
namespace {

using testing::MakePagedProblem;
using testing::PagedProblem;
using testing::PagedProblemSpec;

std::unique_ptr<Backend> MakeBackend(int threads = 2) {
  auto backend = CreateCpuBackend(CpuBackendOptions{.num_threads = threads});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

TEST(CpuBackend, ReportsItsCapabilities) {
  auto backend = MakeBackend(3);
  const BackendInfo& info = backend->info();
  EXPECT_EQ(info.name, "cpu");
  EXPECT_EQ(info.device, "cpu (3 threads)");
  EXPECT_GT(info.memory_total_bytes, 0u);
  EXPECT_FALSE(info.cuda_ipc);
  EXPECT_TRUE(info.page_sizes.empty());
  for (int d : {64, 128, 256}) {
    EXPECT_NE(std::find(info.head_dims.begin(), info.head_dims.end(), d), info.head_dims.end());
  }
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    EXPECT_NE(std::find(info.kv_dtypes.begin(), info.kv_dtypes.end(), t), info.kv_dtypes.end());
    EXPECT_NE(std::find(info.q_dtypes.begin(), info.q_dtypes.end(), t), info.q_dtypes.end());
  }
  EXPECT_TRUE(backend->host_accessible());
  EXPECT_TRUE(backend->Health().ok());
  EXPECT_EQ(CreateCpuBackend(CpuBackendOptions{.num_threads = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto defaults = CreateCpuBackend(CpuBackendOptions{});
  ASSERT_TRUE(defaults.ok());
  EXPECT_NE((*defaults)->info().device.find("threads"), std::string::npos);
}

TEST(CpuBackend, MemoryStreamsAndCopies) {
  auto backend = MakeBackend();
  auto memory = backend->Allocate(100000);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ((*memory)->size(), 100000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*memory)->data()) % 256, 0u);
  EXPECT_TRUE((*memory)->ipc_handle().empty());
  const uint8_t* bytes = static_cast<const uint8_t*>((*memory)->data());
  for (size_t i = 0; i < 100000; ++i) ASSERT_EQ(bytes[i], 0) << "not zero-filled at " << i;

  auto empty = backend->Allocate(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ((*empty)->size(), 0u);

  auto huge = backend->Allocate(size_t{1} << 62);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();

  auto ipc = backend->OpenIpcBuffer(std::string(64, 'x'), 0, 128);
  EXPECT_EQ(ipc.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ipc.status().message(), "backend cpu cannot open CUDA IPC handles");

  auto stream = backend->CreateStream();
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ((*stream)->native(), nullptr);

  std::vector<uint8_t> src(1000), back(1000, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7);
  ASSERT_TRUE(backend->CopyToBackend((*memory)->data(), src.data(), 1000, stream->get()).ok());
  ASSERT_TRUE(backend->CopyToHost(back.data(), (*memory)->data(), 1000, stream->get()).ok());
  ASSERT_TRUE(backend->Synchronize(stream->get()).ok());
  EXPECT_EQ(back, src);
  EXPECT_EQ(backend->CopyToHost(nullptr, src.data(), 10, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackend, PrepareRejectsInconsistentSpecs) {
  auto backend = MakeBackend();
  PlanSpec spec;
  spec.kind = AttentionKind::kDecode;
  spec.num_qo_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size = 16;
  spec.kv_indptr = {0, 1, 3};
  spec.kv_indices = {0, 1, 2};
  spec.kv_last_page_len = {5, 16};
  spec.qo_indptr = {0, 1, 2};
  auto plan = backend->Prepare(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ((*plan)->spec().kv_indices, spec.kv_indices);

  PlanSpec bad = spec;
  bad.qo_indptr = {0, 2, 3};  // decode with two rows
  EXPECT_EQ(backend->Prepare(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  bad = spec;
  bad.kv_indices = {0, 1};
  EXPECT_EQ(backend->Prepare(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  bad = spec;
  bad.num_qo_heads = 3;
  EXPECT_EQ(backend->Prepare(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  bad = spec;
  bad.qo_indptr = {0, 1};
  EXPECT_EQ(backend->Prepare(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

// Runs a plan through the backend on layer 1 of a two-layer pool in backend memory. The new
// tokens (the last qo_len of each request) are cleared from the pool and passed as k_new/v_new,
// so the result is right only if they are appended to the right slots before attention.
void CheckAttentionWithAppend(const PagedProblemSpec& spec, AttentionOptions options) {
  PagedProblem p = MakePagedProblem(spec);
  const std::string what = testing::DescribeSpec(spec, options);
  SCOPED_TRACE(what);
  auto backend = MakeBackend();
  const size_t layer_bytes = p.pool.size();
  auto pool = backend->Allocate(2 * layer_bytes);
  ASSERT_TRUE(pool.ok());
  uint8_t* layer1 = static_cast<uint8_t*>((*pool)->data()) + layer_bytes;
  std::memcpy(layer1, p.pool.data(), layer_bytes);

  const int64_t row = static_cast<int64_t>(spec.num_kv_heads) * spec.head_dim;
  const size_t elem = DTypeSize(spec.kv_dtype);
  std::vector<uint8_t> k_new(p.qo_nnz * row * elem), v_new(p.qo_nnz * row * elem);
  for (size_t b = 0; b < spec.kv_lens.size(); ++b) {
    for (int i = 0; i < p.qo_lens[b]; ++i) {
      const int64_t t = spec.kv_lens[b] - p.qo_lens[b] + i;
      const int64_t page = p.indices[p.indptr[b] + t / spec.page_size];
      for (int h = 0; h < spec.num_kv_heads; ++h) {
        const int64_t dst = ((p.qo_indptr[b] + i) * spec.num_kv_heads + h) * spec.head_dim;
        for (int kv_index = 0; kv_index < 2; ++kv_index) {
          const int64_t slot = p.SlotOffset(page, kv_index, t % spec.page_size, h) * elem;
          std::memcpy(&(kv_index ? v_new : k_new)[dst * elem], layer1 + slot, spec.head_dim * elem);
          std::memset(layer1 + slot, 0x7f, spec.head_dim * elem);  // garbage until appended
        }
      }
    }
  }

  PlanSpec plan_spec;
  plan_spec.kind = spec.decode ? AttentionKind::kDecode : AttentionKind::kPrefill;
  plan_spec.num_qo_heads = p.num_qo_heads;
  plan_spec.num_kv_heads = spec.num_kv_heads;
  plan_spec.head_dim = spec.head_dim;
  plan_spec.page_size = spec.page_size;
  plan_spec.kv_dtype = spec.kv_dtype;
  plan_spec.kv_indptr = p.indptr;
  plan_spec.kv_indices = p.indices;
  plan_spec.kv_last_page_len = p.last_page_len;
  plan_spec.qo_indptr = p.qo_indptr;
  auto plan = backend->Prepare(plan_spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();

  std::vector<int32_t> rope_offsets;
  for (size_t b = 0; b < spec.kv_lens.size(); ++b) rope_offsets.push_back(100 * b + 3);
  RunArgs args;
  args.plan = plan->get();
  args.layer = p.View();
  args.layer.data = layer1;
  args.q = p.q.data();
  p.PoisonOutputs();
  args.o = p.o.data();
  args.lse = p.lse.data();
  args.q_dtype = spec.q_dtype;
  args.k_new = k_new.data();
  args.v_new = v_new.data();
  args.options = options;
  args.options.rope_offsets = nullptr;
  args.rope_offsets_host = rope_offsets.data();

  // A rejected call (geometry mismatch) must leave the pool untouched.
  RunArgs mismatched = args;
  mismatched.layer.head_dim = spec.head_dim * 2;
  EXPECT_EQ(backend->Attention(mismatched).code(), absl::StatusCode::kInvalidArgument);
  RunArgs half = args;
  half.v_new = nullptr;
  EXPECT_EQ(backend->Attention(half).code(), absl::StatusCode::kInvalidArgument);
  RunArgs bad_options = args;
  bad_options.options.window_left = -5;
  EXPECT_EQ(backend->Attention(bad_options).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::memcmp(layer1, p.pool.data(), layer_bytes), 0);

  ASSERT_TRUE(backend->Attention(args).ok());
  EXPECT_EQ(std::memcmp(layer1, p.pool.data(), layer_bytes), 0) << "pool after append differs";
  const uint8_t* layer0 = static_cast<const uint8_t*>((*pool)->data());
  for (size_t i = 0; i < layer_bytes; ++i) ASSERT_EQ(layer0[i], 0) << "layer 0 written at " << i;

  const auto ref = testing::NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads,
                                           spec.num_kv_heads, spec.head_dim, options, rope_offsets);
  testing::ExpectOutputsClose(p.o, spec.q_dtype, ref.o, what);
  testing::ExpectLseClose(p.lse, ref.lse, what);
}

TEST(CpuBackend, PrefillAppendThroughPrepareAndAttention) {
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {30, 97, 5};
  spec.qo_lens = {30, 10, 1};
  spec.page_size = 16;
  spec.group = 4;
  spec.kv_dtype = spec.q_dtype = DType::kBFloat16;
  AttentionOptions options;
  options.causal = true;
  options.pos_encoding = PosEncoding::kRopeLlama;
  options.logits_soft_cap = 50.f;
  CheckAttentionWithAppend(spec, options);
}

TEST(CpuBackend, DecodeAppendThroughPrepareAndAttention) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {1, 64, 65, 300};
  spec.page_size = 64;
  spec.group = 8;
  spec.num_kv_heads = 1;
  spec.head_dim = 128;
  spec.kv_dtype = spec.q_dtype = DType::kFloat16;
  AttentionOptions options;
  options.window_left = 100;
  CheckAttentionWithAppend(spec, options);
}

TEST(CpuBackend, AppendKvAndMergeStatesEntryPoints) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {3, 17};
  PagedProblem p = MakePagedProblem(spec);
  auto backend = MakeBackend();
  PlanSpec plan_spec;
  plan_spec.kind = AttentionKind::kDecode;
  plan_spec.num_qo_heads = p.num_qo_heads;
  plan_spec.num_kv_heads = spec.num_kv_heads;
  plan_spec.head_dim = spec.head_dim;
  plan_spec.page_size = spec.page_size;
  plan_spec.kv_dtype = spec.kv_dtype;
  plan_spec.kv_indptr = p.indptr;
  plan_spec.kv_indices = p.indices;
  plan_spec.kv_last_page_len = p.last_page_len;
  plan_spec.qo_indptr = {0, 1, 2};
  auto plan = backend->Prepare(plan_spec, nullptr);
  ASSERT_TRUE(plan.ok());
  const int64_t row = static_cast<int64_t>(spec.num_kv_heads) * spec.head_dim;
  std::vector<uint16_t> k(2 * row, 0x3c00), v(2 * row, 0xbc00);  // fp16 1.0 and -1.0
  ASSERT_TRUE(backend->AppendKv(**plan, p.View(), k.data(), v.data(), spec.kv_dtype, nullptr).ok());
  // Request 1's last token (position 16) is slot 0 of its second page.
  const int64_t page = p.indices[p.indptr[1] + 1];
  for (int e = 0; e < row; ++e) {
    EXPECT_EQ(LoadAsFloat(p.pool.data(), spec.kv_dtype, p.SlotOffset(page, 0, 0, 0) + e), 1.f);
    EXPECT_EQ(LoadAsFloat(p.pool.data(), spec.kv_dtype, p.SlotOffset(page, 1, 0, 0) + e), -1.f);
  }
  PagedKV wrong = p.View();
  wrong.dtype = DType::kFloat32;
  EXPECT_EQ(backend->AppendKv(**plan, wrong, k.data(), v.data(), DType::kFloat16, nullptr).code(),
            absl::StatusCode::kInvalidArgument);

  // Merging one state with an empty one gives the first back.
  std::vector<float> v_in = {1, 2, 3, 4, 9, 9, 9, 9}, s_in = {0.5f, -INFINITY}, v_out(4), s_out(1);
  MergeStatesParams merge;
  merge.v_in = v_in.data();
  merge.s_in = s_in.data();
  merge.v_out = v_out.data();
  merge.s_out = s_out.data();
  merge.dtype = DType::kFloat32;
  merge.num_rows = 1;
  merge.num_states = 2;
  merge.num_heads = 1;
  merge.head_dim = 4;
  ASSERT_TRUE(backend->MergeStates(merge, nullptr).ok());
  EXPECT_EQ(v_out, std::vector<float>({1, 2, 3, 4}));
  EXPECT_EQ(s_out[0], 0.5f);
}

}  // namespace
}  // namespace attnd::kernels
