// MergeState and MergeStates through Core (server/core/commands/merges.cc, the rules in
// request_rules.cc): results against a float64 merge for every dtype, empty states (-inf) and
// no states at all, the natural-log LSE convention (Run's lse over two parts of the K/V merges
// into Run over all of it), in-place merges through shared memory, and every bad field refused
// with its name while the outputs stay untouched.
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
#include "merge_reference.h"
#include "server/core/core.h"
#include "server/core/dtype_convert.h"

namespace attnd::server::testing {
namespace {

using kernels::DType;
using test_support::ExpectMergedClose;
using test_support::NaiveMergeStateList;
using test_support::NaiveMergeStates;
using ::testing::HasSubstr;

// An inline tensor of `values` stored as `dtype`.
v1::Tensor Inline(DType dtype, const std::vector<int64_t>& shape,
                  const std::vector<float>& values) {
  v1::Tensor t;
  t.set_dtype(ToProtoDType(dtype));
  for (int64_t d : shape) t.add_shape(d);
  std::string bytes(values.size() * kernels::DTypeSize(dtype), '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    kernels::StoreFromFloat(bytes.data(), dtype, i, values[i]);
  }
  t.set_inline_data(std::move(bytes));
  return t;
}

// The elements of an inline tensor as float.
std::vector<float> Values(const v1::Tensor& t) {
  const auto dtype = FromProtoDType(t.dtype(), "t");
  EXPECT_TRUE(dtype.ok());
  const size_t n = t.inline_data().size() / kernels::DTypeSize(*dtype);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = kernels::LoadAsFloat(t.inline_data().data(), *dtype, i);
  return out;
}

// Values rounded to dtype, as the daemon reads them.
std::vector<float> Rounded(DType dtype, std::vector<float> values) {
  for (float& x : values) {
    char bytes[4];
    kernels::StoreFromFloat(bytes, dtype, 0, x);
    x = kernels::LoadAsFloat(bytes, dtype, 0);
  }
  return values;
}

std::vector<float> Random(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

double Tolerance(DType dtype) {
  return dtype == DType::kFloat32 ? 1e-5 : dtype == DType::kFloat16 ? 2e-3 : 1e-2;
}

TEST(CoreMergeTest, MergeStateMatchesAFloat64MergeInEveryDtype) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  std::mt19937 rng(5);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    const int64_t rows = 5, heads = 3, dim = 12, cells = rows * heads;
    const std::vector<float> va = Rounded(dtype, Random(rng, cells * dim, -2, 2));
    const std::vector<float> vb = Rounded(dtype, Random(rng, cells * dim, -2, 2));
    std::vector<float> sa = Random(rng, cells, -30, 30), sb = Random(rng, cells, -30, 30);
    sa[0] = -INFINITY;          // only b
    sb[1] = -INFINITY;          // only a
    sa[2] = sb[2] = -INFINITY;  // neither: v = 0, s = -inf
    sa[3] = sb[3] = 0.f;        // s = ln 2: the natural log (base 2 would give 1)
    v1::MergeStateRequest request;
    *request.mutable_v_a() = Inline(dtype, {rows, heads, dim}, va);
    *request.mutable_s_a() = Inline(DType::kFloat32, {rows, heads}, sa);
    *request.mutable_v_b() = Inline(dtype, {rows, heads, dim}, vb);
    *request.mutable_s_b() = Inline(DType::kFloat32, {rows, heads}, sb);
    auto response = core->MergeState(s, request);
    ASSERT_TRUE(response.ok()) << response.status();

    const auto ref = NaiveMergeStateList<float, float>({va, vb}, {sa, sb}, cells, dim);
    const std::string what = kernels::DTypeName(dtype);
    EXPECT_EQ(response->v().dtype(), ToProtoDType(dtype));
    EXPECT_THAT(response->v().shape(), ::testing::ElementsAre(rows, heads, dim));
    EXPECT_THAT(response->s().shape(), ::testing::ElementsAre(rows, heads));
    ExpectMergedClose(Values(response->v()), ref.v, Tolerance(dtype), what + " v");
    ExpectMergedClose(Values(response->s()), ref.s, 1e-6, what + " s");
    EXPECT_FLOAT_EQ(Values(response->s())[3], std::log(2.f));

    request.set_omit_s(true);
    auto without_s = core->MergeState(s, request);
    ASSERT_TRUE(without_s.ok()) << without_s.status();
    EXPECT_FALSE(without_s->has_s());
    EXPECT_EQ(without_s->v().inline_data(), response->v().inline_data());
  }
}

TEST(CoreMergeTest, MergeStatesMatchesAFloat64MergeWithEmptyAndNoStates) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  std::mt19937 rng(6);
  for (int64_t states : {int64_t{1}, int64_t{4}, int64_t{0}}) {
    const int64_t rows = 3, heads = 2, dim = 8, cells = rows * heads;
    // v [rows][states][heads][dim], s [rows][states][heads].
    const std::vector<float> v =
        Rounded(DType::kBFloat16, Random(rng, rows * states * heads * dim, -3, 3));
    std::vector<float> sv = Random(rng, rows * states * heads, -10, 10);
    if (states > 0) {
      sv[0] = -INFINITY;  // row 0, state 0, head 0 empty
      for (int64_t i = 0; i < states; ++i) sv[(1 * states + i) * heads + 1] = -INFINITY;
    }
    v1::MergeStatesRequest request;
    *request.mutable_v() = Inline(DType::kBFloat16, {rows, states, heads, dim}, v);
    *request.mutable_s() = Inline(DType::kFloat32, {rows, states, heads}, sv);
    auto response = core->MergeStates(s, request);
    ASSERT_TRUE(response.ok()) << response.status();

    std::vector<float> v_cells, s_cells;  // [row][head][state][dim] for NaiveMergeStates
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < states; ++i) {
          const int64_t in = (r * states + i) * heads + h;
          v_cells.insert(v_cells.end(), v.begin() + in * dim, v.begin() + (in + 1) * dim);
          s_cells.push_back(sv[in]);
        }
      }
    }
    const auto ref = NaiveMergeStates(v_cells, s_cells, cells, states, dim);
    const std::string what = "num_states=" + std::to_string(states);
    ExpectMergedClose(Values(response->v()), ref.v, Tolerance(DType::kBFloat16), what);
    ExpectMergedClose(Values(response->s()), ref.s, 1e-6, what);
    EXPECT_EQ(Values(response->s())[1 * heads + 1], -INFINITY) << what;  // all empty, or none
  }
  // No rows: nothing to do, empty results.
  v1::MergeStatesRequest empty;
  *empty.mutable_v() = Inline(DType::kFloat16, {0, 2, 4, 8}, {});
  *empty.mutable_s() = Inline(DType::kFloat32, {0, 2, 4}, {});
  auto response = core->MergeStates(s, empty);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->v().shape(), ::testing::ElementsAre(0, 4, 8));
  EXPECT_TRUE(response->v().inline_data().empty());
}

