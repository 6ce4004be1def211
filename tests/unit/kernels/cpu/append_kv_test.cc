// AppendKv writes exactly the slots of the new tokens and nothing else: the whole pool is
// compared with an expected copy updated by the test's own slot arithmetic.
#include <cstring>
#include <random>
#include <vector>

#include "attention_test_util.h"
#include "attnd/kernels/cpu_reference.h"
#include "gtest/gtest.h"

namespace attnd::kernels::cpu {
namespace {

using testing::MakePagedProblem;
using testing::PagedProblem;
using testing::PagedProblemSpec;

void CheckAppend(const PagedProblemSpec& spec, const std::vector<int>& new_lens, bool null_indptr) {
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
  const absl::Status status = AppendKv(params);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(p.pool, before);
  params.new_indptr = nullptr;
  params.k = nullptr;
  EXPECT_EQ(AppendKv(params).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.pool, before);
}

}  // namespace
}  // namespace attnd::kernels::cpu
