// Every validation class: the exact status code, and a message naming the field and the value.
#include "server/core/validation.h"

#include <limits>
#include <string>

#include "expect_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnd::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

kernels::BackendInfo TestBackendInfo() {
  kernels::BackendInfo info;
  info.name = "test";
  info.kv_dtypes = {kernels::DType::kFloat32, kernels::DType::kFloat16};
  info.q_dtypes = {kernels::DType::kFloat32, kernels::DType::kFloat16};
  info.head_dims = {64, 128};
  info.page_sizes = {};
  return info;
}

v1::CreatePoolRequest GoodPool() {
  v1::CreatePoolRequest r;
  r.set_name("pool_0.a-b");
  r.set_num_layers(2);
  r.set_num_kv_heads(4);
  r.set_head_dim(64);
  r.set_page_size(16);
  r.set_kv_dtype(v1::DTYPE_FLOAT16);
  r.set_num_pages(10);
  return r;
}

TEST(ValidatePoolTest, GoodRequestGivesGeometry) {
  auto g = ValidateCreatePool(GoodPool(), TestBackendInfo());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->num_pages, 10);
  EXPECT_EQ(g->page_bytes, 2u * 16 * 4 * 64 * 2);
  EXPECT_EQ(g->layer_bytes, 10 * g->page_bytes);
  EXPECT_EQ(g->total_bytes, 2 * g->layer_bytes);
  EXPECT_EQ(g->kv_dtype, kernels::DType::kFloat16);
}

TEST(ValidatePoolTest, MemoryBudgetRoundsDownToPages) {
  auto r = GoodPool();
  r.set_num_pages(0);
  const uint64_t page_all_layers = 2ull * 16 * 4 * 64 * 2 * 2;
  r.set_memory_budget_bytes(page_all_layers * 7 + page_all_layers / 2);
  auto g = ValidateCreatePool(r, TestBackendInfo());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->num_pages, 7);

  r.set_memory_budget_bytes(page_all_layers - 1);
  EXPECT_STATUS(ValidateCreatePool(r, TestBackendInfo()).status(), kInvalidArgument,
                HasSubstr("memory_budget_bytes="), HasSubstr(std::to_string(page_all_layers - 1)));
}

TEST(ValidatePoolTest, EachBadFieldIsNamed) {
  const auto info = TestBackendInfo();
  auto r = GoodPool();
  r.set_num_layers(0);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("num_layers=0"));
  r = GoodPool();
  r.set_num_kv_heads(-2);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument,
                HasSubstr("num_kv_heads=-2"));
  r = GoodPool();
  r.set_head_dim(80);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("head_dim=80"),
                HasSubstr("64, 128"));
  r = GoodPool();
  r.set_page_size(0);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("page_size=0"));
  r = GoodPool();
  r.set_kv_dtype(v1::DTYPE_BFLOAT16);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument,
                HasSubstr("kv_dtype=DTYPE_BFLOAT16"));
  r = GoodPool();
  r.set_kv_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument,
                HasSubstr("kv_dtype=DTYPE_UNSPECIFIED"));
  r = GoodPool();
  r.set_memory_budget_bytes(1 << 20);  // both sizes set
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("num_pages"),
                HasSubstr("memory_budget_bytes"));
  r = GoodPool();
  r.set_num_pages(0);  // neither
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("exactly one"));
  r = GoodPool();
  r.set_num_pages(-5);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("num_pages=-5"));
  r = GoodPool();
  r.set_num_pages(int64_t{1} << 40);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument,
                HasSubstr("num_pages=1099511627776"));
}

TEST(ValidatePoolTest, PageSizeMustBeListedWhenTheBackendListsThem) {
  auto info = TestBackendInfo();
  info.page_sizes = {16, 32};
  auto r = GoodPool();
  EXPECT_TRUE(ValidateCreatePool(r, info).ok());
  r.set_page_size(8);
  EXPECT_STATUS(ValidateCreatePool(r, info).status(), kInvalidArgument, HasSubstr("page_size=8"),
                HasSubstr("16, 32"));
}

TEST(ValidatePoolTest, Names) {
  EXPECT_TRUE(ValidatePoolName("A-z_0.9").ok());
  EXPECT_TRUE(ValidatePoolName(std::string(64, 'a')).ok());
  EXPECT_STATUS(ValidatePoolName(""), kInvalidArgument, HasSubstr("name=''"));
  EXPECT_STATUS(ValidatePoolName(std::string(65, 'a')), kInvalidArgument, HasSubstr("1..64"));
  EXPECT_STATUS(ValidatePoolName("bad/name"), kInvalidArgument, HasSubstr("name"),
                HasSubstr("index 3"));
  EXPECT_STATUS(ValidatePoolName("sp ace"), kInvalidArgument, HasSubstr("index 2"));
}

