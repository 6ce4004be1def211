// AppendKv writes exactly the slots of the new tokens and nothing else: the whole pool is
// compared with an expected copy updated by the test's own slot arithmetic.
#include <cstring>
#include <random>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "attnd/kernels/float_convert.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

using testing::MakePagedProblem;
using testing::PagedProblem;
using testing::PagedProblemSpec;

// dtype_unset: AppendKvParams::new_dtype left unset (the rows are then of the cache's type).
void CheckAppend(const PagedProblemSpec& spec, const std::vector<int>& new_lens, bool null_indptr,
                 bool dtype_unset = false) {
  PagedProblem p = MakePagedProblem(spec);
  std::mt19937 rng(spec.seed + 1);
  std::vector<int32_t> new_indptr = {0};
  for (int n : new_lens) new_indptr.push_back(new_indptr.back() + n);
  const int64_t row = static_cast<int64_t>(spec.num_kv_heads) * spec.head_dim;
  std::vector<uint8_t> k_new, v_new;
  testing::FillRandom(k_new, spec.kv_dtype, new_indptr.back() * row, 1.0, rng);
  testing::FillRandom(v_new, spec.kv_dtype, new_indptr.back() * row, 1.0, rng);

  std::vector<uint8_t> expected = p.pool;
  const size_t elem = DTypeSize(spec.kv_dtype);
  for (size_t b = 0; b < new_lens.size(); ++b) {
    for (int i = 0; i < new_lens[b]; ++i) {
      const int64_t position = spec.kv_lens[b] - new_lens[b] + i;
      const int64_t page = p.indices[p.indptr[b] + position / spec.page_size];
      for (int h = 0; h < spec.num_kv_heads; ++h) {
        const int64_t src = ((new_indptr[b] + i) * spec.num_kv_heads + h) * spec.head_dim;
        for (int kv_index = 0; kv_index < 2; ++kv_index) {
          const int64_t dst = p.SlotOffset(page, kv_index, position % spec.page_size, h);
          std::memcpy(&expected[dst * elem], &(kv_index ? v_new : k_new)[src * elem],
                      spec.head_dim * elem);
        }
      }
    }
  }
  AppendKvParams params;
  params.kv = p.View();
  params.k = k_new.data();
  params.v = v_new.data();
  params.new_indptr = null_indptr ? nullptr : new_indptr.data();
  if (!dtype_unset) params.new_dtype = spec.kv_dtype;
  ASSERT_TRUE(AppendKv(params).ok());
  ASSERT_EQ(p.pool.size(), expected.size());
  size_t differing = 0;
  for (size_t i = 0; i < expected.size(); ++i) differing += p.pool[i] != expected[i];
  EXPECT_EQ(differing, 0u) << "bytes of the pool differ from the expected pool";
  EXPECT_NE(p.pool, MakePagedProblem(spec).pool) << "nothing was written";
}

TEST(AppendKv, WritesExactlyTheNewSlots) {
  for (int page_size : {1, 16, 64}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      for (bool hnd : {false, true}) {
        PagedProblemSpec spec;
        spec.kv_lens = {1, 7, 97, 130};
        spec.qo_lens = spec.kv_lens;
        spec.page_size = page_size;
        spec.num_kv_heads = 3;
        spec.head_dim = 32;
        spec.kv_dtype = dtype;
        spec.hnd = hnd;
        spec.seed = page_size + static_cast<int>(dtype) * 100 + hnd;
        SCOPED_TRACE(testing::DescribeSpec(spec, {}));
        CheckAppend(spec, {1, 7, 20, 0}, false);  // full prefill, partial append, none
        CheckAppend(spec, {1, 1, 1, 1}, true);    // decode: one token each, null new_indptr
      }
    }
  }
}

TEST(AppendKv, UnsetRowTypeMeansTheCachesOwnTypeCopiedAsIs) {
  // Not a default type: fp8 rows onto an fp8 cache are copied bit for bit, not read as fp16.
  for (DType dtype : {DType::kFloat8E4M3, DType::kFloat8E5M2, DType::kBFloat16, DType::kFloat32}) {
    PagedProblemSpec spec;
    spec.kv_lens = {3, 40};
    spec.qo_lens = spec.kv_lens;
    spec.page_size = 16;
    spec.num_kv_heads = 2;
    spec.head_dim = 32;
    spec.kv_dtype = dtype;
    spec.seed = 7 + static_cast<int>(dtype);
    SCOPED_TRACE(testing::DescribeSpec(spec, {}));
    AppendKvParams unset;
    EXPECT_FALSE(unset.new_dtype.has_value());
    unset.kv.dtype = dtype;
    EXPECT_EQ(unset.RowsDtype(), dtype);
    CheckAppend(spec, {3, 5}, false, /*dtype_unset=*/true);
  }
}

TEST(AppendKv, RejectsMoreNewTokensThanThePagesHoldWithoutWriting) {
  PagedProblemSpec spec;
  spec.kv_lens = {4, 9};
  spec.qo_lens = spec.kv_lens;
  PagedProblem p = MakePagedProblem(spec);
  const std::vector<uint8_t> before = p.pool;
  std::vector<int32_t> new_indptr = {0, 2, 12};  // request 1 would append 10 > 9
  std::vector<uint8_t> rows(12 * spec.num_kv_heads * spec.head_dim * 2, 0);
  AppendKvParams params;
  params.kv = p.View();
  params.k = rows.data();
  params.v = rows.data();
  params.new_indptr = new_indptr.data();
  params.new_dtype = spec.kv_dtype;
  const absl::Status status = AppendKv(params);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(p.pool, before);
  params.new_indptr = nullptr;
  params.k = nullptr;
  EXPECT_EQ(AppendKv(params).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.pool, before);
}