// attnd's LSE is the natural-log one Run returns: Run's (o, lse) over two parts of the keys
// merge into Run over all of them.
TEST(CoreMergeTest, RunsOverTwoPartsOfTheKeysMergeIntoTheRunOverAll) {
  auto core = MakeCore();
  const std::string s = Open(*core);
  const v1::PoolInfo pool = CreatePool(
      *core, s, {.num_kv_heads = 2, .head_dim = 64, .page_size = 4, .kv_dtype = v1::DTYPE_FLOAT32});
  const std::vector<int32_t> p = Allocate(*core, s, pool.pool_id(), 3);
  std::mt19937 rng(8);
  // Fill 12 tokens (3 full pages) through a prefill plan that appends them.
  auto fill = core->CreatePlan(s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 4,
                                              {{p[0], p[1], p[2]}}, {4}, {12}));
  ASSERT_TRUE(fill.ok()) << fill.status();
  v1::RunRequest append;
  append.set_plan_id(fill->plan_id());
  *append.mutable_q() = Inline(DType::kFloat32, {12, 4, 64}, Random(rng, 12 * 4 * 64, -1, 1));
  *append.mutable_k() = Inline(DType::kFloat32, {12, 2, 64}, Random(rng, 12 * 2 * 64, -1, 1));
  *append.mutable_v() = Inline(DType::kFloat32, {12, 2, 64}, Random(rng, 12 * 2 * 64, -1, 1));
  ASSERT_TRUE(core->Run(s, append).ok());

  // The same 3 query rows against pages {p0}, {p1, p2} and all three (not causal).
  const v1::Tensor q = Inline(DType::kFloat32, {3, 4, 64}, Random(rng, 3 * 4 * 64, -2, 2));
  auto run = [&](const std::vector<int32_t>& pages) -> v1::RunResponse {
    auto plan = core->CreatePlan(
        s, PlanRequest(pool.pool_id(), v1::ATTENTION_KIND_PREFILL, 4, {pages}, {4}, {3}));
    EXPECT_TRUE(plan.ok()) << plan.status();
    v1::RunRequest r;
    r.set_plan_id(plan->plan_id());
    *r.mutable_q() = q;
    r.mutable_options()->set_return_lse(true);
    r.mutable_options()->set_logits_soft_cap(30.f);
    auto response = core->Run(s, r);
    EXPECT_TRUE(response.ok()) << response.status();
    return *response;
  };
  const v1::RunResponse a = run({p[0]}), b = run({p[1], p[2]}), all = run({p[0], p[1], p[2]});
  v1::MergeStateRequest merge;
  *merge.mutable_v_a() = a.o();
  *merge.mutable_s_a() = a.lse();
  *merge.mutable_v_b() = b.o();
  *merge.mutable_s_b() = b.lse();
  auto merged = core->MergeState(s, merge);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const std::vector<float> o_all = Values(all.o()), lse_all = Values(all.lse());
  ExpectMergedClose(Values(merged->v()), std::vector<double>(o_all.begin(), o_all.end()), 1e-5,
                    "o");
  ExpectMergedClose(Values(merged->s()), std::vector<double>(lse_all.begin(), lse_all.end()), 1e-5,
                    "lse");
}

