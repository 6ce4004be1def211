// PagedAttention of the CPU reference against the naive float64 attention, over awkward sizes,
// every option, and every storage dtype. Outputs are poisoned (NaN) before each run and every
// element is checked; unused cache slots hold NaN, so reading one shows up as a failure.
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

using testing::DescribeSpec;
using testing::ExpectLseClose;
using testing::ExpectOutputsClose;
using testing::MakePagedProblem;
using testing::NaiveAttention;
using testing::PagedProblem;
using testing::PagedProblemSpec;

struct RunOptions {
  bool with_lse = true;
  bool rope_offsets = false;
  int num_threads = 3;
};

// Builds the problem, runs PagedAttention and checks o (and lse) against the naive reference.
void CheckAgainstNaive(const PagedProblemSpec& spec, AttentionOptions options,
                       RunOptions run = {}) {
  PagedProblem p = MakePagedProblem(spec);
  std::vector<int32_t> offsets;
  if (run.rope_offsets) {
    std::mt19937 rng(spec.seed + 7);
    for (size_t b = 0; b < spec.kv_lens.size(); ++b) offsets.push_back(rng() % 5000);
    options.rope_offsets = offsets.data();
  }
  const std::string what = DescribeSpec(spec, options);
  SCOPED_TRACE(what);
  p.PoisonOutputs();
  ASSERT_TRUE(PagedAttention(p.Params(options, run.with_lse), run.num_threads).ok());
  const testing::NaiveResult ref =
      NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, spec.num_kv_heads,
                     spec.head_dim, options, offsets);
  ExpectOutputsClose(p.o, spec.q_dtype, ref.o, what);
  if (run.with_lse) {
    ExpectLseClose(p.lse, ref.lse, what);
  } else {
    for (float x : p.lse) ASSERT_TRUE(std::isnan(x)) << "lse written although null";
  }
}

std::vector<int> RandomLengths(int batch, int lo, int hi, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int> lens(batch);
  for (int& x : lens) x = dist(rng);
  return lens;
}

TEST(PagedAttention, DecodeAwkwardLengthsPageSizesAndGroups) {
  for (int kv_len : {1, 7, 97, 1000}) {
    for (int page_size : {1, 16, 64}) {
      for (int group : {1, 4, 8}) {
        PagedProblemSpec spec;
        spec.decode = true;
        spec.kv_lens = {kv_len, std::max(1, kv_len / 3), kv_len + 1};
        spec.page_size = page_size;
        spec.num_kv_heads = kv_len >= 1000 ? 1 : 2;
        spec.group = group;
        spec.seed = kv_len * 100 + page_size * 10 + group;
        CheckAgainstNaive(spec, AttentionOptions{});
      }
    }
  }
}

TEST(PagedAttention, DecodeRandomBatchesAllDtypes) {
  std::mt19937 rng(11);
  for (int batch : {1, 5, 64}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      PagedProblemSpec spec;
      spec.decode = true;
      spec.kv_lens = RandomLengths(batch, 1, 200, rng);
      spec.page_size = 16;
      spec.num_kv_heads = 2;
      spec.group = 4;
      spec.head_dim = 128;
      spec.kv_dtype = dtype;
      spec.q_dtype = dtype;
      spec.seed = rng();
      CheckAgainstNaive(spec, AttentionOptions{});
    }
  }
}

TEST(PagedAttention, MixedQueryAndKvDtypes) {
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {40, 70};
  spec.qo_lens = {40, 5};
  spec.kv_dtype = DType::kBFloat16;
  spec.q_dtype = DType::kFloat32;
  AttentionOptions options;
  options.causal = true;
  CheckAgainstNaive(spec, options);
  spec.kv_dtype = DType::kFloat32;
  spec.q_dtype = DType::kFloat16;
  CheckAgainstNaive(spec, options);
}

TEST(PagedAttention, Fp8KvStorage) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {1, 33, 200};
  spec.kv_dtype = DType::kFloat8E4M3;
  spec.q_dtype = DType::kFloat16;
  CheckAgainstNaive(spec, AttentionOptions{});
}

