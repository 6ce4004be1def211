// RunRagged through Core (server/core/commands/runs.cc, CheckRunRagged in request_rules.cc):
// attention over K/V given as tensors equals Run over pages holding the same K/V (with causal
// masks, RoPE offsets, soft cap, window and LSE), inline and from shared memory; its plan's host
// memory is charged and returned; every bad field is refused by name with the outputs untouched.
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "attnd/kernels/float_convert.h"
#include "core_test_util.h"
#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/core.h"
#include "server/core/dtype_convert.h"

namespace attnd::server::testing {
namespace {

using kernels::DType;
using ::testing::HasSubstr;

std::string RandomBytes(std::mt19937& rng, DType dtype, int64_t count) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::string bytes(static_cast<size_t>(count) * kernels::DTypeSize(dtype), '\0');
  for (int64_t i = 0; i < count; ++i) kernels::StoreFromFloat(bytes.data(), dtype, i, dist(rng));
  return bytes;
}

v1::Tensor Inline(DType dtype, const std::vector<int64_t>& shape, std::string bytes) {
  v1::Tensor t;
  t.set_dtype(ToProtoDType(dtype));
  for (int64_t d : shape) t.add_shape(d);
  t.set_inline_data(std::move(bytes));
  return t;
}

std::vector<float> Values(const v1::Tensor& t) {
  const auto dtype = FromProtoDType(t.dtype(), "t");
  EXPECT_TRUE(dtype.ok());
  std::vector<float> out(t.inline_data().size() / kernels::DTypeSize(*dtype));
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = kernels::LoadAsFloat(t.inline_data().data(), *dtype, i);
  }
  return out;
}

void ExpectNear(const std::vector<float>& a, const std::vector<float>& b, float tol,
                const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i])) {
      EXPECT_EQ(a[i], b[i]) << what << " [" << i << "]";
    } else {
      EXPECT_NEAR(a[i], b[i], tol * (1 + std::fabs(b[i]))) << what << " [" << i << "]";
    }
  }
}

// Two requests: 7 query rows over 10 keys (append), and 3 query rows over 3 keys (prefill).
constexpr int32_t kQoHeads = 4, kKvHeads = 2, kDim = 64, kPage = 4;
const std::vector<int32_t> kQoIndptr = {0, 7, 10}, kKvIndptr = {0, 10, 13};

v1::AttentionOptions Options() {
  v1::AttentionOptions o;
  o.set_causal(true);
  o.set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
  o.add_rope_offsets(3);
  o.add_rope_offsets(0);
  o.set_logits_soft_cap(25.f);
  o.set_window_left(6);
  o.set_window_left_set(true);
  o.set_return_lse(true);
  return o;
}

v1::RunRaggedRequest RaggedRequest(const std::string& q, const std::string& k,
                                   const std::string& v) {
  v1::RunRaggedRequest r;
  *r.mutable_q() = Inline(DType::kFloat16, {10, kQoHeads, kDim}, q);
  *r.mutable_k() = Inline(DType::kFloat16, {13, kKvHeads, kDim}, k);
  *r.mutable_v() = Inline(DType::kFloat16, {13, kKvHeads, kDim}, v);
  for (int32_t x : kQoIndptr) r.add_qo_indptr(x);
  for (int32_t x : kKvIndptr) r.add_kv_indptr(x);
  *r.mutable_options() = Options();
  return r;
}