// Shared-memory buffers: inputs and outputs as slices, in place, and every refusal.
class CoreMergeBufferTest : public ::testing::Test {
 protected:
  static constexpr int64_t kRows = 4, kHeads = 2, kDim = 16, kCells = kRows * kHeads;
  static constexpr uint64_t kV = kCells * kDim * 2, kS = kCells * 4;  // fp16 v, fp32 s bytes
  // Layout of the buffer: v_a, s_a, v_b, s_b, v_out, s_out, 256-byte aligned.
  static constexpr uint64_t kVa = 0, kSa = 256, kVb = 512, kSb = 768, kVo = 1024, kSo = 1280;
  static constexpr uint64_t kSize = 2048;

  void SetUp() override {
    core_ = MakeCore();
    peer_ = AddTestPeer(*core_);
    session_ = Open(*core_, SessionBinding::kStream, "test", 0, peer_);
    std::mt19937 rng(1);
    va_ = Rounded(DType::kFloat16, Random(rng, kCells * kDim, -1, 1));
    vb_ = Rounded(DType::kFloat16, Random(rng, kCells * kDim, -1, 1));
    sa_ = Random(rng, kCells, -5, 5);
    sb_ = Random(rng, kCells, -5, 5);
    sb_[3] = -INFINITY;
    Write(kVa, DType::kFloat16, va_);
    Write(kSa, DType::kFloat32, sa_);
    Write(kVb, DType::kFloat16, vb_);
    Write(kSb, DType::kFloat32, sb_);
    PoisonOutputs();
    auto buffer = RegisterMemfd(*core_, session_, peer_, shm_, kSize);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    buffer_ = *buffer;
  }