TEST(PagedAttention, Fp8KvStorageWithScales) {
  // Per-KV-head scales: the stored value times its head's scale is what attention sees (the
  // naive reference gets the dense K/V multiplied by the scales), both fp8 formats, decode and
  // prefill, GQA.
  for (const DType dtype : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
    for (const bool decode : {true, false}) {
      PagedProblemSpec spec;
      spec.decode = decode;
      spec.kv_lens = {1, 33, 200};
      spec.qo_lens = {1, 20, 64};
      spec.num_kv_heads = 2;
      spec.group = 4;
      spec.kv_dtype = dtype;
      spec.q_dtype = DType::kFloat32;
      PagedProblem p = MakePagedProblem(spec);
      const std::vector<float> k_scale = {0.25f, 3.f}, v_scale = {1.5f, 0.125f};
      for (testing::DenseKv& d : p.dense) {
        for (size_t e = 0; e < d.k.size(); ++e) {
          const size_t h = e / spec.head_dim % spec.num_kv_heads;
          d.k[e] *= k_scale[h];
          d.v[e] *= v_scale[h];
        }
      }
      AttentionOptions options;
      options.causal = true;
      PagedAttentionParams params = p.Params(options, true);
      params.kv.k_scale = k_scale.data();
      params.kv.v_scale = v_scale.data();
      p.PoisonOutputs();
      ASSERT_TRUE(PagedAttention(params, 2).ok());
      const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads,
                                      spec.num_kv_heads, spec.head_dim, options, {});
      const std::string what = absl::StrCat(DTypeName(dtype), decode ? " decode" : " prefill");
      ExpectOutputsClose(p.o, spec.q_dtype, ref.o, what);
      ExpectLseClose(p.lse, ref.lse, what);
    }
  }
  // Scales are refused on other dtypes and when not finite and > 0.
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {5};
  PagedProblem p = MakePagedProblem(spec);
  const std::vector<float> good = {1.f, 2.f}, bad = {1.f, -2.f};
  PagedAttentionParams params = p.Params({}, true);
  params.kv.k_scale = good.data();
  EXPECT_NE(PagedAttention(params).message().find("for fp8 storage"), std::string::npos);
  p.spec.kv_dtype = DType::kFloat8E5M2;
  params.kv.dtype = DType::kFloat8E5M2;
  params.kv.v_scale = bad.data();
  EXPECT_NE(PagedAttention(params).message().find("kv.v_scale[1]=-2 must be finite and > 0"),
            std::string::npos)
      << PagedAttention(params);
}

TEST(PagedAttention, PrefillCausalAndNotWithAppendOffsets) {
  std::mt19937 rng(21);
  for (bool causal : {false, true}) {
    for (int page_size : {1, 16, 64}) {
      for (int group : {1, 4, 8}) {
        PagedProblemSpec spec;
        spec.decode = false;
        // Full prefill (qo == kv), append (qo < kv), single-token append, and lengths that do
        // not fill a page or a tile.
        spec.kv_lens = {97, 60, 7, 33};
        spec.qo_lens = {97, 23, 1, 17};
        spec.page_size = page_size;
        spec.num_kv_heads = 2;
        spec.group = group;
        spec.seed = rng();
        AttentionOptions options;
        options.causal = causal;
        CheckAgainstNaive(spec, options);
      }
    }
  }
}

TEST(PagedAttention, PrefillLongCausalAppend) {
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {1000, 300};
  spec.qo_lens = {200, 300};
  spec.page_size = 64;
  spec.num_kv_heads = 1;
  spec.group = 2;
  spec.head_dim = 64;
  AttentionOptions options;
  options.causal = true;
  CheckAgainstNaive(spec, options);
}

TEST(PagedAttention, PrefillRandomBatchAllDtypes) {
  std::mt19937 rng(31);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    PagedProblemSpec spec;
    spec.decode = false;
    const int batch = 1 + rng() % 12;
    spec.kv_lens = RandomLengths(batch, 1, 120, rng);
    for (int len : spec.kv_lens) spec.qo_lens.push_back(1 + rng() % len);
    spec.kv_dtype = spec.q_dtype = dtype;
    spec.group = 4;
    spec.seed = rng();
    AttentionOptions options;
    options.causal = true;
    CheckAgainstNaive(spec, options);
  }
}