TEST(CoreRaggedRunTest, RaggedKvGivesWhatRunOverPagesWithTheSameKvGives) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  std::mt19937 rng(17);
  const int64_t row = int64_t{kKvHeads} * kDim;
  const std::string q = RandomBytes(rng, DType::kFloat16, 10 * kQoHeads * kDim);
  const std::string k = RandomBytes(rng, DType::kFloat16, 13 * row);
  const std::string v = RandomBytes(rng, DType::kFloat16, 13 * row);

  // The same K/V in pages: request 0's 10 keys in 3 pages, request 1's 3 keys in 1 page, written
  // by a prefill that appends all of them (its own output is not used).
  const v1::PoolInfo pool =
      CreatePool(*core, s, {.num_kv_heads = kKvHeads, .head_dim = kDim, .page_size = kPage});
  const std::vector<int32_t> p = Allocate(*core, s, pool.pool_id(), 4);
  auto fill = core->CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, kQoHeads,
                                              {{p[0], p[1], p[2]}, {p[3]}}, {2, 3}, {10, 3}));
  ASSERT_TRUE(fill.ok()) << fill.status();
  v1::RunRequest append;
  append.set_plan_id(fill->plan_id());
  *append.mutable_q() = Inline(DType::kFloat16, {13, kQoHeads, kDim},
                               RandomBytes(rng, DType::kFloat16, 13 * kQoHeads * kDim));
  *append.mutable_k() = Inline(DType::kFloat16, {13, kKvHeads, kDim}, k);
  *append.mutable_v() = Inline(DType::kFloat16, {13, kKvHeads, kDim}, v);
  ASSERT_TRUE(core->Run(s, append).ok());
  auto paged = core->CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, kQoHeads,
                                               {{p[0], p[1], p[2]}, {p[3]}}, {2, 3}, {7, 3}));
  ASSERT_TRUE(paged.ok()) << paged.status();
  v1::RunRequest run;
  run.set_plan_id(paged->plan_id());
  *run.mutable_q() = Inline(DType::kFloat16, {10, kQoHeads, kDim}, q);
  *run.mutable_options() = Options();
  auto expected = core->Run(s, run);
  ASSERT_TRUE(expected.ok()) << expected.status();

  const uint64_t host_before = core->Stats().host_bytes;
  auto ragged = core->RunRagged(s, RaggedRequest(q, k, v));
  ASSERT_TRUE(ragged.ok()) << ragged.status();
  EXPECT_THAT(ragged->o().shape(), ::testing::ElementsAre(10, kQoHeads, kDim));
  ExpectNear(Values(ragged->o()), Values(expected->o()), 2e-3f, "o");
  ExpectNear(Values(ragged->lse()), Values(expected->lse()), 1e-5f, "lse");
  // With sinks, both again agree.
  *run.mutable_sinks() = FloatVector({0.5f, -1.f, 2.f, -3.f});
  auto expected_sinks = core->Run(s, run);
  ASSERT_TRUE(expected_sinks.ok()) << expected_sinks.status();
  v1::RunRaggedRequest with_sinks = RaggedRequest(q, k, v);
  *with_sinks.mutable_sinks() = run.sinks();
  auto ragged_sinks = core->RunRagged(s, with_sinks);
  ASSERT_TRUE(ragged_sinks.ok()) << ragged_sinks.status();
  ExpectNear(Values(ragged_sinks->o()), Values(expected_sinks->o()), 2e-3f, "o with sinks");
  ExpectNear(Values(ragged_sinks->lse()), Values(expected_sinks->lse()), 1e-5f, "lse with sinks");
  // The plan of the run is kept (and charged) until the next ragged run or the session's end.
  EXPECT_GT(core->Stats().host_bytes, host_before);
  ASSERT_TRUE(core->RunRagged(s, RaggedRequest(q, k, v)).ok());
  ASSERT_TRUE(core->CloseSession(s).ok());
  EXPECT_EQ(core->Stats().host_bytes, 0u);
}

TEST(CoreRaggedRunTest, KeysBeyondTheQueriesAndEmptyRequests) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  std::mt19937 rng(18);
  // Request 0 has no keys at all (o = 0, lse = -inf); request 1's rows see every key (not
  // causal); fp32 and bf16.
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    v1::RunRaggedRequest r;
    *r.mutable_q() = Inline(dtype, {3, 2, 32}, RandomBytes(rng, dtype, 3 * 2 * 32));
    *r.mutable_k() = Inline(dtype, {5, 1, 32}, RandomBytes(rng, dtype, 5 * 32));
    *r.mutable_v() = Inline(dtype, {5, 1, 32}, RandomBytes(rng, dtype, 5 * 32));
    for (int32_t x : {0, 1, 3}) r.add_qo_indptr(x);
    for (int32_t x : {0, 0, 5}) r.add_kv_indptr(x);
    r.mutable_options()->set_return_lse(true);
    auto response = core->RunRagged(s, r);
    ASSERT_TRUE(response.ok()) << response.status();
    const std::vector<float> o = Values(response->o()), lse = Values(response->lse());
    for (int i = 0; i < 2 * 32; ++i) EXPECT_EQ(o[i], 0.f) << i;
    EXPECT_EQ(lse[0], -INFINITY);
    EXPECT_EQ(lse[1], -INFINITY);
    for (size_t i = 2; i < lse.size(); ++i) EXPECT_TRUE(std::isfinite(lse[i])) << i;
  }
}