  void Write(uint64_t offset, DType dtype, const std::vector<float>& values) {
    for (size_t i = 0; i < values.size(); ++i) {
      kernels::StoreFromFloat(shm_.data() + offset, dtype, i, values[i]);
    }
  }
  void PoisonOutputs() { std::memset(shm_.data() + kVo, 0x7f, kSize - kVo); }
  bool OutputsPoisoned() const {
    for (uint64_t i = kVo; i < kSize; ++i) {
      if (shm_.data()[i] != 0x7f) return false;
    }
    return true;
  }
  std::string Bytes(uint64_t offset, uint64_t size) const {
    return std::string(shm_.data() + offset, size);
  }

  v1::Tensor Slice(v1::DType dtype, const std::vector<int64_t>& shape, uint64_t offset) const {
    v1::Tensor t;
    t.set_dtype(dtype);
    for (int64_t d : shape) t.add_shape(d);
    t.mutable_buffer()->set_buffer_id(buffer_);
    t.mutable_buffer()->set_offset_bytes(offset);
    return t;
  }
  v1::Tensor V(uint64_t offset) const {
    return Slice(v1::DTYPE_FLOAT16, {kRows, kHeads, kDim}, offset);
  }
  v1::Tensor S(uint64_t offset) const { return Slice(v1::DTYPE_FLOAT32, {kRows, kHeads}, offset); }

  // Every input and output in the buffer.
  v1::MergeStateRequest Good() const {
    v1::MergeStateRequest r;
    *r.mutable_v_a() = V(kVa);
    *r.mutable_s_a() = S(kSa);
    *r.mutable_v_b() = V(kVb);
    *r.mutable_s_b() = S(kSb);
    *r.mutable_v_out() = V(kVo);
    *r.mutable_s_out() = S(kSo);
    return r;
  }
  // The same merge with inline tensors, answered inline.
  v1::MergeStateResponse InlineResult() const {
    v1::MergeStateRequest r;
    *r.mutable_v_a() = Inline(DType::kFloat16, {kRows, kHeads, kDim}, va_);
    *r.mutable_s_a() = Inline(DType::kFloat32, {kRows, kHeads}, sa_);
    *r.mutable_v_b() = Inline(DType::kFloat16, {kRows, kHeads, kDim}, vb_);
    *r.mutable_s_b() = Inline(DType::kFloat32, {kRows, kHeads}, sb_);
    auto response = core_->MergeState(session_, r);
    EXPECT_TRUE(response.ok()) << response.status();
    return *response;
  }

  TestMemfd shm_{kSize};
  std::unique_ptr<Core> core_;
  Identity peer_;
  std::string session_;
  std::string buffer_;
  std::vector<float> va_, vb_, sa_, sb_;
};

TEST_F(CoreMergeBufferTest, SlicesInAndOutAndInPlace) {
  const v1::MergeStateResponse expected = InlineResult();
  auto response = core_->MergeState(session_, Good());
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->has_v());  // written to the buffer
  EXPECT_FALSE(response->has_s());
  EXPECT_EQ(Bytes(kVo, kV), expected.v().inline_data());
  EXPECT_EQ(Bytes(kSo, kS), expected.s().inline_data());

  // Async on the CPU backend: done before the reply.
  v1::MergeStateRequest async = Good();
  async.set_completion(v1::COMPLETION_ASYNC);
  PoisonOutputs();
  ASSERT_TRUE(core_->MergeState(session_, async).ok());
  EXPECT_EQ(Bytes(kVo, kV), expected.v().inline_data());

  // In place into a (FlashInfer's merge_state_in_place): v_out = v_a, s_out = s_a.
  v1::MergeStateRequest in_place = Good();
  *in_place.mutable_v_out() = V(kVa);
  *in_place.mutable_s_out() = S(kSa);
  ASSERT_TRUE(core_->MergeState(session_, in_place).ok());
  EXPECT_EQ(Bytes(kVa, kV), expected.v().inline_data());
  EXPECT_EQ(Bytes(kSa, kS), expected.s().inline_data());

  // MergeStates of one state in place: the identity (the state's rows are [rows][1][heads]).
  const std::string before = Bytes(kVb, kV);
  v1::MergeStatesRequest one;
  *one.mutable_v() = Slice(v1::DTYPE_FLOAT16, {kRows, 1, kHeads, kDim}, kVb);
  *one.mutable_s() = Slice(v1::DTYPE_FLOAT32, {kRows, 1, kHeads}, kSb);
  *one.mutable_v_out() = V(kVb);
  one.set_omit_s(true);
  ASSERT_TRUE(core_->MergeStates(session_, one).ok());
  for (int64_t c = 0; c < kCells; ++c) {  // cell 3 was empty in b: it is 0 now
    const std::string got = Bytes(kVb + c * kDim * 2, kDim * 2);
    EXPECT_EQ(got, c == 3 ? std::string(kDim * 2, '\0') : before.substr(c * kDim * 2, kDim * 2))
        << c;
  }
}