// A pool of 16 pages of 4 tokens, 2 kv heads, head_dim 64, fp16.
PoolGeometry SmallPool() {
  PoolGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.head_dim = 64;
  g.page_size = 4;
  g.kv_dtype = kernels::DType::kFloat16;
  g.num_pages = 16;
  return g;
}

v1::CreatePlanRequest PrefillPlan() {
  // Request 0: pages 3, 4 (kv_len 4 + 2 = 6), 3 query tokens (positions 3..5: pages 3 and 4).
  // Request 1: page 7 (kv_len 4), 4 query tokens.
  v1::CreatePlanRequest r;
  r.set_pool_id("p");
  r.set_kind(v1::ATTENTION_KIND_PREFILL);
  r.set_num_qo_heads(4);
  for (int x : {0, 2, 3}) r.add_kv_indptr(x);
  for (int x : {3, 4, 7}) r.add_kv_indices(x);
  for (int x : {2, 4}) r.add_kv_last_page_len(x);
  for (int x : {0, 3, 7}) r.add_qo_indptr(x);
  return r;
}

TEST(ValidatePlanTest, GoodPrefillPlan) {
  auto plan = ValidatePlan(PrefillPlan(), SmallPool(), "p");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->spec.batch_size(), 2);
  EXPECT_EQ(plan->spec.qo_tokens(), 7);
  EXPECT_EQ(plan->kv_tokens, 10);
  EXPECT_EQ(plan->distinct_pages, (std::vector<int32_t>{3, 4, 7}));
  EXPECT_EQ(plan->written_pages, (std::vector<int32_t>{3, 4, 7}));
}

TEST(ValidatePlanTest, DecodeFillsQoIndptrAndWritesOnlyLastPages) {
  v1::CreatePlanRequest r;
  r.set_kind(v1::ATTENTION_KIND_DECODE);
  r.set_num_qo_heads(2);
  for (int x : {0, 2, 3}) r.add_kv_indptr(x);
  for (int x : {5, 6, 9}) r.add_kv_indices(x);
  for (int x : {1, 3}) r.add_kv_last_page_len(x);
  auto plan = ValidatePlan(r, SmallPool(), "p");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->spec.qo_indptr, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(plan->written_pages, (std::vector<int32_t>{6, 9}));
  EXPECT_EQ(plan->kv_tokens, 5 + 3);

  r.add_qo_indptr(0);
  r.add_qo_indptr(2);
  r.add_qo_indptr(3);
  EXPECT_STATUS(ValidatePlan(r, SmallPool(), "p").status(), kInvalidArgument,
                HasSubstr("qo_indptr[1]=2"), HasSubstr("qo_len=2"));
}

TEST(ValidatePlanTest, EachBadFieldIsNamed) {
  const PoolGeometry g = SmallPool();
  auto r = PrefillPlan();
  r.set_kind(v1::ATTENTION_KIND_UNSPECIFIED);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("kind=0"));

  r = PrefillPlan();
  r.set_num_qo_heads(3);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("num_qo_heads=3"),
                HasSubstr("(2)"));

  r = PrefillPlan();
  r.clear_kv_indptr();
  r.add_kv_indptr(0);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument,
                HasSubstr("kv_indptr has 1 entries"));

  r = PrefillPlan();
  r.set_kv_indptr(0, 1);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("kv_indptr[0]=1"));

  r = PrefillPlan();
  r.set_kv_indptr(1, 0);  // request 0 has no pages
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("request 0 has no pages"));

  r = PrefillPlan();
  r.set_kv_indptr(1, 4);  // 0, 4, 3: decreasing
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("kv_indptr[2]=3"),
                HasSubstr("kv_indptr[1]=4"));

  r = PrefillPlan();
  r.add_kv_indices(1);  // 4 indices, indptr ends at 3
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("kv_indptr[2]=3"),
                HasSubstr("kv_indices has 4 entries"));

  r = PrefillPlan();
  r.set_kv_indices(1, 17);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kOutOfRange, HasSubstr("kv_indices[1]=17"),
                HasSubstr("0..15"));
  r.set_kv_indices(1, -1);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kOutOfRange, HasSubstr("kv_indices[1]=-1"));

  r = PrefillPlan();
  r.add_kv_last_page_len(1);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument,
                HasSubstr("kv_last_page_len has 3 entries"), HasSubstr("batch_size=2"));

  r = PrefillPlan();
  r.set_kv_last_page_len(1, 5);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument,
                HasSubstr("kv_last_page_len[1]=5 is outside 1..page_size (4)"));
  r.set_kv_last_page_len(1, 0);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument,
                HasSubstr("kv_last_page_len[1]=0"));

  r = PrefillPlan();
  r.clear_qo_indptr();
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument,
                HasSubstr("qo_indptr has 0 entries"));

  r = PrefillPlan();
  r.set_qo_indptr(0, 1);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("qo_indptr[0]=1"));

  r = PrefillPlan();
  r.set_qo_indptr(1, 8);  // 0, 8, 7: decreasing (and request 0 would exceed kv_len first)
  r.set_qo_indptr(1, 5);
  r.set_qo_indptr(2, 4);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("qo_indptr[2]=4"));

  r = PrefillPlan();
  r.set_qo_indptr(1, 7);  // request 0: qo_len 7 > kv_len 6
  r.set_qo_indptr(2, 8);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("qo_indptr[1]=7"),
                HasSubstr("qo_len=7 > kv_len=6"));

  r = PrefillPlan();
  r.set_qo_indptr(1, 0);
  r.set_qo_indptr(2, 0);
  EXPECT_STATUS(ValidatePlan(r, g, "p").status(), kInvalidArgument, HasSubstr("no query tokens"));
}