TEST(PagedAttention, RopeLlamaDecodeAndPrefillWithOffsetsAndScale) {
  for (bool decode : {true, false}) {
    for (bool offsets : {false, true}) {
      PagedProblemSpec spec;
      spec.decode = decode;
      spec.kv_lens = {1, 97, 300};
      spec.qo_lens = {1, 30, 300};
      spec.head_dim = 128;
      spec.group = 4;
      spec.kv_dtype = spec.q_dtype = DType::kFloat32;
      spec.seed = 41 + offsets;
      AttentionOptions options;
      options.causal = true;
      options.pos_encoding = PosEncoding::kRopeLlama;
      options.rope_theta = 5e5f;
      options.rope_scale = offsets ? 4.f : 1.f;
      CheckAgainstNaive(spec, options, RunOptions{.rope_offsets = offsets});
    }
  }
  // bf16 storage with the default theta.
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {1000};
  spec.num_kv_heads = 1;
  spec.kv_dtype = spec.q_dtype = DType::kBFloat16;
  AttentionOptions options;
  options.pos_encoding = PosEncoding::kRopeLlama;
  CheckAgainstNaive(spec, options);
}

TEST(PagedAttention, RopeWithHugeOffsetsIsComputedWithoutTableAndAgrees) {
  // Offsets 0 and 2e9 span too many positions for the cos/sin table, so every rotation is
  // computed on the fly; request 0 must come out bit for bit as when it runs alone (tabulated).
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {70, 40};
  spec.qo_lens = {20, 40};
  spec.kv_dtype = spec.q_dtype = DType::kFloat32;
  AttentionOptions options;
  options.causal = true;
  options.pos_encoding = PosEncoding::kRopeLlama;
  PagedProblem p = MakePagedProblem(spec);
  std::vector<int32_t> offsets = {0, 2000000000};
  options.rope_offsets = offsets.data();
  p.PoisonOutputs();
  ASSERT_TRUE(PagedAttention(p.Params(options, true)).ok());
  const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, spec.num_kv_heads,
                                  spec.head_dim, options, offsets);
  ExpectOutputsClose(p.o, spec.q_dtype, ref.o, "huge rope offsets");
  ExpectLseClose(p.lse, ref.lse, "huge rope offsets");

  PagedAttentionParams alone = p.Params(options, true);
  alone.kv.batch_size = alone.qo.batch_size = 1;
  std::vector<uint8_t> o_alone(p.o.size());
  std::vector<float> lse_alone(p.lse.size());
  alone.qo.o = o_alone.data();
  alone.qo.lse = lse_alone.data();
  ASSERT_TRUE(PagedAttention(alone).ok());
  const size_t rows0 = 20 * p.num_qo_heads;
  EXPECT_EQ(0, memcmp(o_alone.data(), p.o.data(), rows0 * spec.head_dim * sizeof(float)));
  EXPECT_EQ(0, memcmp(lse_alone.data(), p.lse.data(), rows0 * sizeof(float)));
}

TEST(PagedAttention, LogitsSoftCap) {
  for (bool decode : {true, false}) {
    PagedProblemSpec spec;
    spec.decode = decode;
    spec.kv_lens = {50, 129};
    spec.qo_lens = {50, 64};
    spec.q_amplitude = 8;  // large logits, so the cap bends them
    spec.kv_dtype = spec.q_dtype = DType::kFloat32;
    AttentionOptions options;
    options.causal = !decode;
    options.logits_soft_cap = 5.f;
    options.sm_scale = 0.3f;
    CheckAgainstNaive(spec, options);
  }
}

TEST(PagedAttention, SlidingWindow) {
  for (int window : {0, 1, 15, 64, 500}) {
    for (bool decode : {true, false}) {
      for (bool causal : {true, false}) {
        if (decode && !causal) continue;
        PagedProblemSpec spec;
        spec.decode = decode;
        spec.kv_lens = {7, 97, 260};
        spec.qo_lens = {7, 40, 70};
        spec.page_size = 16;
        spec.group = 2;
        spec.seed = window * 3 + causal;
        AttentionOptions options;
        options.causal = causal;
        options.window_left = window;
        CheckAgainstNaive(spec, options);
      }
    }
  }
}

TEST(PagedAttention, EverythingAtOnce) {
  std::mt19937 rng(51);
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    PagedProblemSpec spec;
    spec.decode = false;
    spec.kv_lens = RandomLengths(6, 1, 150, rng);
    for (int len : spec.kv_lens) spec.qo_lens.push_back(1 + rng() % len);
    spec.page_size = 16;
    spec.num_kv_heads = 2;
    spec.group = 8;
    spec.head_dim = 64;
    spec.kv_dtype = spec.q_dtype = dtype;
    spec.q_amplitude = 4;
    spec.seed = rng();
    AttentionOptions options;
    options.causal = true;
    options.pos_encoding = PosEncoding::kRopeLlama;
    options.logits_soft_cap = 30.f;
    options.window_left = 20;
    CheckAgainstNaive(spec, options, RunOptions{.rope_offsets = true});
  }
}