TEST_F(CoreMergeBufferTest, EveryBadFieldIsRefusedByNameAndNothingIsWritten) {
  using Mutate = std::function<void(v1::MergeStateRequest&)>;
  struct Case {
    const char* what;
    Mutate mutate;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"no v_a", [](auto& r) { r.clear_v_a(); }, absl::StatusCode::kInvalidArgument,
       "v_a has no data"},
      {"fp8 v_a", [](auto& r) { r.mutable_v_a()->set_dtype(v1::DTYPE_FLOAT8_E4M3); },
       absl::StatusCode::kInvalidArgument, "v_a.dtype=DTYPE_FLOAT8_E4M3 cannot be merged"},
      {"no dtype", [](auto& r) { r.mutable_v_a()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       absl::StatusCode::kInvalidArgument, "v_a.dtype=DTYPE_UNSPECIFIED cannot be merged"},
      {"rank 2", [](auto& r) { r.mutable_v_a()->mutable_shape()->RemoveLast(); },
       absl::StatusCode::kInvalidArgument,
       "v_a.shape=[4,2] must be [seq_len, num_heads, head_dim]"},
      {"head_dim 6", [](auto& r) { r.mutable_v_a()->set_shape(2, 6); },
       absl::StatusCode::kInvalidArgument, "head_dim=6 must be a multiple of 4 in 4..1024"},
      {"head_dim 2048", [](auto& r) { r.mutable_v_a()->set_shape(2, 2048); },
       absl::StatusCode::kInvalidArgument, "head_dim=2048 must be a multiple of 4 in 4..1024"},
      {"no heads", [](auto& r) { r.mutable_v_a()->set_shape(1, 0); },
       absl::StatusCode::kInvalidArgument, "num_heads=0 must be in 1..65536"},
      {"negative seq_len", [](auto& r) { r.mutable_v_a()->set_shape(0, -1); },
       absl::StatusCode::kInvalidArgument, "v_a.shape=[-1,2,16]: seq_len must be >= 0"},
      {"v_b of another shape", [](auto& r) { r.mutable_v_b()->set_shape(0, 3); },
       absl::StatusCode::kInvalidArgument, "v_b.shape=[3,2,16], expected [4,2,16]"},
      {"v_b of another dtype", [](auto& r) { r.mutable_v_b()->set_dtype(v1::DTYPE_BFLOAT16); },
       absl::StatusCode::kInvalidArgument, "v_b.dtype=DTYPE_BFLOAT16, expected DTYPE_FLOAT16"},
      {"fp16 s_a", [](auto& r) { r.mutable_s_a()->set_dtype(v1::DTYPE_FLOAT16); },
       absl::StatusCode::kInvalidArgument, "s_a.dtype=DTYPE_FLOAT16, expected DTYPE_FLOAT32"},
      {"s_b of another shape", [](auto& r) { r.mutable_s_b()->add_shape(1); },
       absl::StatusCode::kInvalidArgument, "s_b.shape=[4,2,1], expected [4,2]"},
      {"inline s_a of the wrong size",
       [](auto& r) {
         *r.mutable_s_a() = Inline(DType::kFloat32, {4, 2}, {1.f});
       },
       absl::StatusCode::kInvalidArgument, "s_a.inline_data has 4 bytes, expected 32"},
      {"inline v_out", [](auto& r) { r.mutable_v_out()->set_inline_data("x"); },
       absl::StatusCode::kInvalidArgument, "v_out.inline_data is set"},
      {"v_out of another shape", [](auto& r) { r.mutable_v_out()->set_shape(2, 8); },
       absl::StatusCode::kInvalidArgument, "v_out.shape=[4,2,8], expected [4,2,16]"},
      {"bf16 s_out", [](auto& r) { r.mutable_s_out()->set_dtype(v1::DTYPE_BFLOAT16); },
       absl::StatusCode::kInvalidArgument, "s_out.dtype=DTYPE_BFLOAT16, expected DTYPE_FLOAT32"},
      {"s_out with omit_s", [](auto& r) { r.set_omit_s(true); }, absl::StatusCode::kInvalidArgument,
       "s_out is set but omit_s is true"},
      {"unknown completion", [](auto& r) { r.set_completion(static_cast<v1::Completion>(7)); },
       absl::StatusCode::kInvalidArgument, "completion=7 is not a Completion value"},
      {"async with v inline",
       [](auto& r) {
         r.set_completion(v1::COMPLETION_ASYNC);
         r.clear_v_out();
       },
       absl::StatusCode::kInvalidArgument, "completion=COMPLETION_ASYNC needs v_out"},
      {"async with s inline",
       [](auto& r) {
         r.set_completion(v1::COMPLETION_ASYNC);
         r.clear_s_out();
       },
       absl::StatusCode::kInvalidArgument, "completion=COMPLETION_ASYNC needs s_out"},
      {"unknown event", [](auto& r) { r.set_wait_event_id("nope"); }, absl::StatusCode::kNotFound,
       "wait_event_id='nope'"},
      {"unknown buffer", [](auto& r) { r.mutable_v_b()->mutable_buffer()->set_buffer_id("b?"); },
       absl::StatusCode::kNotFound, "v_b.buffer.buffer_id='b?' is not a buffer of this session"},
      {"slice past the end",
       [](auto& r) { r.mutable_s_out()->mutable_buffer()->set_offset_bytes(2040); },
       absl::StatusCode::kOutOfRange, "s_out.buffer: offset_bytes=2040 + 32 bytes exceeds"},
      {"odd offset", [](auto& r) { r.mutable_s_b()->mutable_buffer()->set_offset_bytes(770); },
       absl::StatusCode::kInvalidArgument,
       "s_b.buffer.offset_bytes=770 is not a multiple of the element size (4 bytes)"},
      {"v_out over part of v_b",
       [](auto& r) { r.mutable_v_out()->mutable_buffer()->set_offset_bytes(kVb + 64); },
       absl::StatusCode::kInvalidArgument, "v_out (buffer '"},
      {"s_out over v_out",
       [](auto& r) { r.mutable_s_out()->mutable_buffer()->set_offset_bytes(kVo); },
       absl::StatusCode::kInvalidArgument, "s_out (buffer '"},
  };
  for (const Case& c : cases) {
    v1::MergeStateRequest r = Good();
    c.mutate(r);
    PoisonOutputs();
    const absl::Status status = core_->MergeState(session_, r).status();
    EXPECT_EQ(status.code(), c.code) << c.what << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.what;
    EXPECT_TRUE(OutputsPoisoned()) << c.what << ": a refused merge wrote its outputs";
  }
  // The overlap messages name both tensors and where they are.
  v1::MergeStateRequest r = Good();
  r.mutable_v_out()->mutable_buffer()->set_offset_bytes(kVb + 64);
  EXPECT_STATUS(core_->MergeState(session_, r).status(), kInvalidArgument,
                HasSubstr("offset_bytes=576, 256 bytes) overlaps v_b (buffer '"),
                HasSubstr("offset_bytes=512, 256 bytes): an output must be exactly an input's"));
  // And the inputs are untouched by every refusal.
  for (const auto& [offset, values, dtype] :
       {std::tuple{kVa, &va_, DType::kFloat16}, std::tuple{kSb, &sb_, DType::kFloat32}}) {
    for (size_t i = 0; i < values->size(); ++i) {
      EXPECT_EQ(kernels::LoadAsFloat(shm_.data() + offset, dtype, i), (*values)[i]);
    }
  }
}