TEST(CoreRaggedRunTest, SharedMemoryInputsAndOutputs) {
  auto core = MakeCore();
  const Identity peer = AddTestPeer(*core);
  const std::string s = Open(*core, SessionBinding::kStream, "test", 0, peer);
  std::mt19937 rng(19);
  const std::string q = RandomBytes(rng, DType::kFloat16, 10 * kQoHeads * kDim);
  const std::string k = RandomBytes(rng, DType::kFloat16, 13 * kKvHeads * kDim);
  const std::string v = RandomBytes(rng, DType::kFloat16, 13 * kKvHeads * kDim);
  auto expected = core->RunRagged(s, RaggedRequest(q, k, v));
  ASSERT_TRUE(expected.ok()) << expected.status();
  // q | k | v | o | lse in one buffer.
  const uint64_t q_off = 0, k_off = q.size(), v_off = k_off + k.size(), o_off = v_off + v.size();
  const uint64_t lse_off = o_off + q.size(), size = lse_off + 10 * kQoHeads * 4;
  TestMemfd shm(size);
  std::memcpy(shm.data() + q_off, q.data(), q.size());
  std::memcpy(shm.data() + k_off, k.data(), k.size());
  std::memcpy(shm.data() + v_off, v.data(), v.size());
  auto buffer = RegisterMemfd(*core, s, peer, shm, size);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  auto slice = [&](v1::DType dtype, const std::vector<int64_t>& shape, uint64_t offset) {
    return SliceTensor(*buffer, dtype, shape, offset);
  };
  v1::RunRaggedRequest r = RaggedRequest(q, k, v);
  *r.mutable_q() = slice(v1::DTYPE_FLOAT16, {10, kQoHeads, kDim}, q_off);
  *r.mutable_k() = slice(v1::DTYPE_FLOAT16, {13, kKvHeads, kDim}, k_off);
  *r.mutable_v() = slice(v1::DTYPE_FLOAT16, {13, kKvHeads, kDim}, v_off);
  *r.mutable_o() = slice(v1::DTYPE_FLOAT16, {10, kQoHeads, kDim}, o_off);
  *r.mutable_lse() = slice(v1::DTYPE_FLOAT32, {10, kQoHeads}, lse_off);
  r.set_completion(v1::COMPLETION_ASYNC);  // the CPU backend completes before the reply
  auto response = core->RunRagged(s, r);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->has_o());
  EXPECT_FALSE(response->has_lse());
  EXPECT_EQ(std::string(shm.data() + o_off, q.size()), expected->o().inline_data());
  EXPECT_EQ(std::string(shm.data() + lse_off, 10 * kQoHeads * 4), expected->lse().inline_data());
}

