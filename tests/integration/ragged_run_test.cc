// RunRagged over the wire (C++ client, Session stream and unary sessions): prefill/append over
// K/V passed as tensors (no pool), inline and from shared memory, checked against the float64
// reference with causal masks, a window, soft cap and RoPE with per-request offsets; its LSE
// merges with MergeState like Run's; bad input names the field and the session carries on.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "daemon_fixture.h"
#include "reference_attention.h"

namespace attnd::testing {
namespace {

struct Batch {
  std::vector<int> qo_lens, kv_lens;
  int qo_heads = 8, kv_heads = 2, dim = 64;
  std::vector<float> q, k, v;  // [tokens][heads][dim], rounded to the dtype
  std::vector<int32_t> qo_indptr = {0}, kv_indptr = {0};
};

Batch MakeBatch(std::mt19937& rng, std::vector<int> qo_lens, std::vector<int> kv_lens,
                v1::DType dtype) {
  Batch b;
  b.qo_lens = std::move(qo_lens);
  b.kv_lens = std::move(kv_lens);
  for (size_t i = 0; i < b.qo_lens.size(); ++i) {
    b.qo_indptr.push_back(b.qo_indptr.back() + b.qo_lens[i]);
    b.kv_indptr.push_back(b.kv_indptr.back() + b.kv_lens[i]);
  }
  b.q = RandomValues(rng, static_cast<size_t>(b.qo_indptr.back()) * b.qo_heads * b.dim, dtype);
  b.k = RandomValues(rng, static_cast<size_t>(b.kv_indptr.back()) * b.kv_heads * b.dim, dtype);
  b.v = RandomValues(rng, static_cast<size_t>(b.kv_indptr.back()) * b.kv_heads * b.dim, dtype);
  return b;
}

// A one-request batch's keys split after the first `keys`: the batches over each part (the same
// queries).
std::pair<Batch, Batch> SplitKeys(const Batch& all, int keys) {
  Batch first = all, second = all;
  const size_t kv_row = static_cast<size_t>(all.kv_heads) * all.dim;
  const int rest = all.kv_lens[0] - keys;
  first.kv_lens = {keys};
  first.kv_indptr = {0, keys};
  first.k.resize(keys * kv_row);
  first.v.resize(keys * kv_row);
  second.kv_lens = {rest};
  second.kv_indptr = {0, rest};
  second.k.erase(second.k.begin(), second.k.begin() + keys * kv_row);
  second.v.erase(second.v.begin(), second.v.begin() + keys * kv_row);
  return {std::move(first), std::move(second)};
}

// The float64 reference of every query row: o [qo_tokens][qo_heads][dim], lse
// [qo_tokens][qo_heads].
void Reference(const Batch& b, ReferenceOptions opt, const std::vector<int>& rope_offsets,
               std::vector<double>* o, std::vector<double>* lse) {
  const ReferenceShape shape{b.qo_heads, b.kv_heads, b.dim};
  const size_t q_row = static_cast<size_t>(b.qo_heads) * b.dim;
  const size_t kv_row = static_cast<size_t>(b.kv_heads) * b.dim;
  o->assign(b.q.size(), 0.0);
  lse->assign(static_cast<size_t>(b.qo_indptr.back()) * b.qo_heads, 0.0);
  for (size_t r = 0; r < b.qo_lens.size(); ++r) {
    const std::vector<float> k(b.k.begin() + b.kv_indptr[r] * kv_row,
                               b.k.begin() + b.kv_indptr[r + 1] * kv_row);
    const std::vector<float> v(b.v.begin() + b.kv_indptr[r] * kv_row,
                               b.v.begin() + b.kv_indptr[r + 1] * kv_row);
    if (!rope_offsets.empty()) opt.rope_offset = rope_offsets[r];
    for (int i = 0; i < b.qo_lens[r]; ++i) {
      const size_t row = static_cast<size_t>(b.qo_indptr[r]) + i;
      ReferenceAttentionVariant(shape, &b.q[row * q_row], b.kv_lens[r] - b.qo_lens[r] + i, k, v,
                                b.kv_lens[r], opt, &(*o)[row * q_row], &(*lse)[row * b.qo_heads]);
    }
  }
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& ref, double tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isinf(ref[i])
                        ? got[i] == ref[i]
                        : std::fabs(got[i] - ref[i]) <= tol * (1 + std::fabs(ref[i]));
    if (!ok && ++bad <= 5) ADD_FAILURE() << what << " [" << i << "] " << got[i] << " vs " << ref[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

class RaggedRunTest : public DaemonTest, public ::testing::WithParamInterface<bool> {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }

 protected:
  // A stream-bound session, or a unary one (GetParam() true).
  std::unique_ptr<client::SessionApi> OpenSession(const std::string& name) {
    return OpenSessionOn(GetParam(), name);
  }

  static client::RunRaggedArgs Args(const Batch& b, v1::DType dtype) {
    client::RunRaggedArgs args;
    const int64_t qo = b.qo_indptr.back(), kv = b.kv_indptr.back();
    args.q = *client::MakeTensor(b.q, {qo, b.qo_heads, b.dim}, dtype);
    args.k = *client::MakeTensor(b.k, {kv, b.kv_heads, b.dim}, dtype);
    args.v = *client::MakeTensor(b.v, {kv, b.kv_heads, b.dim}, dtype);
    args.qo_indptr = b.qo_indptr;
    args.kv_indptr = b.kv_indptr;
    args.options.set_return_lse(true);
    return args;
  }
};

INSTANTIATE_TEST_SUITE_P(Transports, RaggedRunTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Unary" : "Stream"; });

TEST_P(RaggedRunTest, PrefillAndAppendOverRaggedKvMatchTheReference) {
  auto session = OpenSession("ragged");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(31);
  struct Variant {
    const char* name;
    ReferenceOptions options;
    std::vector<int> rope_offsets;
  };
  ReferenceOptions causal;
  causal.causal = true;
  ReferenceOptions window = causal;
  window.window_left = 9;
  window.soft_cap = 15;
  ReferenceOptions rope = causal;
  rope.rope = true;
  rope.rope_theta = 5e5;
  const std::vector<Variant> variants = {{"causal", causal, {}},
                                         {"not causal", ReferenceOptions{}, {}},
                                         {"window 9 + soft cap 15", window, {}},
                                         {"rope with offsets", rope, {4, 0, 100}}};
  for (v1::DType dtype : {v1::DTYPE_FLOAT16, v1::DTYPE_BFLOAT16}) {
    // Prefill (qo = kv), append (kv > qo) and a decode-like row (qo = 1).
    const Batch b = MakeBatch(rng, {17, 5, 1}, {17, 40, 23}, dtype);
    for (const Variant& var : variants) {
      const std::string what = std::string(client::DTypeName(dtype)) + " " + var.name;
      client::RunRaggedArgs args = Args(b, dtype);
      args.options.set_causal(var.options.causal);
      args.options.set_logits_soft_cap(static_cast<float>(var.options.soft_cap));
      if (var.options.window_left >= 0) {
        args.options.set_window_left(var.options.window_left);
        args.options.set_window_left_set(true);
      }
      if (var.options.rope) {
        args.options.set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
        args.options.set_rope_theta(static_cast<float>(var.options.rope_theta));
        for (int off : var.rope_offsets) args.options.add_rope_offsets(off);
      }
      auto out = session->RunRaggedAndDecode(args);
      ATTND_ASSERT_OK(out);
      std::vector<double> ref_o, ref_lse;
      Reference(b, var.options, var.rope_offsets, &ref_o, &ref_lse);
      const double tol = dtype == v1::DTYPE_FLOAT16 ? 4e-3 : 3e-2;
      ExpectClose(out->o, ref_o, tol, what + " o");
      ExpectClose(out->lse, ref_lse, 2e-3, what + " lse");
    }
  }
}

// The keys of a request split in two ragged runs, merged by MergeState: the run over all keys.
TEST_P(RaggedRunTest, TwoRunsOverHalvesOfTheKeysMergeIntoOne) {
  auto session = OpenSession("ragged-merge");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(32);
  const Batch all = MakeBatch(rng, {6}, {50}, v1::DTYPE_FLOAT32);
  const auto [first, second] = SplitKeys(all, 20);
  auto a = session->RunRagged(Args(first, v1::DTYPE_FLOAT32));
  auto b = session->RunRagged(Args(second, v1::DTYPE_FLOAT32));
  auto whole = session->RunRaggedAndDecode(Args(all, v1::DTYPE_FLOAT32));
  ATTND_ASSERT_OK(a);
  ATTND_ASSERT_OK(b);
  ATTND_ASSERT_OK(whole);
  client::MergeStateArgs merge;
  merge.v_a = a->o();
  merge.s_a = a->lse();
  merge.v_b = b->o();
  merge.s_b = b->lse();
  auto merged = session->MergeStateAndDecode(merge);
  ATTND_ASSERT_OK(merged);
  ExpectClose(merged->v, std::vector<double>(whole->o.begin(), whole->o.end()), 1e-5, "o");
  ExpectClose(merged->s, std::vector<double>(whole->lse.begin(), whole->lse.end()), 1e-5, "lse");
}

// Attention sinks through the C++ client (RunRaggedArgs.sinks) against the float64 reference with
// the sink folded in (lse_s = ln(exp(lse) + exp(sink)), o_s = o exp(lse - lse_s)), and the merge
// convention of the proto: the halves run without sinks, merged, then merged with the sink's own
// state (v = 0, s = sink) give the run over all keys with sinks.
TEST_P(RaggedRunTest, SinksMatchTheReferenceAndMergeInOnce) {
  auto session = OpenSession("ragged-sinks");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(34);
  const std::vector<float> sinks = {0.5f, -1.f, 2.f, -3.f, 1.f, 0.f, 4.f, -0.5f};  // [qo_heads]
  const auto fold = [&](std::vector<double>& o, std::vector<double>& lse, int heads, int dim) {
    for (size_t i = 0; i < lse.size(); ++i) {
      const double sink = sinks[i % heads];
      const double whole = std::isinf(lse[i]) ? sink : std::log(std::exp(lse[i]) + std::exp(sink));
      const double keep = std::isinf(lse[i]) ? 0 : std::exp(lse[i] - whole);
      for (int d = 0; d < dim; ++d) o[i * dim + d] *= keep;
      lse[i] = whole;
    }
  };
  const Batch b = MakeBatch(rng, {17, 5, 1}, {17, 40, 23}, v1::DTYPE_FLOAT16);
  client::RunRaggedArgs args = Args(b, v1::DTYPE_FLOAT16);
  args.options.set_causal(true);
  args.sinks = *client::MakeTensor(sinks, {b.qo_heads}, v1::DTYPE_FLOAT32);
  auto out = session->RunRaggedAndDecode(args);
  ATTND_ASSERT_OK(out);
  ReferenceOptions causal;
  causal.causal = true;
  std::vector<double> ref_o, ref_lse;
  Reference(b, causal, {}, &ref_o, &ref_lse);
  fold(ref_o, ref_lse, b.qo_heads, b.dim);
  ExpectClose(out->o, ref_o, 4e-3, "o with sinks");
  ExpectClose(out->lse, ref_lse, 2e-3, "lse with sinks");

  const Batch all = MakeBatch(rng, {6}, {50}, v1::DTYPE_FLOAT32);
  const auto [first, second] = SplitKeys(all, 20);
  auto a = session->RunRagged(Args(first, v1::DTYPE_FLOAT32));
  auto c = session->RunRagged(Args(second, v1::DTYPE_FLOAT32));
  client::RunRaggedArgs whole_args = Args(all, v1::DTYPE_FLOAT32);
  whole_args.sinks = args.sinks;
  auto whole = session->RunRaggedAndDecode(whole_args);
  ATTND_ASSERT_OK(a);
  ATTND_ASSERT_OK(c);
  ATTND_ASSERT_OK(whole);
  client::MergeStateArgs merge;
  merge.v_a = a->o();
  merge.s_a = a->lse();
  merge.v_b = c->o();
  merge.s_b = c->lse();
  auto halves = session->MergeState(merge);
  ATTND_ASSERT_OK(halves);
  const int64_t rows = all.qo_indptr.back();
  std::vector<float> sink_s;  // [rows, qo_heads]: the sink as a state with v = 0
  for (int64_t r = 0; r < rows; ++r) sink_s.insert(sink_s.end(), sinks.begin(), sinks.end());
  client::MergeStateArgs with_sink;
  with_sink.v_a = halves->v();
  with_sink.s_a = halves->s();
  with_sink.v_b = *client::MakeTensor(std::vector<float>(rows * all.qo_heads * all.dim, 0.f),
                                      {rows, all.qo_heads, all.dim}, v1::DTYPE_FLOAT32);
  with_sink.s_b = *client::MakeTensor(sink_s, {rows, all.qo_heads}, v1::DTYPE_FLOAT32);
  auto merged = session->MergeStateAndDecode(with_sink);
  ATTND_ASSERT_OK(merged);
  ExpectClose(merged->v, std::vector<double>(whole->o.begin(), whole->o.end()), 1e-5, "o");
  ExpectClose(merged->s, std::vector<double>(whole->lse.begin(), whole->lse.end()), 1e-5, "lse");
}

TEST_P(RaggedRunTest, SharedMemorySlices) {
  auto session = OpenSession("ragged-shm");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(33);
  const Batch b = MakeBatch(rng, {3, 4}, {9, 4}, v1::DTYPE_FLOAT16);
  const int64_t qo = b.qo_indptr.back(), kv = b.kv_indptr.back();
  const uint64_t q_bytes = b.q.size() * 2, kv_bytes = b.k.size() * 2;
  const uint64_t k_off = q_bytes, v_off = k_off + kv_bytes, o_off = v_off + kv_bytes;
  const uint64_t size = o_off + q_bytes;
  auto region = client::SharedMemoryRegion::Create(UniqueName("ragged"), size);
  ATTND_ASSERT_OK(region);
  char* base = (*region)->data();
  ATTND_ASSERT_OK(client::EncodeFloats(b.q, v1::DTYPE_FLOAT16, {base, q_bytes}));
  ATTND_ASSERT_OK(client::EncodeFloats(b.k, v1::DTYPE_FLOAT16, {base + k_off, kv_bytes}));
  ATTND_ASSERT_OK(client::EncodeFloats(b.v, v1::DTYPE_FLOAT16, {base + v_off, kv_bytes}));
  auto buffer = session->RegisterSharedMemory(**region, size);
  ATTND_ASSERT_OK(buffer);
  client::RunRaggedArgs inline_args = Args(b, v1::DTYPE_FLOAT16);
  inline_args.options.set_causal(true);
  auto expected = session->RunRagged(inline_args);
  ATTND_ASSERT_OK(expected);
  client::RunRaggedArgs sliced = inline_args;
  sliced.options.set_return_lse(false);
  sliced.q = client::MakeBufferTensor(*buffer, 0, {qo, b.qo_heads, b.dim}, v1::DTYPE_FLOAT16);
  sliced.k = client::MakeBufferTensor(*buffer, k_off, {kv, b.kv_heads, b.dim}, v1::DTYPE_FLOAT16);
  sliced.v = client::MakeBufferTensor(*buffer, v_off, {kv, b.kv_heads, b.dim}, v1::DTYPE_FLOAT16);
  sliced.o = client::MakeBufferTensor(*buffer, o_off, {qo, b.qo_heads, b.dim}, v1::DTYPE_FLOAT16);
  auto written = session->RunRagged(sliced);
  ATTND_ASSERT_OK(written);
  EXPECT_FALSE(written->has_o());
  EXPECT_EQ(std::string(base + o_off, q_bytes), expected->o().inline_data());
}

TEST_P(RaggedRunTest, BadInputNamesTheFieldAndTheSessionCarriesOn) {
  auto session = OpenSession("ragged-bad");
  ASSERT_NE(session, nullptr);
  std::mt19937 rng(34);
  const Batch b = MakeBatch(rng, {2, 3}, {4, 3}, v1::DTYPE_FLOAT16);
  client::RunRaggedArgs args = Args(b, v1::DTYPE_FLOAT16);
  args.kv_indptr = {0, 4, 6};
  EXPECT_TRUE(StatusIs(session->RunRagged(args), absl::StatusCode::kInvalidArgument,
                       {"kv_indptr[2]=6 must equal k.shape[0]=7"}));
  args = Args(b, v1::DTYPE_FLOAT16);
  args.k.set_dtype(v1::DTYPE_BFLOAT16);
  EXPECT_TRUE(StatusIs(session->RunRagged(args), absl::StatusCode::kInvalidArgument,
                       {"k.dtype=DTYPE_BFLOAT16, expected q's dtype DTYPE_FLOAT16"}));
  args = Args(b, v1::DTYPE_FLOAT16);
  args.qo_indptr = {0, 5};
  EXPECT_TRUE(StatusIs(session->RunRagged(args), absl::StatusCode::kInvalidArgument,
                       {"kv_indptr has 3 entries, qo_indptr 2"}));
  ATTND_EXPECT_OK(session->RunRagged(Args(b, v1::DTYPE_FLOAT16)));
  ExpectServing();
}

}  // namespace
}  // namespace attnd::testing
