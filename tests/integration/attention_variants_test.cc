// Attention variants through the daemon (AttentionOptions: sm_scale, causal, soft cap, sliding
// window, LLaMA RoPE with per-request offsets, LSE), with the separate AppendKv command and the
// "append" prefill shape (kv_len > qo_len), checked against the float64 reference.
#include <cmath>

#include "daemon_fixture.h"
#include "reference_attention.h"

namespace attnd::testing {
namespace {

struct VariantCase {
  std::string name;
  ReferenceOptions options;    // rope_offset is per request: see kRopeOffsets
  bool per_request_offsets = false;
};

void PrintTo(const VariantCase& c, std::ostream* os) { *os << c.name; }

constexpr int kRopeOffsets[2] = {3, 100};

class AttentionVariantsTest : public DaemonTest, public ::testing::WithParamInterface<VariantCase> {
 public:
  static void SetUpTestSuite() { StartDaemon(DaemonOptions{}); }
};

v1::AttentionOptions WireOptions(const VariantCase& c) {
  v1::AttentionOptions o;
  o.set_sm_scale(static_cast<float>(c.options.sm_scale));
  o.set_causal(c.options.causal);
  o.set_logits_soft_cap(static_cast<float>(c.options.soft_cap));
  if (c.options.window_left >= 0) {
    o.set_window_left(c.options.window_left);
    o.set_window_left_set(true);
  }
  if (c.options.rope) {
    o.set_pos_encoding(v1::POS_ENCODING_ROPE_LLAMA);
    o.set_rope_theta(static_cast<float>(c.options.rope_theta));
    o.set_rope_scale(static_cast<float>(c.options.rope_scale));
    if (c.per_request_offsets) {
      o.add_rope_offsets(kRopeOffsets[0]);
      o.add_rope_offsets(kRopeOffsets[1]);
    }
  }
  o.set_return_lse(true);
  return o;
}

TEST_P(AttentionVariantsTest, AppendPrefillAndDecodeMatchReference) {
  const VariantCase& c = GetParam();
  ModelShape shape;
  shape.layers = 2;
  shape.kv_heads = 2;
  shape.qo_heads = 8;
  shape.head_dim = 64;
  shape.page_size = 16;
  auto session = client_->OpenSession("variants");
  ATTND_ASSERT_OK(session);
  client::SessionApi& s = **session;
  auto pool = s.CreatePool(MakePoolSpec(shape, UniqueName("variants")));
  ATTND_ASSERT_OK(pool);
  const std::string pool_id = pool->pool_id();
  const ReferenceShape ref{shape.qo_heads, shape.kv_heads, shape.head_dim};
  const size_t kv_row = static_cast<size_t>(shape.kv_heads) * shape.head_dim;
  const size_t q_row = static_cast<size_t>(shape.qo_heads) * shape.head_dim;
  constexpr int kCapacity = 64;  // tokens per sequence (4 pages)
  std::mt19937 rng(42);

  // Two sequences, 4 pages each; host copies of K/V per layer: [kCapacity][kv_heads][head_dim].
  std::vector<std::vector<int32_t>> pages(2);
  std::vector<std::vector<std::vector<float>>> k(2), v(2);
  for (int b = 0; b < 2; ++b) {
    auto grant = s.AllocatePages(pool_id, kCapacity / shape.page_size);
    ATTND_ASSERT_OK(grant);
    pages[b] = grant->page_ids;
    k[b].assign(shape.layers, std::vector<float>(kCapacity * kv_row, 0.f));
    v[b].assign(shape.layers, std::vector<float>(kCapacity * kv_row, 0.f));
  }
  auto plan_for = [&](v1::AttentionKind kind, std::vector<int> kv_lens, std::vector<int> qo_lens) {
    client::PlanSpec plan;
    plan.pool_id = pool_id;
    plan.kind = kind;
    plan.num_qo_heads = shape.qo_heads;
    plan.kv_indptr = {0};
    plan.qo_indptr = {0};
    for (int b = 0; b < 2; ++b) {
      const int used = (kv_lens[b] + shape.page_size - 1) / shape.page_size;
      plan.kv_indices.insert(plan.kv_indices.end(), pages[b].begin(), pages[b].begin() + used);
      plan.kv_indptr.push_back(static_cast<int32_t>(plan.kv_indices.size()));
      plan.kv_last_page_len.push_back(kv_lens[b] - (used - 1) * shape.page_size);
      plan.qo_indptr.push_back(plan.qo_indptr.back() + qo_lens[b]);
    }
    return plan;
  };
  // Random K/V for the plan's query rows; remembered at kv positions kv_len - qo_len + i.
  auto new_kv = [&](int layer, const std::vector<int>& kv_lens, const std::vector<int>& qo_lens,
                    std::vector<float>* k_rows, std::vector<float>* v_rows) {
    const int rows = qo_lens[0] + qo_lens[1];
    *k_rows = RandomValues(rng, rows * kv_row, shape.kv_dtype);
    *v_rows = RandomValues(rng, rows * kv_row, shape.kv_dtype);
    int r = 0;
    for (int b = 0; b < 2; ++b) {
      for (int i = 0; i < qo_lens[b]; ++i, ++r) {
        const int pos = kv_lens[b] - qo_lens[b] + i;
        std::copy_n(k_rows->begin() + r * kv_row, kv_row, k[b][layer].begin() + pos * kv_row);
        std::copy_n(v_rows->begin() + r * kv_row, kv_row, v[b][layer].begin() + pos * kv_row);
      }
    }
  };
  // Checks o/lse of rows (request b's i-th query at position kv_len - qo_len + i).
  auto check = [&](int layer, const std::vector<int>& kv_lens, const std::vector<int>& qo_lens,
                   const std::vector<float>& q, const client::RunOutput& out, bool causal,
                   const char* phase) {
    const int rows = qo_lens[0] + qo_lens[1];
    ASSERT_EQ(out.o.size(), rows * q_row);
    ASSERT_EQ(out.lse.size(), static_cast<size_t>(rows * shape.qo_heads));
    std::vector<double> o_ref(q_row), lse_ref(shape.qo_heads);
    int r = 0;
    for (int b = 0; b < 2; ++b) {
      ReferenceOptions opt = c.options;
      opt.causal = causal;
      opt.rope_offset = c.per_request_offsets ? kRopeOffsets[b] : 0;
      for (int i = 0; i < qo_lens[b]; ++i, ++r) {
        const int pos = kv_lens[b] - qo_lens[b] + i;
        ReferenceAttentionVariant(ref, &q[r * q_row], pos, k[b][layer], v[b][layer], kv_lens[b],
                                  opt, o_ref.data(), lse_ref.data());
        for (size_t e = 0; e < q_row; ++e) {
          ASSERT_NEAR(out.o[r * q_row + e], o_ref[e], 5e-3)
              << phase << " layer " << layer << " request " << b << " position " << pos;
        }
        for (int h = 0; h < shape.qo_heads; ++h) {
          if (std::isinf(lse_ref[h])) {
            EXPECT_TRUE(std::isinf(out.lse[r * shape.qo_heads + h]));
          } else {
            ASSERT_NEAR(out.lse[r * shape.qo_heads + h], lse_ref[h], 5e-3)
                << phase << " layer " << layer << " request " << b << " position " << pos;
          }
        }
      }
    }
  };
  auto run = [&](const std::string& plan_id, int layer, const std::vector<float>& q, int rows,
                 const std::vector<float>* k_rows, const std::vector<float>* v_rows,
                 bool causal) -> absl::StatusOr<client::RunOutput> {
    client::RunArgs args;
    args.plan_id = plan_id;
    args.layer = layer;
    args.q = *client::MakeTensor(q, {rows, shape.qo_heads, shape.head_dim}, shape.q_dtype);
    if (k_rows != nullptr) {
      args.k = *client::MakeTensor(*k_rows, {rows, shape.kv_heads, shape.head_dim}, shape.kv_dtype);
      args.v = *client::MakeTensor(*v_rows, {rows, shape.kv_heads, shape.head_dim}, shape.kv_dtype);
    }
    args.options = WireOptions(c);
    args.options.set_causal(causal);
    return s.RunAndDecode(std::move(args));
  };

  // 1. Fill 29 and 30 tokens with the separate AppendKv command (a prefill plan, no run).
  {
    const std::vector<int> kv_lens = {29, 30}, qo_lens = {29, 30};
    auto plan = s.CreatePlan(plan_for(v1::ATTENTION_KIND_PREFILL, kv_lens, qo_lens));
    ATTND_ASSERT_OK(plan);
    EXPECT_EQ(plan->qo_tokens, 59);
    EXPECT_EQ(plan->kv_tokens, 59);
    for (int layer = 0; layer < shape.layers; ++layer) {
      std::vector<float> kr, vr;
      new_kv(layer, kv_lens, qo_lens, &kr, &vr);
      ATTND_ASSERT_OK(s.AppendKv(
          plan->plan_id, layer, *client::MakeTensor(kr, {59, shape.kv_heads, shape.head_dim}, shape.kv_dtype),
          *client::MakeTensor(vr, {59, shape.kv_heads, shape.head_dim}, shape.kv_dtype)));
    }
    ATTND_ASSERT_OK(s.DeletePlan(plan->plan_id));
  }
  // 2. Append-prefill: request 0 queries its last 5 tokens (rewritten), request 1 appends 10 new
  //    tokens after its 30; K/V by AppendKv, then a Run without k/v.
  {
    const std::vector<int> kv_lens = {29, 40}, qo_lens = {5, 10};
    auto plan = s.CreatePlan(plan_for(v1::ATTENTION_KIND_PREFILL, kv_lens, qo_lens));
    ATTND_ASSERT_OK(plan);
    for (int layer = 0; layer < shape.layers; ++layer) {
      std::vector<float> kr, vr;
      new_kv(layer, kv_lens, qo_lens, &kr, &vr);
      ATTND_ASSERT_OK(s.AppendKv(
          plan->plan_id, layer, *client::MakeTensor(kr, {15, shape.kv_heads, shape.head_dim}, shape.kv_dtype),
          *client::MakeTensor(vr, {15, shape.kv_heads, shape.head_dim}, shape.kv_dtype)));
      const std::vector<float> q = RandomValues(rng, 15 * q_row, shape.q_dtype);
      auto out = run(plan->plan_id, layer, q, 15, nullptr, nullptr, c.options.causal);
      ATTND_ASSERT_OK(out);
      check(layer, kv_lens, qo_lens, q, *out, c.options.causal, "append-prefill");
      if (HasFatalFailure()) return;
    }
    ATTND_ASSERT_OK(s.DeletePlan(plan->plan_id));
  }
  // 3. Two decode steps, K/V appended by the run.
  std::vector<int> kv_lens = {29, 40};
  for (int step = 0; step < 2; ++step) {
    for (int& len : kv_lens) ++len;
    const std::vector<int> qo_lens = {1, 1};
    client::PlanSpec spec = plan_for(v1::ATTENTION_KIND_DECODE, kv_lens, qo_lens);
    spec.qo_indptr.clear();
    auto plan = s.CreatePlan(spec);
    ATTND_ASSERT_OK(plan);
    for (int layer = 0; layer < shape.layers; ++layer) {
      std::vector<float> kr, vr;
      new_kv(layer, kv_lens, qo_lens, &kr, &vr);
      const std::vector<float> q = RandomValues(rng, 2 * q_row, shape.q_dtype);
      auto out = run(plan->plan_id, layer, q, 2, &kr, &vr, /*causal=*/false);
      ATTND_ASSERT_OK(out);
      check(layer, kv_lens, qo_lens, q, *out, /*causal=*/false, "decode");
      if (HasFatalFailure()) return;
    }
    ATTND_ASSERT_OK(s.DeletePlan(plan->plan_id));
  }
}

VariantCase Case(std::string name, ReferenceOptions options, bool per_request_offsets = false) {
  return VariantCase{std::move(name), options, per_request_offsets};
}

ReferenceOptions Opts(double sm_scale, bool causal, double cap, int window, bool rope,
                      double theta = 1e4, double rope_scale = 1) {
  ReferenceOptions o;
  o.sm_scale = sm_scale;
  o.causal = causal;
  o.soft_cap = cap;
  o.window_left = window;
  o.rope = rope;
  o.rope_theta = theta;
  o.rope_scale = rope_scale;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Options, AttentionVariantsTest,
    ::testing::Values(Case("causal", Opts(0, true, 0, -1, false)),
                      Case("not_causal", Opts(0, false, 0, -1, false)),
                      Case("sm_scale", Opts(0.3, true, 0, -1, false)),
                      Case("soft_cap", Opts(1.0, true, 2.0, -1, false)),
                      Case("window7", Opts(0, true, 0, 7, false)),
                      Case("window0", Opts(0, true, 0, 0, false)),
                      Case("window5_not_causal", Opts(0, false, 0, 5, false)),
                      Case("rope", Opts(0, true, 0, -1, true)),
                      Case("rope_offsets", Opts(0, true, 0, -1, true, 500.0, 2.0), true),
                      Case("everything", Opts(0.5, true, 3.0, 9, true, 1e4, 1.5), true)),
    [](const ::testing::TestParamInfo<VariantCase>& info) { return info.param.name; });

}  // namespace
}  // namespace attnd::testing