TEST(CoreRaggedRunTest, SinksJoinEverySoftmaxInlineOrFromSharedMemory) {
  auto core = MakeCore();
  const Identity peer = AddTestPeer(*core);
  const std::string s = Open(*core, SessionBinding::kStream, "test", 0, peer);
  std::mt19937 rng(23);
  const std::string q = RandomBytes(rng, DType::kFloat16, 10 * kQoHeads * kDim);
  const std::string k = RandomBytes(rng, DType::kFloat16, 13 * kKvHeads * kDim);
  const std::string v = RandomBytes(rng, DType::kFloat16, 13 * kKvHeads * kDim);
  const std::vector<float> sinks = {1.5f, -2.f, 0.f, 4.f};
  auto plain = core->RunRagged(s, RaggedRequest(q, k, v));
  ASSERT_TRUE(plain.ok()) << plain.status();
  v1::RunRaggedRequest r = RaggedRequest(q, k, v);
  *r.mutable_sinks() = FloatVector(sinks);
  auto inline_sinks = core->RunRagged(s, r);
  ASSERT_TRUE(inline_sinks.ok()) << inline_sinks.status();
  // lse is that of the whole softmax, ln(exp(lse without) + exp(sink)), and o shrinks by
  // exp(lse without - lse).
  const std::vector<float> lse0 = Values(plain->lse()), lse1 = Values(inline_sinks->lse());
  const std::vector<float> o0 = Values(plain->o()), o1 = Values(inline_sinks->o());
  for (size_t i = 0; i < lse0.size(); ++i) {
    const int h = static_cast<int>(i % kQoHeads);
    const double whole = lse0[i] == -INFINITY
                             ? sinks[h]
                             : std::log(std::exp(double{lse0[i]}) + std::exp(double{sinks[h]}));
    EXPECT_NEAR(lse1[i], whole, 1e-4 * (1 + std::fabs(whole))) << i;
    const double shrink = lse0[i] == -INFINITY ? 0 : std::exp(lse0[i] - whole);
    for (int d = 0; d < kDim; ++d) {
      EXPECT_NEAR(o1[i * kDim + d], o0[i * kDim + d] * shrink, 2e-3) << i << " " << d;
    }
  }
  // The same sinks from a registered buffer give the same bytes.
  TestMemfd shm(64);
  std::memcpy(shm.data() + 16, sinks.data(), sinks.size() * sizeof(float));
  auto buffer = RegisterMemfd(*core, s, peer, shm, 64);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  r.mutable_sinks()->clear_inline_data();
  r.mutable_sinks()->mutable_buffer()->set_buffer_id(*buffer);
  r.mutable_sinks()->mutable_buffer()->set_offset_bytes(16);
  auto slice_sinks = core->RunRagged(s, r);
  ASSERT_TRUE(slice_sinks.ok()) << slice_sinks.status();
  EXPECT_EQ(slice_sinks->o().inline_data(), inline_sinks->o().inline_data());
  EXPECT_EQ(slice_sinks->lse().inline_data(), inline_sinks->lse().inline_data());
}