TEST(ValidatePlanTest, BatchLimit) {
  auto r = PrefillPlan();
  EXPECT_STATUS(ValidatePlan(r, SmallPool(), "p", /*max_batch_size=*/1).status(), kInvalidArgument,
                HasSubstr("batch_size=2"), HasSubstr("limit of 1"));
}

TEST(ValidatePlanTest, TwoRequestsAppendingToOnePageAreRefused) {
  auto r = PrefillPlan();
  r.set_kv_indices(2, 4);  // request 1's page is request 0's last page
  EXPECT_STATUS(ValidatePlan(r, SmallPool(), "p").status(), kInvalidArgument,
                HasSubstr("kv_indices[2]=4"), HasSubstr("requests 0 and 1"));
}

TEST(PageOwnershipTest, HeldAndUnshared) {
  PageAllocator allocator(8);
  PageLedger mine, pins, other;
  auto pages = allocator.Allocate(3, mine, "p");
  ASSERT_TRUE(pages.ok());
  const std::vector<int32_t> ids = *pages;
  EXPECT_TRUE(CheckPagesHeld(ids, "kv_indices", mine, "p").ok());
  EXPECT_STATUS(CheckPagesHeld({ids[0], 6}, "kv_indices", mine, "p"), kPermissionDenied,
                HasSubstr("kv_indices[1]=6: page 6 of pool 'p' is not held by this session"));

  EXPECT_TRUE(CheckPagesUnshared(ids, allocator, mine, pins).ok());
  ASSERT_TRUE(allocator.AddReferences({ids[1]}, pins).ok());  // own plan pin: still unshared
  EXPECT_TRUE(CheckPagesUnshared(ids, allocator, mine, pins).ok());
  ASSERT_TRUE(allocator.AddReferences({ids[2]}, other).ok());  // another session's reference
  EXPECT_STATUS(CheckPagesUnshared(ids, allocator, mine, pins), kFailedPrecondition,
                HasSubstr("page " + std::to_string(ids[2]) + " is shared with another session"));
}

TEST(ValidatePageIdsTest, OutOfRange) {
  EXPECT_TRUE(ValidatePageIds({0, 15}, "page_ids", 16, "p").ok());
  EXPECT_STATUS(ValidatePageIds({0, 16}, "page_ids", 16, "p"), kOutOfRange,
                HasSubstr("page_ids[1]=16"), HasSubstr("0..15"));
  EXPECT_STATUS(ValidatePageCount(0), kInvalidArgument, HasSubstr("count=0"));
}

v1::Tensor InlineTensor(v1::DType dtype, std::vector<int64_t> shape, size_t bytes) {
  v1::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.set_inline_data(std::string(bytes, '\0'));
  return t;
}