// Rows of float32 / float16 / bfloat16 appended onto an fp8 cache are quantized with its scales:
// byte = fp8(x / scale[h]) per KV head (K's and V's own), round to nearest even, saturating at
// the largest finite value; with null scales, scale 1. Exactly the new slots change.
TEST(AppendKv, QuantizesRowsOntoAnFp8CacheWithItsScales) {
  for (DType fp8 : {DType::kFloat8E4M3, DType::kFloat8E5M2}) {
    for (DType rows : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      for (bool scales : {true, false}) {
        PagedProblemSpec spec;
        spec.kv_lens = {3, 17};
        spec.qo_lens = spec.kv_lens;
        spec.page_size = 4;
        spec.num_kv_heads = 3;
        spec.head_dim = 32;
        spec.kv_dtype = fp8;
        spec.seed = static_cast<int>(fp8) * 10 + static_cast<int>(rows) + (scales ? 100 : 0);
        SCOPED_TRACE(::testing::Message() << DTypeName(fp8) << " <- " << DTypeName(rows)
                                          << (scales ? " scales" : " no scales"));
        PagedProblem p = MakePagedProblem(spec);
        std::mt19937 rng(spec.seed);
        const std::vector<int32_t> new_indptr = {0, 2, 7};  // 2 and 5 new tokens
        const int64_t row = static_cast<int64_t>(spec.num_kv_heads) * spec.head_dim;
        std::vector<uint8_t> k_new, v_new;
        testing::FillRandom(k_new, rows, new_indptr.back() * row, 600.0, rng);  // some saturate
        testing::FillRandom(v_new, rows, new_indptr.back() * row, 0.01, rng);   // some subnormal
        const std::vector<float> k_scale = {0.5f, 2.f, 0.125f}, v_scale = {4.f, 0.25f, 1.f};
        std::vector<uint8_t> expected = p.pool;
        for (int b = 0; b < 2; ++b) {
          const int new_len = new_indptr[b + 1] - new_indptr[b];
          for (int i = 0; i < new_len; ++i) {
            const int64_t position = spec.kv_lens[b] - new_len + i;
            const int64_t page = p.indices[p.indptr[b] + position / spec.page_size];
            for (int h = 0; h < spec.num_kv_heads; ++h) {
              for (int kv_index = 0; kv_index < 2; ++kv_index) {
                const int64_t dst = p.SlotOffset(page, kv_index, position % spec.page_size, h);
                const float scale = !scales ? 1.f : (kv_index ? v_scale : k_scale)[h];
                for (int d = 0; d < spec.head_dim; ++d) {
                  const int64_t src =
                      ((new_indptr[b] + i) * spec.num_kv_heads + h) * spec.head_dim + d;
                  const float x = LoadAsFloat((kv_index ? v_new : k_new).data(), rows, src);
                  expected[dst + d] = fp8 == DType::kFloat8E4M3 ? FloatToFp8E4m3Bits(x / scale)
                                                                : FloatToFp8E5m2Bits(x / scale);
                }
              }
            }
          }
        }
        AppendKvParams params;
        params.kv = p.View();
        if (scales) {
          params.kv.k_scale = k_scale.data();
          params.kv.v_scale = v_scale.data();
        }
        params.k = k_new.data();
        params.v = v_new.data();
        params.new_indptr = new_indptr.data();
        params.new_dtype = rows;
        ASSERT_TRUE(AppendKv(params).ok());
        size_t differing = 0;
        for (size_t i = 0; i < expected.size(); ++i) differing += p.pool[i] != expected[i];
        EXPECT_EQ(differing, 0u);
      }
    }
  }
  // Known values: 3 / 2 = 1.5 -> e4m3 0x3C; 1e6 saturates to 448 (0x7E), -1e6 to -448 (0xFE);
  // e5m2: 1.5 -> 0x3E, 1e6 -> 57344 (0x7B).
  EXPECT_EQ(FloatToFp8E4m3Bits(3.f / 2.f), 0x3C);
  EXPECT_EQ(FloatToFp8E4m3Bits(1e6f), 0x7E);
  EXPECT_EQ(FloatToFp8E4m3Bits(-1e6f), 0xFE);
  EXPECT_EQ(FloatToFp8E5m2Bits(1.5f), 0x3E);
  EXPECT_EQ(FloatToFp8E5m2Bits(1e6f), 0x7B);
}

// A type the cache does not take (float16 rows onto a bfloat16 cache; bfloat16 onto float32) is
// refused by name, and nothing is written.
TEST(AppendKv, RefusesRowsOfAnotherTypeOntoA16Or32BitCache) {
  for (const auto& [cache, rows] :
       {std::pair{DType::kBFloat16, DType::kFloat16}, std::pair{DType::kFloat32, DType::kBFloat16},
        std::pair{DType::kFloat8E4M3, DType::kFloat8E5M2}}) {
    PagedProblemSpec spec;
    spec.kv_lens = {4, 9};
    spec.qo_lens = spec.kv_lens;
    spec.kv_dtype = cache;
    PagedProblem p = MakePagedProblem(spec);
    const std::vector<uint8_t> before = p.pool;
    std::vector<uint8_t> k_rows(2 * spec.num_kv_heads * spec.head_dim * 4, 0x11);
    AppendKvParams params;
    params.kv = p.View();
    params.k = k_rows.data();
    params.v = k_rows.data();
    params.new_dtype = rows;
    const absl::Status status = AppendKv(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(DTypeName(rows)), std::string::npos) << status;
    EXPECT_EQ(p.pool, before);
  }
}

}  // namespace
}  // namespace attnd::kernels::cpu