TEST(CoreRaggedRunTest, EveryBadFieldIsRefusedByNameAndNothingIsWritten) {
  auto core = MakeCore();
  const Identity peer = AddTestPeer(*core);
  const std::string s = Open(*core, SessionBinding::kStream, "test", 0, peer);
  std::mt19937 rng(20);
  const std::string q = RandomBytes(rng, DType::kFloat16, 10 * kQoHeads * kDim);
  const std::string k = RandomBytes(rng, DType::kFloat16, 13 * kKvHeads * kDim);
  const uint64_t o_bytes = q.size(), lse_bytes = 10 * kQoHeads * 4;
  TestMemfd shm(o_bytes + lse_bytes);
  auto buffer = RegisterMemfd(*core, s, peer, shm, o_bytes + lse_bytes);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  v1::RunRaggedRequest good = RaggedRequest(q, k, k);
  good.mutable_o()->set_dtype(v1::DTYPE_FLOAT16);
  for (int64_t d : {10, kQoHeads, kDim}) good.mutable_o()->add_shape(d);
  good.mutable_o()->mutable_buffer()->set_buffer_id(*buffer);
  good.mutable_lse()->set_dtype(v1::DTYPE_FLOAT32);
  for (int64_t d : {10, kQoHeads}) good.mutable_lse()->add_shape(d);
  good.mutable_lse()->mutable_buffer()->set_buffer_id(*buffer);
  good.mutable_lse()->mutable_buffer()->set_offset_bytes(o_bytes);
  ASSERT_TRUE(core->RunRagged(s, good).ok());

  using Mutate = std::function<void(v1::RunRaggedRequest&)>;
  struct Case {
    const char* what;
    Mutate mutate;
    absl::StatusCode code;
    std::string message;
  };
  const auto inv = absl::StatusCode::kInvalidArgument;
  const std::vector<Case> cases = {
      {"no q", [](auto& r) { r.clear_q(); }, inv, "q has no data"},
      {"fp8 q", [](auto& r) { r.mutable_q()->set_dtype(v1::DTYPE_FLOAT8_E4M3); }, inv,
       "q.dtype=DTYPE_FLOAT8_E4M3 is not supported for queries"},
      {"rank 2 q", [](auto& r) { r.mutable_q()->mutable_shape()->RemoveLast(); }, inv,
       "q.shape=[10,4] must be [qo_tokens, num_qo_heads, head_dim]"},
      {"head_dim 48", [](auto& r) { r.mutable_q()->set_shape(2, 48); }, inv,
       "q.shape=[10,4,48]: head_dim=48 is not supported by the cpu backend"},
      {"no query heads", [](auto& r) { r.mutable_q()->set_shape(1, 0); }, inv,
       "num_qo_heads=0 must be in 1..65536"},
      {"no k", [](auto& r) { r.clear_k(); }, inv, "k has no data"},
      {"k of another dtype", [](auto& r) { r.mutable_k()->set_dtype(v1::DTYPE_FLOAT32); }, inv,
       "k.dtype=DTYPE_FLOAT32, expected q's dtype DTYPE_FLOAT16"},
      {"k of another head_dim", [](auto& r) { r.mutable_k()->set_shape(2, 32); }, inv,
       "k.shape=[13,2,32] must be [kv_tokens, num_kv_heads, 64]"},
      {"3 kv heads", [](auto& r) { r.mutable_k()->set_shape(1, 3); }, inv,
       "num_kv_heads=3 does not divide num_qo_heads=4"},
      {"no v", [](auto& r) { r.clear_v(); }, inv, "v has no data"},
      {"v of another shape", [](auto& r) { r.mutable_v()->set_shape(0, 12); }, inv,
       "v.shape=[12,2,64], expected [13,2,64]"},
      {"inline k of the wrong size",
       [](auto& r) { r.mutable_k()->mutable_inline_data()->pop_back(); }, inv, "k.inline_data has"},
      {"no qo_indptr", [](auto& r) { r.clear_qo_indptr(); }, inv, "qo_indptr has 0 entries"},
      {"kv_indptr of another length", [](auto& r) { r.mutable_kv_indptr()->RemoveLast(); }, inv,
       "kv_indptr has 2 entries, qo_indptr 3"},
      {"qo_indptr not from 0", [](auto& r) { r.set_qo_indptr(0, 1); }, inv,
       "qo_indptr[0]=1 must be 0"},
      {"kv_indptr decreasing", [](auto& r) { r.set_kv_indptr(1, 14); }, inv,
       "kv_indptr[2]=13 is less than kv_indptr[1]=14"},
      {"qo_indptr short of q", [](auto& r) { r.set_qo_indptr(2, 9); }, inv,
       "qo_indptr[2]=9 must equal q.shape[0]=10"},
      {"kv_indptr past k", [](auto& r) { r.set_kv_indptr(2, 14); }, inv,
       "kv_indptr[2]=14 must equal k.shape[0]=13"},
      {"rope_offsets of another length", [](auto& r) { r.mutable_options()->add_rope_offsets(1); },
       inv, "options.rope_offsets has 3"},
      {"negative window", [](auto& r) { r.mutable_options()->set_window_left(-4); }, inv,
       "window_left"},
      {"lse without return_lse", [](auto& r) { r.mutable_options()->set_return_lse(false); }, inv,
       "lse is set but options.return_lse is false"},
      {"async with o inline",
       [](auto& r) {
         r.set_completion(v1::COMPLETION_ASYNC);
         r.clear_o();
       },
       inv, "completion=COMPLETION_ASYNC needs o in a registered buffer"},
      {"unknown event", [](auto& r) { r.set_wait_event_id("nope"); }, absl::StatusCode::kNotFound,
       "wait_event_id='nope'"},
      {"o of another shape", [](auto& r) { r.mutable_o()->set_shape(0, 9); }, inv,
       "o.shape=[9,4,64], expected [10,4,64]"},
      {"sinks of the wrong length",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({1.f, 2.f, 3.f});
       },
       inv, "sinks.shape=[3], expected [4]"},
      {"sinks of the wrong dtype",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({1.f, 2.f});
         r.mutable_sinks()->set_dtype(v1::DTYPE_FLOAT16);
         r.mutable_sinks()->set_shape(0, 4);
       },
       inv, "sinks.dtype=DTYPE_FLOAT16, expected DTYPE_FLOAT32"},
      {"sinks of the wrong inline size",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({1.f, 2.f, 3.f, 4.f});
         r.mutable_sinks()->mutable_inline_data()->pop_back();
       },
       inv, "sinks.inline_data has 15 bytes, expected 16"},
      {"a NaN sink",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({1.f, 2.f, NAN, 4.f});
       },
       inv, "sinks[2]=nan must be finite"},
      {"an infinite sink",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({-INFINITY, 2.f, 3.f, 4.f});
       },
       inv, "sinks[0]=-inf must be finite"},
      {"a huge sink",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({1.f, 2.f, 3.f, 1e31f});
       },
       inv, "sinks[3]=1e+31 must be finite with |sinks[h]| <= 1e+30"},
      {"sinks past the buffer's end",
       [&](auto& r) {
         *r.mutable_sinks() = FloatVector({});
         r.mutable_sinks()->set_shape(0, 4);
         r.mutable_sinks()->mutable_buffer()->set_buffer_id(*buffer);
         r.mutable_sinks()->mutable_buffer()->set_offset_bytes(o_bytes + lse_bytes - 8);
       },
       absl::StatusCode::kOutOfRange, "sinks.buffer: offset_bytes="},
      {"sinks misaligned in the buffer",
       [&](auto& r) {
         *r.mutable_sinks() = FloatVector({});
         r.mutable_sinks()->set_shape(0, 4);
         r.mutable_sinks()->mutable_buffer()->set_buffer_id(*buffer);
         r.mutable_sinks()->mutable_buffer()->set_offset_bytes(2);
       },
       inv, "sinks.buffer"},
      {"sinks in an unknown buffer",
       [](auto& r) {
         *r.mutable_sinks() = FloatVector({});
         r.mutable_sinks()->set_shape(0, 4);
         r.mutable_sinks()->mutable_buffer()->set_buffer_id("b-nope");
       },
       absl::StatusCode::kNotFound, "sinks.buffer.buffer_id='b-nope'"},
      {"lse past the buffer's end",
       [&](auto& r) { r.mutable_lse()->mutable_buffer()->set_offset_bytes(o_bytes + 8); },
       absl::StatusCode::kOutOfRange, "lse.buffer: offset_bytes="},
  };
  for (const Case& c : cases) {
    v1::RunRaggedRequest r = good;
    c.mutate(r);
    std::memset(shm.data(), 0x7f, shm.size());
    const absl::Status status = core->RunRagged(s, r).status();
    EXPECT_EQ(status.code(), c.code) << c.what << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.what;
    bool untouched = true;
    for (size_t i = 0; i < shm.size(); ++i) untouched = untouched && shm.data()[i] == 0x7f;
    EXPECT_TRUE(untouched) << c.what << ": a refused run wrote its outputs";
  }
  // No query rows at all.
  v1::RunRaggedRequest empty = RaggedRequest("", k, k);
  empty.mutable_q()->set_shape(0, 0);
  empty.clear_qo_indptr();
  for (int32_t x : {0, 0, 0}) empty.add_qo_indptr(x);
  EXPECT_STATUS(core->RunRagged(s, empty).status(), kInvalidArgument,
                HasSubstr("q.shape[0]=0: the batch has no query rows"));
}

