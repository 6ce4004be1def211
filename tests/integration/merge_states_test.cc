// MergeState / MergeStates over the wire (C++ client, Session stream and unary sessions): results
// against a float64 merge, attnd's natural-log LSE (Run's (o, lse) over two parts of the K/V merge
// into Run over all of it), shared-memory slices and in-place merges, and bad input answered with
// the field named while the session carries on.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "daemon_fixture.h"
#include "merge_reference.h"

namespace attnd::testing {
namespace {

using test_support::ExpectMergedClose;

std::vector<float> Uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

class MergeStatesTest : public DaemonTest, public ::testing::WithParamInterface<bool> {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }

 protected:
  // A stream-bound session, or a unary one (GetParam() true).
  std::unique_ptr<client::SessionApi> OpenSession(const std::string& name) {
    return OpenSessionOn(GetParam(), name);
  }
};

INSTANTIATE_TEST_SUITE_P(Transports, MergeStatesTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Unary" : "Stream"; });

TEST_P(MergeStatesTest, MergeStateAndMergeStatesMatchAFloat64Merge) {
  auto session = OpenSession("merge");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(11);
  const size_t rows = 6, heads = 4, dim = 32, cells = rows * heads;
  for (v1::DType dtype : {v1::DTYPE_FLOAT16, v1::DTYPE_BFLOAT16, v1::DTYPE_FLOAT32}) {
    const std::string what = client::DTypeName(dtype);
    std::vector<float> va = Uniform(rng, cells * dim, -2, 2), vb = Uniform(rng, cells * dim, -2, 2);
    client::RoundToDType(dtype, va);
    client::RoundToDType(dtype, vb);
    std::vector<float> sa = Uniform(rng, cells, -20, 20), sb = Uniform(rng, cells, -20, 20);
    sa[0] = -INFINITY;
    sa[1] = sb[1] = -INFINITY;
    sa[2] = sb[2] = 0.f;  // ln(e^0 + e^0) = ln 2: natural-log LSE
    const std::vector<int64_t> v_shape = {int64_t{rows}, int64_t{heads}, int64_t{dim}};
    const std::vector<int64_t> s_shape = {int64_t{rows}, int64_t{heads}};
    client::MergeStateArgs args;
    args.v_a = *client::MakeTensor(va, v_shape, dtype);
    args.s_a = *client::MakeTensor(sa, s_shape, v1::DTYPE_FLOAT32);
    args.v_b = *client::MakeTensor(vb, v_shape, dtype);
    args.s_b = *client::MakeTensor(sb, s_shape, v1::DTYPE_FLOAT32);
    auto merged = session->MergeStateAndDecode(args);
    ATTND_ASSERT_OK(merged);
    std::vector<float> v2, s2;  // the same states as MergeStates input [rows][2][heads][dim]
    for (size_t r = 0; r < rows; ++r) {
      for (int i = 0; i < 2; ++i) {
        const std::vector<float>& v = i ? vb : va;
        const std::vector<float>& s = i ? sb : sa;
        v2.insert(v2.end(), v.begin() + r * heads * dim, v.begin() + (r + 1) * heads * dim);
        s2.insert(s2.end(), s.begin() + r * heads, s.begin() + (r + 1) * heads);
      }
    }
    const auto ref =
        test_support::NaiveMergeStateList<float, float>({va, vb}, {sa, sb}, cells, dim);
    const double tol = dtype == v1::DTYPE_FLOAT32 ? 1e-5 : dtype == v1::DTYPE_FLOAT16 ? 2e-3 : 1e-2;
    ExpectMergedClose(merged->v, ref.v, tol, what + " MergeState v");
    ExpectMergedClose(merged->s, ref.s, 1e-6, what + " MergeState s");
    EXPECT_FLOAT_EQ(merged->s[2], std::log(2.f));

    client::MergeStatesArgs many;
    many.v = *client::MakeTensor(v2, {int64_t{rows}, 2, int64_t{heads}, int64_t{dim}}, dtype);
    many.s = *client::MakeTensor(s2, {int64_t{rows}, 2, int64_t{heads}}, v1::DTYPE_FLOAT32);
    auto merged_many = session->MergeStatesAndDecode(many);
    ATTND_ASSERT_OK(merged_many);
    EXPECT_EQ(merged_many->v, merged->v) << what << ": MergeStates of the same two states";
    EXPECT_EQ(merged_many->s, merged->s) << what;

    many.omit_s = true;
    auto without_s = session->MergeStatesAndDecode(many);
    ATTND_ASSERT_OK(without_s);
    EXPECT_TRUE(without_s->s.empty());
  }
}

// Run's lse is what the merges take: attention over pages {0} and {1, 2} merged equals attention
// over {0, 1, 2}.
TEST_P(MergeStatesTest, RunsOverPartsOfTheKvMergeIntoTheRunOverAll) {
  auto session = OpenSession("merge-runs");
  ASSERT_NE(session, nullptr);
  ModelShape shape;
  shape.layers = 1;
  shape.page_size = 16;
  shape.kv_dtype = v1::DTYPE_FLOAT32;
  shape.q_dtype = v1::DTYPE_FLOAT32;
  auto pool = session->CreatePool(MakePoolSpec(shape, UniqueName("merge-runs")));
  ATTND_ASSERT_OK(pool);
  auto grant = session->AllocatePages(pool->pool_id(), 3);
  ATTND_ASSERT_OK(grant);
  const std::vector<int32_t>& p = grant->page_ids;
  std::mt19937 rng(12);
  const int64_t kv_tokens = 3 * shape.page_size, q_rows = 5;
  const int64_t q_row = int64_t{shape.qo_heads} * shape.head_dim;
  const int64_t kv_row = int64_t{shape.kv_heads} * shape.head_dim;
  auto plan = [&](std::vector<int32_t> pages, int32_t qo_len) {
    client::PlanSpec spec;
    spec.pool_id = pool->pool_id();
    spec.kind = v1::ATTENTION_KIND_PREFILL;
    spec.num_qo_heads = shape.qo_heads;
    spec.kv_indptr = {0, static_cast<int32_t>(pages.size())};
    spec.kv_indices = std::move(pages);
    spec.kv_last_page_len = {shape.page_size};
    spec.qo_indptr = {0, qo_len};
    auto info = session->CreatePlan(spec);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->plan_id : std::string();
  };
  // Write all 48 tokens' K/V with one prefill that appends them.
  client::RunArgs fill;
  fill.plan_id = plan(p, static_cast<int32_t>(kv_tokens));
  fill.q = *client::MakeTensor(Uniform(rng, kv_tokens * q_row, -1, 1),
                               {kv_tokens, shape.qo_heads, shape.head_dim}, v1::DTYPE_FLOAT32);
  fill.k = *client::MakeTensor(Uniform(rng, kv_tokens * kv_row, -1, 1),
                               {kv_tokens, shape.kv_heads, shape.head_dim}, v1::DTYPE_FLOAT32);
  fill.v = *client::MakeTensor(Uniform(rng, kv_tokens * kv_row, -1, 1),
                               {kv_tokens, shape.kv_heads, shape.head_dim}, v1::DTYPE_FLOAT32);
  ATTND_ASSERT_OK(session->Run(fill));

  const v1::Tensor q =
      *client::MakeTensor(Uniform(rng, q_rows * q_row, -2, 2),
                          {q_rows, shape.qo_heads, shape.head_dim}, v1::DTYPE_FLOAT32);
  auto run = [&](std::vector<int32_t> pages) -> v1::RunResponse {
    client::RunArgs args;
    args.plan_id = plan(std::move(pages), static_cast<int32_t>(q_rows));
    args.q = q;
    args.options.set_return_lse(true);
    auto response = session->Run(args);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::RunResponse();
  };
  const v1::RunResponse a = run({p[0]}), b = run({p[1], p[2]}), all = run(p);
  client::MergeStateArgs merge;
  merge.v_a = a.o();
  merge.s_a = a.lse();
  merge.v_b = b.o();
  merge.s_b = b.lse();
  auto merged = session->MergeStateAndDecode(merge);
  ATTND_ASSERT_OK(merged);
  const std::vector<float> o_all = *client::TensorToFloats(all.o());
  const std::vector<float> lse_all = *client::TensorToFloats(all.lse());
  ExpectMergedClose(merged->v, std::vector<double>(o_all.begin(), o_all.end()), 1e-5, "o");
  ExpectMergedClose(merged->s, std::vector<double>(lse_all.begin(), lse_all.end()), 1e-5, "lse");
}

TEST_P(MergeStatesTest, SharedMemorySlicesAndInPlace) {
  auto session = OpenSession("merge-shm");
  ASSERT_NE(session, nullptr);
  const size_t rows = 3, heads = 2, dim = 8, cells = rows * heads;
  const uint64_t v_bytes = cells * dim * 2, s_bytes = cells * 4;
  // v_a, s_a, v_b, s_b, v_out, s_out at 256-byte offsets.
  auto region = client::SharedMemoryRegion::Create(UniqueName("merge"), 6 * 256);
  ATTND_ASSERT_OK(region);
  char* base = (*region)->data();
  std::mt19937 rng(13);
  std::vector<float> va = Uniform(rng, cells * dim, -1, 1), vb = Uniform(rng, cells * dim, -1, 1);
  std::vector<float> sa = Uniform(rng, cells, -3, 3), sb = Uniform(rng, cells, -3, 3);
  ATTND_ASSERT_OK(client::EncodeFloats(va, v1::DTYPE_FLOAT16, {base, v_bytes}));
  std::memcpy(base + 256, sa.data(), s_bytes);
  ATTND_ASSERT_OK(client::EncodeFloats(vb, v1::DTYPE_FLOAT16, {base + 512, v_bytes}));
  std::memcpy(base + 768, sb.data(), s_bytes);
  auto buffer = session->RegisterSharedMemory(**region, 6 * 256);
  ATTND_ASSERT_OK(buffer);
  const std::vector<int64_t> v_shape = {int64_t{rows}, int64_t{heads}, int64_t{dim}};
  const std::vector<int64_t> s_shape = {int64_t{rows}, int64_t{heads}};
  auto v_at = [&](uint64_t off) {
    return client::MakeBufferTensor(*buffer, off, v_shape, v1::DTYPE_FLOAT16);
  };
  auto s_at = [&](uint64_t off) {
    return client::MakeBufferTensor(*buffer, off, s_shape, v1::DTYPE_FLOAT32);
  };

  // Inline answer first, then the same merge from and into the buffer.
  client::MergeStateArgs inline_args;
  inline_args.v_a = *client::MakeTensor(va, v_shape, v1::DTYPE_FLOAT16);
  inline_args.s_a = *client::MakeTensor(sa, s_shape, v1::DTYPE_FLOAT32);
  inline_args.v_b = *client::MakeTensor(vb, v_shape, v1::DTYPE_FLOAT16);
  inline_args.s_b = *client::MakeTensor(sb, s_shape, v1::DTYPE_FLOAT32);
  auto expected = session->MergeState(inline_args);
  ATTND_ASSERT_OK(expected);
  client::MergeStateArgs sliced;
  sliced.v_a = v_at(0);
  sliced.s_a = s_at(256);
  sliced.v_b = v_at(512);
  sliced.s_b = s_at(768);
  sliced.v_out = v_at(1024);
  sliced.s_out = s_at(1280);
  auto written = session->MergeState(sliced);
  ATTND_ASSERT_OK(written);
  EXPECT_FALSE(written->has_v());
  EXPECT_EQ(std::string(base + 1024, v_bytes), expected->v().inline_data());
  EXPECT_EQ(std::string(base + 1280, s_bytes), expected->s().inline_data());

  // merge_state_in_place: (v_a, s_a) becomes the merge.
  ATTND_ASSERT_OK(session->MergeStateInPlace(v_at(0), s_at(256), v_at(512), s_at(768)));
  EXPECT_EQ(std::string(base, v_bytes), expected->v().inline_data());
  EXPECT_EQ(std::string(base + 256, s_bytes), expected->s().inline_data());
  // In place needs buffers (the client says so before sending anything).
  EXPECT_TRUE(StatusIs(session->MergeStateInPlace(inline_args.v_a, inline_args.s_a, inline_args.v_b,
                                                  inline_args.s_b),
                       absl::StatusCode::kInvalidArgument, {"must be buffer slices"}));
  // A partial overlap of an output and an input is refused, and changes nothing.
  const std::string before(base + 512, 512);
  sliced.v_out = v_at(512 + 64);
  EXPECT_TRUE(StatusIs(session->MergeState(sliced), absl::StatusCode::kInvalidArgument,
                       {"v_out (buffer '", "overlaps v_b (buffer '"}));
  EXPECT_EQ(std::string(base + 512, 512), before);
}

TEST_P(MergeStatesTest, BadInputNamesTheFieldAndTheSessionCarriesOn) {
  auto session = OpenSession("merge-bad");
  ASSERT_NE(session, nullptr);
  const std::vector<float> v(2 * 2 * 6, 0.f), s(4, 0.f);
  client::MergeStateArgs args;
  args.v_a = *client::MakeTensor(v, {2, 2, 6}, v1::DTYPE_FLOAT16);
  args.s_a = *client::MakeTensor(s, {2, 2}, v1::DTYPE_FLOAT32);
  args.v_b = args.v_a;
  args.s_b = args.s_a;
  EXPECT_TRUE(StatusIs(session->MergeState(args), absl::StatusCode::kInvalidArgument,
                       {"v_a.shape=[2,2,6]: head_dim=6 must be a multiple of 4 in 4..1024"}));
  args.v_a = *client::MakeTensor(std::vector<float>(16, 0.f), {2, 2, 4}, v1::DTYPE_FLOAT16);
  args.v_b = args.v_a;
  args.s_b = *client::MakeTensor(s, {2, 2}, v1::DTYPE_FLOAT16);
  EXPECT_TRUE(StatusIs(session->MergeState(args), absl::StatusCode::kInvalidArgument,
                       {"s_b.dtype=DTYPE_FLOAT16, expected DTYPE_FLOAT32"}));
  client::MergeStatesArgs many;
  many.v = args.v_a;
  many.s = args.s_a;
  EXPECT_TRUE(StatusIs(session->MergeStates(many), absl::StatusCode::kInvalidArgument,
                       {"v.shape=[2,2,4] must be [seq_len, num_states, num_heads, head_dim]"}));
  // Still serving this session: a good merge answers.
  args.s_b = args.s_a;
  ATTND_EXPECT_OK(session->MergeState(args));
  ExpectServing();
}

}  // namespace
}  // namespace attnd::testing