TEST(PagedAttention, OtherHeadDimsAndHndLayout) {
  for (int head_dim : {8, 40, 256}) {
    for (bool hnd : {false, true}) {
      PagedProblemSpec spec;
      spec.decode = false;
      spec.kv_lens = {33, 70};
      spec.qo_lens = {33, 9};
      spec.head_dim = head_dim;
      spec.hnd = hnd;
      AttentionOptions options;
      options.causal = true;
      options.pos_encoding = PosEncoding::kRopeLlama;
      CheckAgainstNaive(spec, options);
    }
  }
}

TEST(PagedAttention, WithoutLse) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {10, 20};
  CheckAgainstNaive(spec, AttentionOptions{}, RunOptions{.with_lse = false});
}

TEST(PagedAttention, RowsThatSeeNothingGetZeroAndMinusInfinity) {
  // Request 1 has no pages (kv_len 0); request 2 has more query rows than keys, so with a causal
  // mask its first rows (negative positions) see nothing.
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {5, 0, 3};
  spec.qo_lens = {5, 2, 6};
  AttentionOptions options;
  options.causal = true;
  PagedProblem p = MakePagedProblem(spec);
  p.PoisonOutputs();
  ASSERT_TRUE(PagedAttention(p.Params(options, true)).ok());
  const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, spec.num_kv_heads,
                                  spec.head_dim, options, {});
  ExpectOutputsClose(p.o, spec.q_dtype, ref.o, "empty rows");
  ExpectLseClose(p.lse, ref.lse, "empty rows");
  // Rows 5, 6 (request 1) and 7, 8, 9 (request 2, positions -3..-1) are empty.
  testing::ExpectEmptyRows(p, {5, 6, 7, 8, 9}, [](int) { return -INFINITY; });
  EXPECT_NE(p.lse[10 * p.num_qo_heads], -INFINITY);  // position 0 sees key 0
}

// Sinks of num_qo_heads heads in [-amplitude, amplitude], some above every logit of a row.
std::vector<float> RandomSinks(int num_qo_heads, float amplitude, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-amplitude, amplitude);
  std::vector<float> sinks(num_qo_heads);
  for (float& x : sinks) x = dist(rng);
  return sinks;
}

TEST(PagedAttention, AttentionSinksWithGqaSoftCapWindowAndCausal) {
  std::mt19937 rng(77);
  struct Case {
    bool decode, causal;
    float cap;
    int window, group;
    DType dtype;
  };
  for (const Case& c : {Case{true, true, 0.f, -1, 4, DType::kFloat32},
                        Case{true, true, 20.f, 9, 8, DType::kBFloat16},
                        Case{false, true, 0.f, -1, 2, DType::kFloat16},
                        Case{false, false, 0.f, -1, 1, DType::kFloat32},
                        Case{false, true, 10.f, 12, 4, DType::kFloat32},
                        Case{false, false, 30.f, 30, 8, DType::kBFloat16}}) {
    PagedProblemSpec spec;
    spec.decode = c.decode;
    spec.kv_lens = {1, 40, 130, 17};
    spec.qo_lens = {1, 40, 70, 5};
    spec.group = c.group;
    spec.kv_dtype = spec.q_dtype = c.dtype;
    spec.q_amplitude = 4;
    spec.seed = rng();
    const std::vector<float> sinks = RandomSinks(spec.num_kv_heads * spec.group, 6.f, rng);
    AttentionOptions options;
    options.causal = c.causal;
    options.logits_soft_cap = c.cap;
    options.window_left = c.window;
    options.sinks = sinks.data();
    CheckAgainstNaive(spec, options);
    options.pos_encoding = PosEncoding::kRopeLlama;
    CheckAgainstNaive(spec, options, RunOptions{.rope_offsets = true});
  }
}

