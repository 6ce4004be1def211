// End-to-end attention through a real daemon: prefill + decode loops over the stream and the
// unary session, several dtypes and GQA ratios, and zero-copy tensors in shared memory; every
// output is checked against the float64 reference over the K/V the test sent.
#include <cmath>
#include <cstring>
#include <memory>

#include "daemon_fixture.h"
#include "reference_attention.h"

namespace attnd::testing {
namespace {

class PrefillDecodeTest : public DaemonTest {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }
};

TEST_F(PrefillDecodeTest, ServerInfoDescribesTheBackend) {
  absl::StatusOr<v1::ServerInfo> info = client_->GetServerInfo();
  ATTND_ASSERT_OK(info);
  EXPECT_EQ(info->backend(), TestBackend());
  EXPECT_FALSE(info->version().empty());
  EXPECT_EQ(info->max_message_bytes(), DaemonOptions{}.max_message_bytes);
  EXPECT_TRUE(info->shared_memory());
  EXPECT_EQ(info->cuda_ipc(), TestBackend() == "cuda");
  EXPECT_NE(std::find(info->head_dims().begin(), info->head_dims().end(), 64),
            info->head_dims().end());
  EXPECT_NE(std::find(info->kv_dtypes().begin(), info->kv_dtypes().end(), v1::DTYPE_FLOAT16),
            info->kv_dtypes().end());
}

// The serving loop: 4 sequences (one exactly a page, one a single token), prefilled in one batch,
// then 10 decode steps; page accounting checked along the way.
void RunServingLoop(client::SessionApi& session, const std::string& pool_name) {
  ModelShape shape;
  shape.kv_heads = 2;
  shape.qo_heads = 8;
  absl::StatusOr<v1::PoolInfo> pool = session.CreatePool(MakePoolSpec(shape, pool_name));
  ATTND_ASSERT_OK(pool);
  EXPECT_EQ(pool->num_pages(), shape.num_pages);
  EXPECT_EQ(pool->free_pages(), shape.num_pages);
  EXPECT_EQ(pool->page_size(), shape.page_size);
  EXPECT_EQ(pool->kv_dtype(), shape.kv_dtype);
  // NHD strides as documented in PoolInfo.
  const uint64_t elem = 2;
  EXPECT_EQ(pool->head_stride_bytes(), shape.head_dim * elem);
  EXPECT_EQ(pool->token_stride_bytes(), shape.kv_heads * shape.head_dim * elem);
  EXPECT_EQ(pool->kv_stride_bytes(), shape.page_size * pool->token_stride_bytes());
  EXPECT_EQ(pool->page_stride_bytes(), 2 * pool->kv_stride_bytes());
  EXPECT_EQ(pool->layer_stride_bytes(), shape.num_pages * pool->page_stride_bytes());

  Workload work(&session, shape, pool->pool_id(), /*seed=*/7);
  ATTND_ASSERT_OK(work.Prefill({37, 16, 1, 50}));
  for (int step = 0; step < 10; ++step) ATTND_ASSERT_OK(work.DecodeStep());
  EXPECT_LE(work.max_o_error(), 5e-3);
  EXPECT_LE(work.max_lse_error(), 5e-3);
  EXPECT_GT(work.max_o_error(), 0.0) << "fp16 outputs cannot match a float64 reference exactly";

  absl::StatusOr<v1::PoolInfo> described = session.DescribePool(pool->pool_id());
  ATTND_ASSERT_OK(described);
  const int64_t held = static_cast<int64_t>(work.AllPages().size());
  EXPECT_EQ(held, 4 + 1 + 1 + 4);  // ceil((37|16|1|50 + 10) / 16)
  EXPECT_EQ(described->free_pages(), shape.num_pages - held);

  ATTND_ASSERT_OK(work.FreeAll());
  described = session.DescribePool(pool->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->free_pages(), shape.num_pages);
  ATTND_EXPECT_OK(session.DeletePool(pool->pool_id()));
}

TEST_F(PrefillDecodeTest, StreamSessionMatchesFloat64Reference) {
  absl::StatusOr<std::unique_ptr<client::Session>> session = client_->OpenSession("stream-loop");
  ATTND_ASSERT_OK(session);
  EXPECT_FALSE((*session)->session_id().empty());
  RunServingLoop(**session, UniqueName("stream-loop"));
  ATTND_EXPECT_OK((*session)->Close());
}

TEST_F(PrefillDecodeTest, UnarySessionMatchesFloat64Reference) {
  absl::StatusOr<std::unique_ptr<client::UnarySession>> session =
      client_->OpenUnarySession("unary-loop");
  ATTND_ASSERT_OK(session);
  EXPECT_FALSE((*session)->session_id().empty());
  RunServingLoop(**session, UniqueName("unary-loop"));
  ATTND_EXPECT_OK((*session)->Close());
}

TEST_F(PrefillDecodeTest, ManySequencesOfOddLengthsInOneBatch) {
  ModelShape shape;
  shape.layers = 1;
  shape.kv_heads = 2;
  shape.qo_heads = 6;
  shape.page_size = 5;
  shape.num_pages = 512;
  auto session = client_->OpenSession("many");
  ATTND_ASSERT_OK(session);
  auto pool = (*session)->CreatePool(MakePoolSpec(shape, UniqueName("many")));
  ATTND_ASSERT_OK(pool);
  Workload work(session->get(), shape, pool->pool_id(), /*seed=*/99);
  std::vector<int> lens;
  for (int len = 1; len <= 97; len += 6) lens.push_back(len);  // 17 sequences, 1 .. 97 tokens
  ATTND_ASSERT_OK(work.Prefill(lens));
  for (int step = 0; step < 6; ++step) ATTND_ASSERT_OK(work.DecodeStep());
  auto described = (*session)->DescribePool(pool->pool_id());
  ATTND_ASSERT_OK(described);
  EXPECT_EQ(described->free_pages(),
            shape.num_pages - static_cast<int64_t>(work.AllPages().size()));
}

TEST_F(PrefillDecodeTest, PoolSizedByMemoryBudget) {
  ModelShape shape;
  auto session = client_->OpenSession("budget");
  ATTND_ASSERT_OK(session);
  client::PoolSpec spec = MakePoolSpec(shape, UniqueName("budget"));
  // One page across all layers: 2 (K,V) * page_size * kv_heads * head_dim * 2 bytes * layers.
  const uint64_t page_bytes = 2ull * shape.page_size * shape.kv_heads * shape.head_dim * 2 *
                              shape.layers;
  spec.num_pages = 0;
  spec.memory_budget_bytes = 7 * page_bytes + page_bytes / 2;  // rounded down to 7 pages
  auto pool = (*session)->CreatePool(spec);
  ATTND_ASSERT_OK(pool);
  EXPECT_EQ(pool->num_pages(), 7);
  EXPECT_EQ(pool->total_bytes(), 7 * page_bytes);
  ATTND_EXPECT_OK((*session)->AllocatePages(pool->pool_id(), 7));
  EXPECT_TRUE(StatusIs((*session)->AllocatePages(pool->pool_id(), 1),
                       absl::StatusCode::kResourceExhausted));
}

struct DTypeCase {
  v1::DType kv_dtype;
  v1::DType q_dtype;
  int kv_heads;
  int qo_heads;
  int head_dim;
  int page_size;
  double tolerance;
};

std::string CaseName(const DTypeCase& c) {
  return absl::StrCat("kv_", client::DTypeName(c.kv_dtype), "_q_", client::DTypeName(c.q_dtype),
                      "_heads", c.qo_heads, "x", c.kv_heads, "_d", c.head_dim, "_page",
                      c.page_size);
}
void PrintTo(const DTypeCase& c, std::ostream* os) { *os << CaseName(c); }

class PrefillDecodeDTypeTest : public PrefillDecodeTest,
                               public ::testing::WithParamInterface<DTypeCase> {};

TEST_P(PrefillDecodeDTypeTest, MatchesFloat64Reference) {
  const DTypeCase& c = GetParam();
  ModelShape shape;
  shape.kv_dtype = c.kv_dtype;
  shape.q_dtype = c.q_dtype;
  shape.kv_heads = c.kv_heads;
  shape.qo_heads = c.qo_heads;
  shape.head_dim = c.head_dim;
  shape.page_size = c.page_size;
  shape.num_pages = 128;
  auto session = client_->OpenSession();
  ATTND_ASSERT_OK(session);
  auto pool = (*session)->CreatePool(MakePoolSpec(shape, UniqueName("dtype")));
  ATTND_ASSERT_OK(pool);
  Workload work(session->get(), shape, pool->pool_id(), /*seed=*/11, c.tolerance);
  ATTND_ASSERT_OK(work.Prefill({19, 3}));
  for (int step = 0; step < 4; ++step) ATTND_ASSERT_OK(work.DecodeStep());
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndGroups, PrefillDecodeDTypeTest,
    ::testing::Values(DTypeCase{v1::DTYPE_FLOAT16, v1::DTYPE_FLOAT16, 4, 16, 64, 16, 5e-3},
                      DTypeCase{v1::DTYPE_BFLOAT16, v1::DTYPE_BFLOAT16, 2, 2, 128, 16, 2e-2},
                      DTypeCase{v1::DTYPE_FLOAT32, v1::DTYPE_FLOAT32, 1, 8, 64, 1, 1e-4},
                      DTypeCase{v1::DTYPE_FLOAT16, v1::DTYPE_FLOAT32, 2, 4, 128, 7, 1e-3}),
    [](const ::testing::TestParamInfo<DTypeCase>& info) { return CaseName(info.param); });

// Zero-copy path: q comes from, and o/lse go to, slices of a registered shared-memory buffer.
TEST_F(PrefillDecodeTest, SharedMemoryBuffersCarryQAndOutputs) {
  ModelShape shape;
  auto session = client_->OpenSession();
  ATTND_ASSERT_OK(session);
  client::SessionApi& s = **session;
  auto pool = s.CreatePool(MakePoolSpec(shape, UniqueName("shm")));
  ATTND_ASSERT_OK(pool);
  Workload work(&s, shape, pool->pool_id(), /*seed=*/3);
  ATTND_ASSERT_OK(work.Prefill({21, 9}));  // fills the cache (inline tensors)

  const int64_t rows = 2;  // one decode row per sequence
  const size_t q_bytes = rows * shape.qo_heads * shape.head_dim * 2;
  const size_t lse_bytes = rows * shape.qo_heads * 4;
  const size_t q_offset = 64, o_offset = q_offset + q_bytes, lse_offset = o_offset + q_bytes;
  auto region =
      client::SharedMemoryRegion::Create(absl::StrCat("/", UniqueName("attnd-it")), 64 * 1024);
  ATTND_ASSERT_OK(region);
  auto buffer_id = s.RegisterSharedMemory(**region, (*region)->size());
  ATTND_ASSERT_OK(buffer_id);

  std::mt19937 rng(5);
  std::vector<float> q = RandomValues(rng, rows * shape.qo_heads * shape.head_dim, shape.q_dtype);
  ATTND_ASSERT_OK(client::EncodeFloats(
      q, shape.q_dtype, (*region)->bytes().subspan(q_offset, q_bytes)));
  std::memset((*region)->data() + o_offset, 0xff, q_bytes + lse_bytes);  // poison (NaN bits)

  // Attend over the cached tokens only (no append): decode at the sequences' current lengths.
  client::PlanSpec spec = work.PlanFor(v1::ATTENTION_KIND_DECODE, {0, 1}, {1, 1});
  auto plan = s.CreatePlan(spec);
  ATTND_ASSERT_OK(plan);
  for (int layer = 0; layer < shape.layers; ++layer) {
    client::RunArgs args;
    args.plan_id = plan->plan_id;
    args.layer = layer;
    args.q = client::MakeBufferTensor(*buffer_id, q_offset, {rows, shape.qo_heads, shape.head_dim},
                                      shape.q_dtype);
    args.o = client::MakeBufferTensor(*buffer_id, o_offset, {rows, shape.qo_heads, shape.head_dim},
                                      shape.q_dtype);
    args.lse = client::MakeBufferTensor(*buffer_id, lse_offset, {rows, shape.qo_heads},
                                        v1::DTYPE_FLOAT32);
    args.options.set_return_lse(true);
    auto response = s.Run(std::move(args));
    ATTND_ASSERT_OK(response);
    EXPECT_NE(response->o().data_case(), v1::Tensor::kInlineData) << "o was named as a buffer";

    auto o = client::DecodeFloats((*region)->bytes().subspan(o_offset, q_bytes), shape.q_dtype);
    auto lse = client::DecodeFloats((*region)->bytes().subspan(lse_offset, lse_bytes),
                                    v1::DTYPE_FLOAT32);
    ATTND_ASSERT_OK(o);
    ATTND_ASSERT_OK(lse);
    const ReferenceShape ref{shape.qo_heads, shape.kv_heads, shape.head_dim};
    const size_t q_row = static_cast<size_t>(shape.qo_heads) * shape.head_dim;
    for (int r = 0; r < rows; ++r) {
      const auto& seq = work.sequences()[r];
      std::vector<double> o_ref(q_row), lse_ref(shape.qo_heads);
      ReferenceAttentionRow(ref, &q[r * q_row], seq.k[layer], seq.v[layer], 0, seq.len - 1, 0,
                            o_ref.data(), lse_ref.data());
      for (size_t i = 0; i < q_row; ++i) {
        ASSERT_NEAR((*o)[r * q_row + i], o_ref[i], 5e-3) << "layer " << layer << " row " << r;
      }
      for (int h = 0; h < shape.qo_heads; ++h) {
        ASSERT_NEAR((*lse)[r * shape.qo_heads + h], lse_ref[h], 5e-3);
      }
    }
  }
  ATTND_EXPECT_OK(s.DeletePlan(plan->plan_id));
  ATTND_EXPECT_OK(s.UnregisterBuffer(*buffer_id));
}

}  // namespace
}  // namespace attnd::testing
