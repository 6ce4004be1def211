// Cascade (shared-prefix) attention on the CPU backend (attnd/kernels/cascade.h): a plan with
// shared levels (groups of requests attending one prefix) and each request's own pages equals
// attention of every request over its concatenated keys (its groups' prefixes, level 0 first,
// then its own), checked against the float64 reference; 2 and 3 levels, decode and
// prefill/append, GQA, soft cap, causal, sinks, an append through the plan, and the options that
// are refused.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/cascade.h"
#include "gtest/gtest.h"

namespace attnd::kernels {
namespace {

using testing::DenseKv;
using testing::MakePagedProblem;
using testing::PagedProblem;
using testing::PagedProblemSpec;

// A cascade batch: levels[l] lists, per group, how many consecutive requests it holds and its
// prefix length; own_lens / qo_lens per request.
struct CascadeCase {
  struct Group {
    int requests;
    int prefix_len;
  };
  std::vector<std::vector<Group>> levels;
  std::vector<int> own_lens;
  std::vector<int> qo_lens = {};  // prefill only
  bool decode = false;
  int group = 4;  // GQA group size
  int head_dim = 64;
  int page_size = 16;
  DType kv_dtype = DType::kFloat16;
  DType q_dtype = DType::kFloat32;
  uint32_t seed = 7;
};

// The pool holds one "segment" per (level, group) prefix, then each request's own keys (all in
// one random problem, so pages are shuffled and unused ones are NaN); the plan's levels and the
// reference's concatenated keys are both made from the segments.
struct CascadeProblem {
  PagedProblem pool;
  PlanSpec spec;
  std::vector<DenseKv> concatenated;  // per request: its prefixes (level order), then its own keys
  std::vector<int> qo_lens;           // per request
};

CascadeProblem MakeCascade(const CascadeCase& c) {
  const int batch = static_cast<int>(c.own_lens.size());
  PagedProblemSpec ps;
  ps.page_size = c.page_size;
  ps.num_kv_heads = 2;
  ps.group = c.group;
  ps.head_dim = c.head_dim;
  ps.kv_dtype = c.kv_dtype;
  ps.q_dtype = c.q_dtype;
  ps.seed = c.seed;
  for (const auto& level : c.levels) {
    for (const auto& g : level) {
      ps.kv_lens.push_back(g.prefix_len);
      ps.qo_lens.push_back(0);  // prefix segments own no query rows
    }
  }
  const int segments = static_cast<int>(ps.kv_lens.size());
  for (int b = 0; b < batch; ++b) {
    ps.kv_lens.push_back(c.own_lens[b]);
    ps.qo_lens.push_back(c.decode ? 1 : c.qo_lens[b]);
  }
  CascadeProblem out;
  out.pool = MakePagedProblem(ps);
  out.qo_lens.assign(ps.qo_lens.begin() + segments, ps.qo_lens.end());
  PagedProblem& p = out.pool;

  PlanSpec& spec = out.spec;
  spec.kind = c.decode ? AttentionKind::kDecode : AttentionKind::kPrefill;
  spec.num_qo_heads = p.num_qo_heads;
  spec.num_kv_heads = ps.num_kv_heads;
  spec.head_dim = ps.head_dim;
  spec.page_size = ps.page_size;
  spec.kv_dtype = ps.kv_dtype;
  // A table over segments [first, first + n) of the problem.
  const auto table = [&](int first, int n, std::vector<int32_t>& indptr,
                         std::vector<int32_t>& indices, std::vector<int32_t>& last) {
    indptr = {0};
    for (int s = first; s < first + n; ++s) {
      indices.insert(indices.end(), p.indices.begin() + p.indptr[s],
                     p.indices.begin() + p.indptr[s + 1]);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(p.last_page_len[s]);
    }
  };
  table(segments, batch, spec.kv_indptr, spec.kv_indices, spec.kv_last_page_len);
  spec.qo_indptr = {0};
  for (int b = 0; b < batch; ++b) {
    spec.qo_indptr.push_back(spec.qo_indptr.back() + (c.decode ? 1 : c.qo_lens[b]));
  }

  out.concatenated.assign(batch, DenseKv{});
  int segment = 0;
  for (const auto& level : c.levels) {
    CascadeLevel& lv = spec.cascade_levels.emplace_back();
    table(segment, static_cast<int>(level.size()), lv.kv_indptr, lv.kv_indices,
          lv.kv_last_page_len);
    lv.qo_indptr = {0};
    int request = 0;
    for (const auto& g : level) {
      for (int r = 0; r < g.requests; ++r, ++request) {
        DenseKv& d = out.concatenated[request];
        const DenseKv& prefix = p.dense[segment];
        d.kv_len += prefix.kv_len;
        d.k.insert(d.k.end(), prefix.k.begin(), prefix.k.end());
        d.v.insert(d.v.end(), prefix.v.begin(), prefix.v.end());
      }
      lv.qo_indptr.push_back(spec.qo_indptr[request]);
      ++segment;
    }
    EXPECT_EQ(request, batch) << "the groups of a level must hold every request";
  }
  for (int b = 0; b < batch; ++b) {
    DenseKv& d = out.concatenated[b];
    const DenseKv& own = p.dense[segments + b];
    d.kv_len += own.kv_len;
    d.k.insert(d.k.end(), own.k.begin(), own.k.end());
    d.v.insert(d.v.end(), own.v.begin(), own.v.end());
  }
  return out;
}

std::unique_ptr<Backend> MakeBackend() {
  auto backend = CreateCpuBackend(CpuBackendOptions{.num_threads = 2});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(*backend);
}

RunArgs ArgsOf(CascadeProblem& c, const PreparedPlan& plan, const AttentionOptions& options) {
  RunArgs args;
  args.plan = &plan;
  args.layer = c.pool.View();
  args.q = c.pool.q.data();
  args.o = c.pool.o.data();
  args.lse = c.pool.lse.data();
  args.q_dtype = c.pool.spec.q_dtype;
  args.options = options;
  return args;
}

// o within a few roundings of the q dtype (the levels' o are rounded to it before the merge).
void ExpectCascadeClose(CascadeProblem& c, const testing::NaiveResult& ref,
                        const std::string& what) {
  const DType dtype = c.pool.spec.q_dtype;
  if (dtype == DType::kFloat32) {
    testing::ExpectOutputsClose(c.pool.o, dtype, ref.o, what);
  } else {
    const double tol = 4 * testing::RoundingEps(dtype) + 1e-4;  // |v| <= 1
    int failures = 0;
    for (size_t i = 0; i < ref.o.size(); ++i) {
      const double x = LoadAsFloat(c.pool.o.data(), dtype, i);
      if (!(std::fabs(x - ref.o[i]) <= tol) && ++failures <= 5) {
        ADD_FAILURE() << what << ": element " << i << " is " << x << ", expected " << ref.o[i];
      }
    }
  }
  testing::ExpectLseClose(c.pool.lse, ref.lse, what);
}

void CheckCase(const CascadeCase& cc, AttentionOptions options, const std::string& what) {
  CascadeProblem c = MakeCascade(cc);
  auto backend = MakeBackend();
  auto plan = backend->Prepare(c.spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_NE(AsCascadePlan(plan->get()), nullptr);
  c.pool.PoisonOutputs();
  ASSERT_TRUE(backend->Attention(ArgsOf(c, **plan, options)).ok());
  const auto ref =
      testing::NaiveAttention(c.concatenated, c.qo_lens, c.pool.q_values, c.pool.num_qo_heads,
                              c.pool.spec.num_kv_heads, c.pool.spec.head_dim, options, {});
  ExpectCascadeClose(c, ref, what);
}

TEST(CascadeTest, TwoLevelDecodeMatchesTheConcatenatedReference) {
  // One group of all five requests over a 3.5-page prefix (a partial last page), GQA 4.
  CascadeCase c{.levels = {{{5, 56}}}, .own_lens = {1, 17, 40, 3, 16}, .decode = true};
  CheckCase(c, {}, "2 levels decode");
  c.group = 1;
  c.q_dtype = DType::kBFloat16;
  c.kv_dtype = DType::kBFloat16;
  CheckCase(c, {}, "2 levels decode, no GQA, bf16");
}

TEST(CascadeTest, ThreeLevelPrefillCausalWithSoftCap) {
  // Level 0: one group of all four; level 1: two groups of two; own pages with 0..9 query rows.
  const CascadeCase c{.levels = {{{4, 32}}, {{2, 20}, {2, 33}}},
                      .own_lens = {9, 24, 5, 16},
                      .qo_lens = {9, 3, 0, 16},
                      .group = 2};
  AttentionOptions options;
  options.causal = true;
  CheckCase(c, options, "3 levels prefill causal");
  options.logits_soft_cap = 5.f;
  options.sm_scale = 0.2f;
  CheckCase(c, options, "3 levels prefill causal, cap, scale");
  options.causal = false;
  CheckCase(c, options, "3 levels prefill non-causal");
}

TEST(CascadeTest, ThreeLevelDecodeWithManyGroupsAndFp16) {
  const CascadeCase c{.levels = {{{3, 16}, {3, 48}}, {{1, 5}, {2, 31}, {3, 64}}},
                      .own_lens = {2, 7, 33, 16, 1, 90},
                      .decode = true,
                      .head_dim = 128,
                      .q_dtype = DType::kFloat16};
  CheckCase(c, {}, "3 levels decode fp16, head_dim 128");
}

TEST(CascadeTest, SinksAreCountedOnce) {
  const CascadeCase c{.levels = {{{3, 40}}}, .own_lens = {5, 18, 30}, .decode = true, .group = 2};
  std::vector<float> sinks(4);
  for (size_t h = 0; h < sinks.size(); ++h) sinks[h] = 0.5f * static_cast<float>(h) - 0.7f;
  AttentionOptions options;
  options.sinks = sinks.data();
  CheckCase(c, options, "2 levels decode with sinks");
}

TEST(CascadeTest, AppendGoesToTheLastLevel) {
  // The own pages' query tokens are appended by the run (k_new / v_new): their slots start as
  // NaN, and the result must equal the reference over the stored values.
  const CascadeCase cc{.levels = {{{2, 32}}}, .own_lens = {6, 20}, .qo_lens = {6, 4}};
  CascadeProblem c = MakeCascade(cc);
  PagedProblem& p = c.pool;
  const int hk = p.spec.num_kv_heads, dim = p.spec.head_dim;
  const size_t row = static_cast<size_t>(hk) * dim;
  std::vector<uint8_t> k_new, v_new;
  for (int b = 0; b < 2; ++b) {
    const int kv_len = cc.own_lens[b], qo_len = cc.qo_lens[b];
    for (int t = kv_len - qo_len; t < kv_len; ++t) {
      const int32_t page = c.spec.kv_indices[c.spec.kv_indptr[b] + t / p.spec.page_size];
      for (int kv_index = 0; kv_index < 2; ++kv_index) {
        std::vector<uint8_t>& dst = kv_index == 0 ? k_new : v_new;
        const size_t elem = DTypeSize(p.spec.kv_dtype);
        const int64_t base = p.SlotOffset(page, kv_index, t % p.spec.page_size, 0);
        uint8_t* slot = p.pool.data() + base * elem;
        dst.insert(dst.end(), slot, slot + row * elem);
        for (size_t e = 0; e < row; ++e) {
          StoreFromFloat(p.pool.data(), p.spec.kv_dtype, base + e,
                         std::numeric_limits<float>::quiet_NaN());
        }
      }
    }
  }
  auto backend = MakeBackend();
  auto plan = backend->Prepare(c.spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  AttentionOptions options;
  options.causal = true;
  RunArgs args = ArgsOf(c, **plan, options);
  args.k_new = k_new.data();
  args.v_new = v_new.data();
  p.PoisonOutputs();
  ASSERT_TRUE(backend->Attention(args).ok());
  const auto ref = testing::NaiveAttention(c.concatenated, c.qo_lens, p.q_values, p.num_qo_heads,
                                           hk, dim, options, {});
  ExpectCascadeClose(c, ref, "append through a cascade plan");
  // AppendKv on the cascade plan writes the own pages too (the same values again).
  EXPECT_TRUE(backend
                  ->AppendKv(**plan, c.pool.View(), k_new.data(), v_new.data(), c.pool.View().dtype,
                             nullptr)
                  .ok());
}

TEST(CascadeTest, RopeAndWindowsAreRefusedAndNothingIsWritten) {
  const CascadeCase cc{.levels = {{{2, 16}}}, .own_lens = {3, 9}, .decode = true};
  CascadeProblem c = MakeCascade(cc);
  auto backend = MakeBackend();
  auto plan = backend->Prepare(c.spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  c.pool.PoisonOutputs();
  const std::vector<uint8_t> before = c.pool.o;
  AttentionOptions rope;
  rope.pos_encoding = PosEncoding::kRopeLlama;
  absl::Status s = backend->Attention(ArgsOf(c, **plan, rope));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("options.pos_encoding"), std::string::npos) << s;
  AttentionOptions window;
  window.window_left = 4;
  s = backend->Attention(ArgsOf(c, **plan, window));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("options.window_left=4"), std::string::npos) << s;
  EXPECT_EQ(std::memcmp(before.data(), c.pool.o.data(), before.size()), 0);
}

TEST(CascadeTest, PrepareRefusesLevelsThatDoNotCoverTheBatch) {
  const CascadeCase cc{.levels = {{{2, 16}}}, .own_lens = {3, 9}, .decode = true};
  CascadeProblem c = MakeCascade(cc);
  auto backend = MakeBackend();
  PlanSpec short_rows = c.spec;
  short_rows.cascade_levels[0].qo_indptr = {0, 1};
  auto plan = backend->Prepare(short_rows, nullptr);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("qo_indptr ends at 1"), std::string::npos)
      << plan.status();
  PlanSpec bad_len = c.spec;
  bad_len.cascade_levels[0].kv_last_page_len = {99};
  plan = backend->Prepare(bad_len, nullptr);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("cascade level 0"), std::string::npos) << plan.status();
}

}  // namespace
}  // namespace attnd::kernels