TEST(ValidateTensorTest, DtypeShapeAndSize) {
  const std::vector<int64_t> expected = {4, 32, 128};
  auto good = InlineTensor(v1::DTYPE_FLOAT16, expected, 4 * 32 * 128 * 2);
  auto bytes = ValidateTensor(good, "q", kernels::DType::kFloat16, expected);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, 4u * 32 * 128 * 2);

  auto wrong_shape = InlineTensor(v1::DTYPE_FLOAT16, {4, 32, 64}, 4 * 32 * 64 * 2);
  EXPECT_STATUS(ValidateTensor(wrong_shape, "q", kernels::DType::kFloat16, expected).status(),
                kInvalidArgument, HasSubstr("q.shape=[4,32,64], expected [4,32,128]"));

  auto wrong_dtype = InlineTensor(v1::DTYPE_FLOAT32, expected, 4 * 32 * 128 * 4);
  EXPECT_STATUS(ValidateTensor(wrong_dtype, "k", kernels::DType::kFloat16, expected).status(),
                kInvalidArgument, HasSubstr("k.dtype=DTYPE_FLOAT32, expected DTYPE_FLOAT16"));

  auto short_data = InlineTensor(v1::DTYPE_FLOAT16, expected, 100);
  EXPECT_STATUS(ValidateTensor(short_data, "v", kernels::DType::kFloat16, expected).status(),
                kInvalidArgument, HasSubstr("v.inline_data has 100 bytes, expected 32768"));

  v1::Tensor empty;
  empty.set_dtype(v1::DTYPE_FLOAT16);
  EXPECT_STATUS(ValidateTensor(empty, "q", kernels::DType::kFloat16, expected).status(),
                kInvalidArgument, HasSubstr("q has no data"));
}

TEST(ValidateTensorTest, QueryDtypeMustBeSupported) {
  v1::Tensor q;
  q.set_dtype(v1::DTYPE_BFLOAT16);
  EXPECT_STATUS(ValidateQueryDType(q, TestBackendInfo()).status(), kInvalidArgument,
                HasSubstr("q.dtype=DTYPE_BFLOAT16"));
  q.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_STATUS(ValidateQueryDType(q, TestBackendInfo()).status(), kInvalidArgument,
                HasSubstr("q.dtype=DTYPE_UNSPECIFIED"));
}

TEST(ValidateSliceTest, BoundsAndAlignment) {
  alignas(256) static char base[256];
  v1::BufferSlice slice;
  slice.set_buffer_id("b-1");
  slice.set_offset_bytes(64);
  EXPECT_TRUE(ValidateSlice("o", slice, 64, 4, 0, base, 128).ok());
  EXPECT_STATUS(ValidateSlice("o", slice, 65, 4, 0, base, 128), kOutOfRange,
                HasSubstr("o.buffer: offset_bytes=64 + 65 bytes"), HasSubstr("'b-1' (128 bytes)"));
  slice.set_offset_bytes(std::numeric_limits<uint64_t>::max() - 3);  // offset + bytes overflows
  EXPECT_EQ(ValidateSlice("o", slice, 8, 4, 0, base, 128).code(), absl::StatusCode::kOutOfRange);
  slice.set_offset_bytes(6);
  EXPECT_STATUS(ValidateSlice("q", slice, 8, 4, 0, base, 128), kInvalidArgument,
                HasSubstr("q.buffer.offset_bytes=6"));
}