TEST(PagedAttention, SinksOfRowsThatSeeNothingGiveZeroAndTheSink) {
  // As RowsThatSeeNothingGetZeroAndMinusInfinity, with sinks: the empty rows' lse is the sink.
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {5, 0, 3};
  spec.qo_lens = {5, 2, 6};
  spec.group = 2;
  std::mt19937 rng(5);
  PagedProblem p = MakePagedProblem(spec);
  const std::vector<float> sinks = RandomSinks(p.num_qo_heads, 3.f, rng);
  AttentionOptions options;
  options.causal = true;
  options.sinks = sinks.data();
  p.PoisonOutputs();
  ASSERT_TRUE(PagedAttention(p.Params(options, true)).ok());
  const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, spec.num_kv_heads,
                                  spec.head_dim, options, {});
  ExpectOutputsClose(p.o, spec.q_dtype, ref.o, "empty rows with sinks");
  ExpectLseClose(p.lse, ref.lse, "empty rows with sinks");
  testing::ExpectEmptyRows(p, {5, 6, 7, 8, 9}, [&](int h) { return sinks[h]; });
}

TEST(PagedAttention, SinkLseIsThatOfTheWholeSoftmax) {
  // lse with sinks = log(exp(lse without) + exp(sink)), and o shrinks by exp(lse_without - lse).
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {33, 70};
  spec.group = 4;
  spec.kv_dtype = spec.q_dtype = DType::kFloat32;
  PagedProblem p = MakePagedProblem(spec);
  std::mt19937 rng(9);
  const std::vector<float> sinks = RandomSinks(p.num_qo_heads, 4.f, rng);
  ASSERT_TRUE(PagedAttention(p.Params(AttentionOptions{}, true)).ok());
  const std::vector<float> lse_plain = p.lse;
  const std::vector<uint8_t> o_plain = p.o;
  AttentionOptions options;
  options.sinks = sinks.data();
  p.PoisonOutputs();
  ASSERT_TRUE(PagedAttention(p.Params(options, true)).ok());
  for (int64_t row = 0; row < p.qo_nnz; ++row) {
    for (int h = 0; h < p.num_qo_heads; ++h) {
      const int64_t i = row * p.num_qo_heads + h;
      const double whole = std::log(std::exp(static_cast<double>(lse_plain[i])) +
                                    std::exp(static_cast<double>(sinks[h])));
      EXPECT_NEAR(p.lse[i], whole, 1e-5) << row << " " << h;
      const double shrink = std::exp(lse_plain[i] - whole);
      for (int d = 0; d < spec.head_dim; ++d) {
        const int64_t e = i * spec.head_dim + d;
        EXPECT_NEAR(LoadAsFloat(p.o.data(), spec.q_dtype, e),
                    LoadAsFloat(o_plain.data(), spec.q_dtype, e) * shrink, 1e-6);
      }
    }
  }
}

TEST(PagedAttention, NanSinkPoisonsItsHeadOnly) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {10};
  spec.num_kv_heads = 1;
  spec.group = 2;
  spec.kv_dtype = spec.q_dtype = DType::kFloat32;
  PagedProblem p = MakePagedProblem(spec);
  const std::vector<float> sinks = {NAN, 0.5f};
  AttentionOptions options;
  options.sinks = sinks.data();
  ASSERT_TRUE(PagedAttention(p.Params(options, true)).ok());
  EXPECT_TRUE(std::isnan(p.lse[0]));
  EXPECT_TRUE(std::isnan(LoadAsFloat(p.o.data(), spec.q_dtype, 0)));
  EXPECT_TRUE(std::isfinite(p.lse[1]));
}

TEST(PagedAttention, ResultsDoNotDependOnThreadCount) {
  PagedProblemSpec spec;
  spec.decode = false;
  spec.kv_lens = {300, 97, 1};
  spec.qo_lens = {100, 97, 1};
  spec.group = 4;
  spec.kv_dtype = spec.q_dtype = DType::kFloat32;
  AttentionOptions options;
  options.causal = true;
  options.window_left = 70;
  PagedProblem p = MakePagedProblem(spec);
  ASSERT_TRUE(PagedAttention(p.Params(options, true), 1).ok());
  const std::vector<uint8_t> o1 = p.o;
  const std::vector<float> lse1 = p.lse;
  for (int threads : {2, 7, 0}) {
    p.PoisonOutputs();
    ASSERT_TRUE(PagedAttention(p.Params(options, true), threads).ok());
    EXPECT_EQ(p.o, o1) << threads << " threads";
    EXPECT_EQ(0, memcmp(p.lse.data(), lse1.data(), lse1.size() * sizeof(float)));
  }
}