TEST_F(CoreMergeBufferTest, MergeStatesShapesAreChecked) {
  v1::MergeStatesRequest r;
  *r.mutable_v() = Slice(v1::DTYPE_FLOAT16, {kRows, 1, kHeads, kDim}, kVa);
  *r.mutable_s() = Slice(v1::DTYPE_FLOAT32, {kRows, 1, kHeads}, kSa);
  *r.mutable_v_out() = V(kVo);
  *r.mutable_s_out() = S(kSo);
  ASSERT_TRUE(core_->MergeStates(session_, r).ok());
  v1::MergeStatesRequest bad = r;
  *bad.mutable_v() = V(kVa);
  EXPECT_STATUS(core_->MergeStates(session_, bad).status(), kInvalidArgument,
                HasSubstr("v.shape=[4,2,16] must be [seq_len, num_states, num_heads, head_dim]"));
  bad = r;
  bad.mutable_v()->set_shape(1, -2);
  EXPECT_STATUS(core_->MergeStates(session_, bad).status(), kInvalidArgument,
                HasSubstr("v.shape=[4,-2,2,16]: seq_len and num_states must be >= 0"));
  bad = r;
  bad.mutable_v()->set_shape(0, int64_t{1} << 20);
  bad.mutable_v()->set_shape(1, int64_t{1} << 12);
  EXPECT_STATUS(core_->MergeStates(session_, bad).status(), kInvalidArgument,
                HasSubstr("seq_len * num_states at most 2147483647"));
  bad = r;
  bad.mutable_s()->set_shape(1, 2);
  EXPECT_STATUS(core_->MergeStates(session_, bad).status(), kInvalidArgument,
                HasSubstr("s.shape=[4,2,2], expected [4,1,2]"));
  // v_out over part of s (not v): an output must be exactly an input or apart from it.
  bad = r;
  *bad.mutable_v_out() = V(kSa + 16);
  EXPECT_STATUS(core_->MergeStates(session_, bad).status(), kInvalidArgument,
                HasSubstr("v_out (buffer '"), HasSubstr("overlaps s (buffer '"));
}

TEST(CoreMergeTest, InlineRepliesMustFitTheMessageLimit) {
  CoreOptions options;
  options.max_message_bytes = 4096;
  auto core = MakeCore(options);
  const std::string s = Open(*core);
  v1::MergeStateRequest r;
  const std::vector<float> v(16 * 4 * 16, 0.f), lse(16 * 4, 0.f);
  *r.mutable_v_a() = *r.mutable_v_b() = Inline(DType::kFloat32, {16, 4, 16}, v);
  *r.mutable_s_a() = *r.mutable_s_b() = Inline(DType::kFloat32, {16, 4}, lse);
  EXPECT_STATUS(core->MergeState(s, r).status(), kResourceExhausted,
                HasSubstr("MergeState: the reply would be up to 4608 bytes"),
                HasSubstr("--max_message_bytes=4096"));
  r.set_omit_s(true);  // 4096 bytes of v + the envelope: still over
  EXPECT_EQ(core->MergeState(s, r).status().code(), absl::StatusCode::kResourceExhausted);
  // A session that does not exist.
  EXPECT_EQ(core->MergeState("nope", r).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace attnd::server::testing