TEST(CoreRaggedRunTest, RepliesAndPlansAreBounded) {
  CoreOptions options;
  options.max_message_bytes = 4096;
  options.max_session_host_bytes = 64 << 10;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  std::mt19937 rng(21);
  const std::string q = RandomBytes(rng, DType::kFloat16, 10 * kQoHeads * kDim);
  const std::string k = RandomBytes(rng, DType::kFloat16, 13 * kKvHeads * kDim);
  EXPECT_STATUS(core->RunRagged(s, RaggedRequest(q, k, k)).status(), kResourceExhausted,
                HasSubstr("RunRagged: the reply would be up to"),
                HasSubstr("--max_message_bytes=4096"));
  // K/V of 16384 rows (in a buffer, they could be much more): the plan's host bookkeeping
  // counts against --max_session_host_bytes before anything is built.
  v1::RunRaggedRequest big;
  *big.mutable_q() = Inline(DType::kFloat16, {1, 1, 16}, std::string(32, '\0'));
  *big.mutable_k() = Inline(DType::kFloat16, {16384, 1, 16}, std::string(16384 * 32, '\0'));
  *big.mutable_v() = *big.mutable_k();
  for (int32_t x : {0, 1}) big.add_qo_indptr(x);
  for (int32_t x : {0, 16384}) big.add_kv_indptr(x);
  EXPECT_STATUS(core->RunRagged(s, big).status(), kResourceExhausted, HasSubstr("ragged run plan"));
  EXPECT_EQ(core->Stats().host_bytes, 0u);
}

}  // namespace
}  // namespace attnd::server::testing