// The CUDA kernels read 16-byte vectors: an element-aligned but not 16-byte aligned slice
// (offset 2 of an fp16 tensor) is refused before anything runs, naming the field and value.
TEST(ValidateSliceTest, BackendAlignmentRefusesElementAlignedOffsets) {
  alignas(256) static char base[256];
  v1::BufferSlice slice;
  slice.set_buffer_id("b-1");
  slice.set_offset_bytes(2);
  EXPECT_TRUE(ValidateSlice("q", slice, 8, 2, 0, base, 128).ok());  // CPU: element alignment
  EXPECT_STATUS(ValidateSlice("q", slice, 8, 2, 16, base, 128), kInvalidArgument,
                HasSubstr("q.buffer.offset_bytes=2 is not a multiple of 16"),
                HasSubstr("tensor_alignment_bytes"));
  slice.set_offset_bytes(32);
  EXPECT_TRUE(ValidateSlice("q", slice, 8, 2, 16, base, 128).ok());
  // The address counts, not only the offset: a mapping that itself starts misaligned.
  EXPECT_EQ(ValidateSlice("q", slice, 8, 2, 16, base + 2, 128).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EchoTest, CutsAndEscapesClientValues) {
  EXPECT_EQ(Echo("b-12"), "b-12");
  EXPECT_EQ(Echo("a\nb\x01"), "a\\x0ab\\x01");
  const std::string huge(64 << 20, 'x');
  const std::string echoed = Echo(huge);
  EXPECT_LT(echoed.size(), 100u);
  EXPECT_THAT(echoed, HasSubstr("...(67108864 bytes)"));
  std::vector<int64_t> dims(4'000'000, 1);
  EXPECT_LT(ShapeString(dims).size(), 60u);
  EXPECT_THAT(ShapeString(dims), HasSubstr("(4000000 dims)"));
  EXPECT_EQ(ShapeString(std::vector<int64_t>{4, 32, 128}), "[4,32,128]");
}

TEST(ValidateLayerTest, Range) {
  EXPECT_TRUE(ValidateLayer(0, 2).ok());
  EXPECT_TRUE(ValidateLayer(1, 2).ok());
  EXPECT_STATUS(ValidateLayer(2, 2), kOutOfRange, HasSubstr("layer=2 is outside 0..1"));
  EXPECT_STATUS(ValidateLayer(-1, 2), kOutOfRange, HasSubstr("layer=-1"));
}

TEST(ValidateOptionsTest, DefaultsAndRanges) {
  v1::AttentionOptions o;
  auto out = ValidateOptions(o, 3);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->rope_theta, 1e4f);
  EXPECT_EQ(out->rope_scale, 1.f);
  EXPECT_EQ(out->window_left, -1);

  o.set_window_left(0);  // not set: no window
  EXPECT_EQ(ValidateOptions(o, 3)->window_left, -1);
  o.set_window_left_set(true);
  EXPECT_EQ(ValidateOptions(o, 3)->window_left, 0);
  // -1 with window_left_set reads as "no window", as the wire API says.
  o.set_window_left(-1);
  ASSERT_TRUE(ValidateOptions(o, 3).ok()) << ValidateOptions(o, 3).status();
  EXPECT_EQ(ValidateOptions(o, 3)->window_left, -1);
  o.set_window_left(-2);
  EXPECT_STATUS(ValidateOptions(o, 3).status(), kInvalidArgument,
                HasSubstr("options.window_left=-2"), HasSubstr("-1 for no window"));

  o = v1::AttentionOptions();
  o.set_rope_theta(5e5f);
  o.set_rope_scale(2.f);
  out = ValidateOptions(o, 3);
  EXPECT_EQ(out->rope_theta, 5e5f);
  EXPECT_EQ(out->rope_scale, 2.f);

  o = v1::AttentionOptions();
  o.add_rope_offsets(1);
  o.add_rope_offsets(2);
  EXPECT_STATUS(ValidateOptions(o, 3).status(), kInvalidArgument,
                HasSubstr("options.rope_offsets has 2 entries"), HasSubstr("batch_size=3"));

  o = v1::AttentionOptions();
  o.set_logits_soft_cap(-1.f);
  EXPECT_STATUS(ValidateOptions(o, 3).status(), kInvalidArgument,
                HasSubstr("options.logits_soft_cap=-1"));

  o = v1::AttentionOptions();
  o.set_sm_scale(std::numeric_limits<float>::quiet_NaN());
  EXPECT_STATUS(ValidateOptions(o, 3).status(), kInvalidArgument, HasSubstr("options.sm_scale=nan"));

  o = v1::AttentionOptions();
  o.set_pos_encoding(static_cast<v1::PosEncoding>(7));
  EXPECT_STATUS(ValidateOptions(o, 3).status(), kInvalidArgument,
                HasSubstr("options.pos_encoding=7"));
}

TEST(ValidateRegisterBufferTest, Sources) {
  v1::RegisterBufferRequest r;
  r.set_size_bytes(16);
  EXPECT_STATUS(ValidateRegisterBuffer(r), kInvalidArgument, HasSubstr("source is not set"));
  // Shared memory by name is refused whatever the name: a name is no proof of ownership.
  r.mutable_shared_memory()->set_name("/engine0-staging");
  EXPECT_STATUS(ValidateRegisterBuffer(r), kFailedPrecondition,
                HasSubstr("shared_memory.name='/engine0-staging'"), HasSubstr("memfd"));
  r.mutable_shared_memory_fd()->set_fd_token("");
  EXPECT_STATUS(ValidateRegisterBuffer(r), kInvalidArgument, HasSubstr("fd_token is empty"));
  r.mutable_shared_memory_fd()->set_fd_token("fd-1");
  EXPECT_TRUE(ValidateRegisterBuffer(r).ok());
  r.set_size_bytes(0);
  EXPECT_STATUS(ValidateRegisterBuffer(r), kInvalidArgument, HasSubstr("size_bytes=0"));
  r.set_size_bytes(16);
  r.mutable_cuda_ipc()->set_ipc_handle(std::string(10, 'x'));
  EXPECT_STATUS(ValidateRegisterBuffer(r), kInvalidArgument,
                HasSubstr("cuda_ipc.ipc_handle has 10 bytes, expected 64"));
}

}  // namespace
}  // namespace attnd::server