TEST(PagedAttention, NanInputsReachTheOutput) {
  PagedProblemSpec spec;
  spec.decode = true;
  spec.kv_lens = {10};
  spec.num_kv_heads = 1;
  spec.kv_dtype = spec.q_dtype = DType::kFloat32;
  PagedProblem p = MakePagedProblem(spec);
  static_cast<float*>(static_cast<void*>(p.q.data()))[3] = NAN;
  ASSERT_TRUE(PagedAttention(p.Params(AttentionOptions{}, true)).ok());
  EXPECT_TRUE(std::isnan(p.lse[0]));
  EXPECT_TRUE(std::isnan(LoadAsFloat(p.o.data(), spec.q_dtype, 0)));
}

// ---- Parameter validation -------------------------------------------------------------------

class PagedAttentionValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    PagedProblemSpec spec;
    spec.decode = false;
    spec.kv_lens = {20, 5};
    spec.qo_lens = {4, 5};
    spec.group = 2;
    problem_ = MakePagedProblem(spec);
  }
  // Expects INVALID_ARGUMENT mentioning `field`, and no output written.
  void ExpectRejected(const PagedAttentionParams& params, const std::string& field) {
    problem_.PoisonOutputs();
    const absl::Status status = PagedAttention(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field << ": " << status;
    EXPECT_NE(status.message().find(field), std::string::npos) << status;
    for (size_t i = 0; i < problem_.lse.size(); ++i) ASSERT_TRUE(std::isnan(problem_.lse[i]));
  }
  PagedAttentionParams Good() { return problem_.Params(AttentionOptions{}, true); }
  PagedProblem problem_;
};

TEST_F(PagedAttentionValidation, AcceptsTheGoodParams) { EXPECT_TRUE(PagedAttention(Good()).ok()); }

TEST_F(PagedAttentionValidation, RejectsBadParams) {
  {
    auto p = Good();
    p.kv.data = nullptr;
    ExpectRejected(p, "kv.data");
  }
  {
    auto p = Good();
    p.qo.q = nullptr;
    ExpectRejected(p, "qo.q");
  }
  {
    auto p = Good();
    p.qo.num_qo_heads = 3;  // kv heads = 2
    ExpectRejected(p, "num_qo_heads");
  }
  {
    auto p = Good();
    p.kv.num_kv_heads = 0;
    ExpectRejected(p, "num_kv_heads");
  }
  {
    auto p = Good();
    p.kv.head_dim = 4096;
    ExpectRejected(p, "head_dim");
  }
  {
    auto p = Good();
    p.qo.batch_size = 1;
    ExpectRejected(p, "batch_size");
  }
  {
    auto p = Good();
    std::vector<int32_t> indices(problem_.indices);
    indices[1] = p.kv.num_pages;
    p.kv.indices = indices.data();
    ExpectRejected(p, "kv.indices[1]");
  }
  {
    auto p = Good();
    std::vector<int32_t> last(problem_.last_page_len);
    last[0] = p.kv.page_size + 1;
    p.kv.last_page_len = last.data();
    ExpectRejected(p, "last_page_len[0]");
    last[0] = 0;
    ExpectRejected(p, "last_page_len[0]");
  }
  {
    auto p = Good();
    std::vector<int32_t> qo_indptr = {0, 5, 4};
    p.qo.qo_indptr = qo_indptr.data();
    ExpectRejected(p, "qo_indptr");
  }
  {
    auto p = Good();
    p.kv.token_stride = 0;
    ExpectRejected(p, "strides");
  }
  {
    auto p = Good();
    p.qo.q_dtype = DType::kFloat8E4M3;
    ExpectRejected(p, "q_dtype");
  }
  {
    auto p = Good();
    p.kv.dtype = static_cast<DType>(42);
    ExpectRejected(p, "kv.dtype");
  }
  {
    auto p = Good();
    p.options.pos_encoding = PosEncoding::kRopeLlama;
    p.options.rope_theta = 0.f;
    ExpectRejected(p, "rope_theta");
  }
  {
    auto p = Good();
    p.options.logits_soft_cap = -1.f;
    ExpectRejected(p, "logits_soft_cap");
  }
  {
    auto p = Good();
    p.options.window_left = -2;
    ExpectRejected(p, "window_left");
  }
}

}  // namespace
}  // namespace attnd::kernels::cpu
