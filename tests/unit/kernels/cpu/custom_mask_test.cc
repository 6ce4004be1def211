// Custom masks (attnd/kernels/custom_mask.h) and the CPU reference's use of them: the packing,
// the packed bits -> row-word image against the dense masks bit by bit, its refusals, and
// PagedAttention with a mask (tree masks on a prefix, random masks, rows that see nothing) against
// the naive float64 attention, alone and with GQA, causal, windows, soft cap, RoPE and sinks; then
// a plan with a mask through the CPU backend (Prepare / Attention), which also checks the image.
#include "attnd/kernels/custom_mask.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/backend_checks.h"
#include "attnd/kernels/cpu_reference.h"
#include "gtest/gtest.h"

namespace attnd::kernels {
namespace {

using testing::ExpectLseClose;
using testing::ExpectOutputsClose;
using testing::MakePagedProblem;
using testing::NaiveAttention;
using testing::PagedProblem;
using testing::PagedProblemSpec;

using DenseMasks = std::vector<std::vector<uint8_t>>;  // per request [qo_len * kv_len], 1 = visible

// The wire's packed form (PackCustomMask: checked against literal bytes below).
std::vector<uint8_t> Pack(const DenseMasks& masks) { return PackCustomMask(masks); }

DenseMasks RandomMasks(const std::vector<int>& qo, const std::vector<int>& kv, double p_visible,
                       std::mt19937& rng) {
  std::bernoulli_distribution visible(p_visible);
  DenseMasks masks(qo.size());
  for (size_t b = 0; b < qo.size(); ++b) {
    masks[b].resize(static_cast<size_t>(qo[b]) * kv[b]);
    for (auto& x : masks[b]) x = visible(rng) ? 1 : 0;
  }
  return masks;
}

// A complete tree of qo_len nodes (`fanout` children each) on a prefix of kv_len - qo_len keys
// (TreeVerificationMask: checked bit by bit in TreeMasksSeeThePrefixAndTheirAncestors).
std::vector<uint8_t> TreeMask(int qo_len, int kv_len, int fanout) {
  return TreeVerificationMask(CompleteTreeParents(qo_len, fanout), kv_len - qo_len);
}

std::vector<int32_t> Indptr(const std::vector<int>& lens) {
  std::vector<int32_t> out = {0};
  for (int x : lens) out.push_back(out.back() + x);
  return out;
}

CustomMaskImage Image(const DenseMasks& masks, const std::vector<int>& qo,
                      const std::vector<int>& kv) {
  const std::vector<uint8_t> packed = Pack(masks);
  const std::vector<int32_t> qo_indptr = Indptr(qo);
  auto image = BuildCustomMaskImage(std::span<const uint8_t>(packed),
                                    std::span<const int32_t>(qo_indptr), std::span<const int>(kv));
  EXPECT_TRUE(image.ok()) << image.status();
  return image.ok() ? *std::move(image) : CustomMaskImage{};
}

TEST(CustomMaskImage, PackingIsNumpysLittleBitOrderPerRequest) {
  // numpy.packbits([1,0,1,1, 0,0,0,0, 1], bitorder="little") = [0x0d, 0x01]; each request starts
  // on a byte: [1,1,0] -> 0x03.
  const std::vector<uint8_t> packed = PackCustomMask({{1, 0, 1, 1, 0, 0, 0, 0, 1}, {1, 1, 0}});
  EXPECT_EQ(packed, (std::vector<uint8_t>{0x0d, 0x01, 0x03}));
  EXPECT_TRUE(PackCustomMask({{}, {}}).empty());
}

TEST(CustomMaskImage, EveryBitMatchesThePackedForm) {
  std::mt19937 rng(5);
  // Lengths around word and byte boundaries; a request without rows; one without keys.
  const std::vector<int> kv = {1, 7, 31, 32, 33, 97, 64, 5, 0, 200};
  const std::vector<int> qo = {1, 7, 3, 32, 1, 50, 64, 0, 0, 9};
  const DenseMasks masks = RandomMasks(qo, kv, 0.6, rng);
  const CustomMaskImage image = Image(masks, qo, kv);
  const CustomMaskView view = image.View();
  ASSERT_NE(view.words, nullptr);
  int64_t words = 0;
  for (size_t b = 0; b < kv.size(); ++b) {
    EXPECT_EQ(image.word_offset[b], words) << b;
    words += static_cast<int64_t>(qo[b]) * ((kv[b] + 31) / 32);
    int dense = kv[b];
    for (int i = 0; i < qo[b]; ++i) {
      for (int t = 0; t < kv[b]; ++t) {
        const bool bit = masks[b][static_cast<size_t>(i) * kv[b] + t] != 0;
        ASSERT_EQ(CustomMaskVisible(view, static_cast<int32_t>(b), kv[b], i, t), bit)
            << "request " << b << " row " << i << " kv " << t;
        if (!bit) dense = std::min(dense, t);
      }
    }
    EXPECT_EQ(image.dense_until[b], dense) << b;
  }
  ASSERT_EQ(static_cast<int64_t>(image.words.size()), words + kCustomMaskPadWords);
  for (int64_t w = words; w < words + kCustomMaskPadWords; ++w) EXPECT_EQ(image.words[w], 0u);
  // Bits past a row's kv_len are zero (rows are whole words).
  for (int i = 0; i < qo[2]; ++i) {
    EXPECT_EQ(image.words[image.word_offset[2] + i] >> 31, 0u);
  }
}

TEST(CustomMaskImage, TreeMasksSeeThePrefixAndTheirAncestors) {
  // Nodes 0 <- 1 <- 3, 0 <- 2 after a 2-key prefix: rows [prefix | nodes 0..3].
  const std::vector<int32_t> parents = {-1, 0, 0, 1};
  EXPECT_EQ(TreeVerificationMask(parents, 2), (std::vector<uint8_t>{1, 1, 1, 0, 0, 0,  //
                                                                    1, 1, 1, 1, 0, 0,  //
                                                                    1, 1, 1, 0, 1, 0,  //
                                                                    1, 1, 1, 1, 0, 1}));
  EXPECT_EQ(CompleteTreeParents(6, 2), (std::vector<int32_t>{-1, 0, 0, 1, 1, 2}));
  EXPECT_EQ(CompleteTreeParents(3, 1), (std::vector<int32_t>{-1, 0, 1}));
}

TEST(CustomMaskImage, DenseUntilOfATreeIsItsPrefixPlusOne) {
  // Node 0 (the root) sees only itself in the tree: prefix + 1 is the first key some row misses.
  const std::vector<int> qo = {64}, kv = {64 + 4096};
  const CustomMaskImage image = Image({TreeMask(64, 4160, 4)}, qo, kv);
  EXPECT_EQ(image.dense_until[0], 4097);
  // An all-visible mask is dense to the end.
  const CustomMaskImage full = Image({std::vector<uint8_t>(5 * 40, 1)}, {5}, {40});
  EXPECT_EQ(full.dense_until[0], 40);
}

TEST(CustomMaskImage, TheWrongSizeIsRefusedNamingTheField) {
  const std::vector<int32_t> qo_indptr = {0, 3, 5};
  const std::vector<int64_t> kv = {10, 7};  // ceil(30 / 8) + ceil(14 / 8) = 4 + 2 bytes
  for (const size_t size : {size_t{0}, size_t{5}, size_t{7}, size_t{30}}) {
    const std::vector<uint8_t> packed(size, 0xff);
    auto image =
        BuildCustomMaskImage(std::span<const uint8_t>(packed), std::span<const int32_t>(qo_indptr),
                             std::span<const int64_t>(kv), "custom_mask");
    ASSERT_FALSE(image.ok()) << size;
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(image.status().message().find("custom_mask has " + std::to_string(size) +
                                            " bytes, expected 6"),
              std::string::npos)
        << image.status();
  }
  const std::vector<uint8_t> packed(6, 0xff);
  EXPECT_TRUE(BuildCustomMaskImage(std::span<const uint8_t>(packed),
                                   std::span<const int32_t>(qo_indptr),
                                   std::span<const int64_t>(kv))
                  .ok());
}

// PagedAttention with the mask (and the options) against the naive reference.
void CheckMasked(const PagedProblemSpec& spec, const DenseMasks& masks, AttentionOptions options,
                 bool rope_offsets = false) {
  PagedProblem p = MakePagedProblem(spec);
  const CustomMaskImage image = Image(masks, spec.qo_lens, spec.kv_lens);
  options.custom_mask = image.View();
  std::vector<int32_t> offsets;
  if (rope_offsets) {
    for (size_t b = 0; b < spec.kv_lens.size(); ++b) offsets.push_back(static_cast<int>(b) * 37);
    options.rope_offsets = offsets.data();
  }
  const std::string what = testing::DescribeSpec(spec, options) + " (custom mask)";
  SCOPED_TRACE(what);
  p.PoisonOutputs();
  ASSERT_TRUE(cpu::PagedAttention(p.Params(options, true), 3).ok());
  const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, spec.num_kv_heads,
                                  spec.head_dim, options, offsets, masks);
  ExpectOutputsClose(p.o, spec.q_dtype, ref.o, what);
  ExpectLseClose(p.lse, ref.lse, what);
}

TEST(CustomMaskAttention, TreesOnAPrefixWithGqaAndDtypes) {
  for (const int group : {1, 4, 8}) {
    for (const DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      PagedProblemSpec spec;
      spec.kv_lens = {64 + 200, 17 + 5, 31 + 70};
      spec.qo_lens = {64, 17, 31};
      spec.group = group;
      spec.kv_dtype = spec.q_dtype = dtype;
      spec.seed = static_cast<uint32_t>(group * 10 + static_cast<int>(dtype));
      DenseMasks masks;
      masks.push_back(TreeMask(64, 264, 4));
      masks.push_back(TreeMask(17, 22, 1));  // a chain: causal
      masks.push_back(TreeMask(31, 101, 2));
      CheckMasked(spec, masks, {});
      AttentionOptions causal;
      causal.causal = true;  // a tree in topological order lies inside causal: same result
      CheckMasked(spec, masks, causal);
    }
  }
}

TEST(CustomMaskAttention, RandomMasksWithEveryOption) {
  std::mt19937 rng(11);
  struct Case {
    bool causal;
    float cap;
    int window;
    bool rope, sinks;
    double p_visible;
  };
  for (const Case& c :
       {Case{false, 0.f, -1, false, false, 0.5}, Case{true, 0.f, -1, false, false, 0.8},
        Case{false, 20.f, 24, false, false, 0.7}, Case{true, 10.f, 9, true, false, 0.9},
        Case{false, 0.f, -1, true, true, 0.3}, Case{true, 30.f, 40, true, true, 0.95}}) {
    PagedProblemSpec spec;
    spec.kv_lens = {1, 40, 130, 97, 7};
    spec.qo_lens = {1, 40, 70, 5, 7};
    spec.page_size = 16;
    spec.group = 4;
    spec.q_amplitude = 4;
    spec.seed = rng();
    const DenseMasks masks = RandomMasks(spec.qo_lens, spec.kv_lens, c.p_visible, rng);
    std::vector<float> sinks(spec.num_kv_heads * spec.group);
    for (size_t h = 0; h < sinks.size(); ++h) sinks[h] = 0.3f * static_cast<float>(h) - 1.f;
    AttentionOptions options;
    options.causal = c.causal;
    options.logits_soft_cap = c.cap;
    options.window_left = c.window;
    if (c.sinks) options.sinks = sinks.data();
    if (c.rope) options.pos_encoding = PosEncoding::kRopeLlama;
    CheckMasked(spec, masks, options, c.rope);
  }
}

TEST(CustomMaskAttention, MaskedOutRowsGetZeroAndMinusInfinity) {
  PagedProblemSpec spec;
  spec.kv_lens = {70, 9};
  spec.qo_lens = {6, 9};
  DenseMasks masks = {std::vector<uint8_t>(6 * 70, 1), std::vector<uint8_t>(9 * 9, 1)};
  for (int t = 0; t < 70; ++t) masks[0][2 * 70 + t] = 0;  // request 0, row 2 sees nothing
  for (int t = 0; t < 9; ++t) masks[1][8 * 9 + t] = 0;    // request 1, its last row
  CheckMasked(spec, masks, {});
  PagedProblem p = MakePagedProblem(spec);
  const CustomMaskImage image = Image(masks, spec.qo_lens, spec.kv_lens);
  AttentionOptions options;
  options.custom_mask = image.View();
  p.PoisonOutputs();
  ASSERT_TRUE(cpu::PagedAttention(p.Params(options, true)).ok());
  testing::ExpectEmptyRows(p, {2, 6 + 8}, [](int) { return -INFINITY; });
}

TEST(CustomMaskAttention, ACausalMaskGivesTheBitsOfCausal) {
  // Masked keys contribute exactly nothing and the key order does not change: the lower-triangle
  // mask (with the append offset) without causal gives the same bits as causal without a mask.
  PagedProblemSpec spec;
  spec.kv_lens = {150, 33};
  spec.qo_lens = {40, 33};
  spec.group = 2;
  PagedProblem p = MakePagedProblem(spec);
  AttentionOptions options;
  options.causal = true;
  ASSERT_TRUE(cpu::PagedAttention(p.Params(options, true)).ok());
  const std::vector<uint8_t> o_causal = p.o;
  const std::vector<float> lse_causal = p.lse;
  DenseMasks masks(2);
  for (int b = 0; b < 2; ++b) {
    const int qo = spec.qo_lens[b], kv = spec.kv_lens[b];
    masks[b].resize(static_cast<size_t>(qo) * kv);
    for (int i = 0; i < qo; ++i) {
      for (int t = 0; t < kv; ++t) masks[b][static_cast<size_t>(i) * kv + t] = t <= kv - qo + i;
    }
  }
  const CustomMaskImage image = Image(masks, spec.qo_lens, spec.kv_lens);
  AttentionOptions masked;
  masked.custom_mask = image.View();
  p.PoisonOutputs();
  ASSERT_TRUE(cpu::PagedAttention(p.Params(masked, true)).ok());
  EXPECT_EQ(p.o, o_causal);
  EXPECT_EQ(std::memcmp(p.lse.data(), lse_causal.data(), lse_causal.size() * sizeof(float)), 0);
}

// A plan with a mask through the CPU backend.
PlanSpec SpecOf(PagedProblem& p) {
  PlanSpec spec;
  spec.kind = AttentionKind::kPrefill;
  spec.num_qo_heads = p.num_qo_heads;
  spec.num_kv_heads = p.spec.num_kv_heads;
  spec.head_dim = p.spec.head_dim;
  spec.page_size = p.spec.page_size;
  spec.kv_dtype = p.spec.kv_dtype;
  spec.kv_indptr = p.indptr;
  spec.kv_indices = p.indices;
  spec.kv_last_page_len = p.last_page_len;
  spec.qo_indptr = p.qo_indptr;
  return spec;
}

TEST(CustomMaskBackend, ThePlansMaskIsApplied) {
  PagedProblemSpec ps;
  ps.kv_lens = {90, 40};
  ps.qo_lens = {30, 8};
  ps.group = 4;
  std::mt19937 rng(3);
  const DenseMasks masks = RandomMasks(ps.qo_lens, ps.kv_lens, 0.5, rng);
  PagedProblem p = MakePagedProblem(ps);
  PlanSpec spec = SpecOf(p);
  spec.custom_mask = Image(masks, ps.qo_lens, ps.kv_lens);
  auto backend = CreateCpuBackend(CpuBackendOptions{.num_threads = 2});
  ASSERT_TRUE(backend.ok());
  auto plan = (*backend)->Prepare(spec, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  RunArgs args;
  args.plan = plan->get();
  args.layer = p.View();
  args.q = p.q.data();
  args.o = p.o.data();
  args.lse = p.lse.data();
  args.q_dtype = ps.q_dtype;
  args.options.causal = true;
  // A mask in the run's options is not the plan's: the backend uses the plan's.
  const CustomMaskImage other =
      Image(RandomMasks(ps.qo_lens, ps.kv_lens, 0.1, rng), ps.qo_lens, ps.kv_lens);
  args.options.custom_mask = other.View();
  p.PoisonOutputs();
  ASSERT_TRUE((*backend)->Attention(args).ok());
  AttentionOptions causal;
  causal.causal = true;
  const auto ref = NaiveAttention(p.dense, p.qo_lens, p.q_values, p.num_qo_heads, ps.num_kv_heads,
                                  ps.head_dim, causal, {}, masks);
  ExpectOutputsClose(p.o, ps.q_dtype, ref.o, "backend plan with a mask");
  ExpectLseClose(p.lse, ref.lse, "backend plan with a mask");
}

TEST(CustomMaskBackend, InconsistentImagesAndDecodePlansAreRefused) {
  PagedProblemSpec ps;
  ps.kv_lens = {40, 20};
  ps.qo_lens = {4, 2};
  PagedProblem p = MakePagedProblem(ps);
  const DenseMasks masks = {std::vector<uint8_t>(4 * 40, 1), std::vector<uint8_t>(2 * 20, 1)};
  PlanSpec good = SpecOf(p);
  good.custom_mask = Image(masks, ps.qo_lens, ps.kv_lens);
  EXPECT_TRUE(CheckPlanSpec(good, 256).ok());

  PlanSpec decode = good;
  decode.kind = AttentionKind::kDecode;
  decode.qo_indptr = {0, 1, 2};
  EXPECT_NE(CheckPlanSpec(decode, 256).message().find("only prefill plans"), std::string::npos);

  PlanSpec short_words = good;
  short_words.custom_mask.words.resize(short_words.custom_mask.words.size() - 1);
  EXPECT_NE(CheckPlanSpec(short_words, 256).message().find("request 1's rows"), std::string::npos)
      << CheckPlanSpec(short_words, 256);

  PlanSpec bad_offset = good;
  bad_offset.custom_mask.word_offset[0] = -1;
  EXPECT_FALSE(CheckPlanSpec(bad_offset, 256).ok());

  PlanSpec missing = good;
  missing.custom_mask.dense_until.pop_back();
  EXPECT_FALSE(CheckPlanSpec(missing, 256).ok());
}

}  // namespace
}  // namespace attnd::kernels
