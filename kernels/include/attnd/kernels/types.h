// Plain data types shared by every attnd attention backend (CPU reference, CUDA).
//
// Everything here is trivially copyable and holds no ownership: pointers refer to the backend's
// memory (host memory for the CPU backend, device memory for CUDA). The same structs are passed
// by value to CUDA kernels, so they contain no std:: containers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace attnd::kernels {

// Element types. Numbering is internal (the wire API has its own enum).
enum class DType : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat8E4M3 = 3,  // K/V storage only
  kFloat8E5M2 = 4,  // K/V storage only
};

constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat8E4M3: return 1;
    case DType::kFloat8E5M2: return 1;
  }
  return 0;
}

// FP8 K/V storage (with the pool's dequantization scales).
constexpr bool IsFp8(DType t) { return t == DType::kFloat8E4M3 || t == DType::kFloat8E5M2; }

// The types new K/V rows may be given in for a cache of `cache` type: the cache's own (copied as
// they are), and on an fp8 cache also float32, float16 and bfloat16 (quantized on the way in,
// AppendKvParams::new_dtype).
constexpr bool AppendRowsAccepted(DType cache, DType rows) {
  return rows == cache || (IsFp8(cache) && (rows == DType::kFloat32 || rows == DType::kFloat16 ||
                                            rows == DType::kBFloat16));
}

constexpr const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat8E4M3: return "float8_e4m3";
    case DType::kFloat8E5M2: return "float8_e5m2";
  }
  return "unknown";
}

enum class PosEncoding : int32_t {
  kNone = 0,
  kRopeLlama = 1,  // rotate q and k on the fly; K is stored unrotated in the cache
};

enum class AttentionKind : int32_t {
  kDecode = 0,   // one query token per request
  kPrefill = 1,  // qo_len tokens per request; "append" when kv_len > qo_len
};

// Variant options of one attention call. Defaults reproduce plain softmax attention.
// A custom mask (tree / speculative-decoding verification) in backend memory, in the row-word
// layout every backend reads (custom_mask.h builds it from the wire's packed bits): row i of
// request b (its i-th query row) is ceil(kv_len_b / 32) uint32 words from
// words + word_offset[b] + i * ceil(kv_len_b / 32); bit j % 32 of word j / 32 set = kv position j
// visible. Every row of request b sees the kv positions below dense_until[b] (a hint: kernels read
// no bits in tiles that end before it). At least kCustomMaskPadWords zero words follow the last
// row. words null: no custom mask.
struct CustomMaskView {
  const uint32_t* words = nullptr;
  const int32_t* word_offset = nullptr;  // [batch]
  const int32_t* dense_until = nullptr;  // [batch]
};
// Zero words after a mask's last row: a kernel reading the 32 bits that start at a kv position
// of a tile can run up to one tile of keys past a row's end (tiles of at most 448 keys).
inline constexpr int32_t kCustomMaskPadWords = 16;

struct AttentionOptions {
  float sm_scale = 0.f;  // 0 = 1/sqrt(head_dim)
  bool causal = false;   // prefill only; decode is causal by construction
  PosEncoding pos_encoding = PosEncoding::kNone;
  float rope_theta = 1e4f;
  float rope_scale = 1.f;                 // positions are divided by rope_scale
  const int32_t* rope_offsets = nullptr;  // [batch] added to q and k positions; null = 0
  float logits_soft_cap = 0.f;  // > 0: s = cap * tanh(s / cap), applied to the scaled logit
  int32_t window_left = -1;     // >= 0: query at position p sees kv positions [p - window_left, p]
  // Attention sinks (gpt-oss; FlashInfer's AttentionSink variant): [num_qo_heads] float32 in
  // backend memory, or null. Query head h's softmax runs over its visible keys plus one logit
  // sinks[h] that has no value, in the units of the scaled, soft-capped logits s:
  //   o = sum_j exp(s_j - m) v_j / (sum_j exp(s_j - m) + exp(sinks[h] - m)),
  //   lse = log(sum_j exp(s_j) + exp(sinks[h]))   (the LSE of the whole softmax, sink included).
  // A row that sees no key gets o = 0 and lse = sinks[h].
  const float* sinks = nullptr;
  // Custom mask of a prefill plan (PlanSpec::custom_mask), applied with causal and the window: a
  // key is visible when all three allow it; a row that sees no key gets o = 0, lse = -inf (or the
  // sink). Backends set it from the plan they run (a RunArgs' own value is ignored); the CPU
  // reference functions read it as given. Decode refuses one.
  CustomMaskView custom_mask;
};

// The paged KV cache of one layer, plus a batch's CSR page table: a non-owning view.
//
// Layout (NHD) of one layer: [num_pages][2][page_size][num_kv_heads][head_dim]; index 0 of the 2
// is K, 1 is V. Element (page p, kv i, token t, head h, dim d) is at
//   data + p*page_stride + i*kv_stride + t*token_stride + h*head_stride + d     (in elements).
// Request b reads pages indices[indptr[b] .. indptr[b+1]) in order; the last holds
// last_page_len[b] (1..page_size) tokens:  kv_len(b) = (n_pages - 1) * page_size + last_page_len.
struct PagedKV {
  void* data = nullptr;
  DType dtype = DType::kFloat16;
  int32_t num_pages = 0;
  int32_t page_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int64_t page_stride = 0;   // elements; NHD = 2 * page_size * num_kv_heads * head_dim
  int64_t kv_stride = 0;     // elements; NHD = page_size * num_kv_heads * head_dim
  int64_t token_stride = 0;  // elements; NHD = num_kv_heads * head_dim
  int64_t head_stride = 0;   // elements; NHD = head_dim

  // FP8 storage: the layer's dequantization scales, [num_kv_heads] float32 in backend memory (a
  // pool's per-tensor scale repeated over the heads), or null = 1. A stored K element k8 of KV
  // head h stands for k8 * k_scale[h] (V likewise with v_scale): attention reads K as
  // float(k8) * k_scale[h] and V as float(v8) * v_scale[h] (float32 products); appends copy rows
  // given in the fp8 dtype (quantized by the caller with the same scales). Set only with an fp8
  // dtype; each scale finite and > 0.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  int32_t batch_size = 0;
  const int32_t* indptr = nullptr;         // [batch_size + 1]
  const int32_t* indices = nullptr;        // [indptr[batch_size]]
  const int32_t* last_page_len = nullptr;  // [batch_size]

  // Fills the four strides for the NHD layout from page_size, num_kv_heads and head_dim.
  constexpr void SetNhdStrides() {
    head_stride = head_dim;
    token_stride = static_cast<int64_t>(num_kv_heads) * head_dim;
    kv_stride = static_cast<int64_t>(page_size) * token_stride;
    page_stride = 2 * kv_stride;
  }
};

// Contiguous ("ragged") K/V of a batch: request b's keys are rows indptr[b] .. indptr[b+1) of
// k and v, each [kv_nnz, num_kv_heads, head_dim] with the given row and head strides (elements).
struct RaggedKV {
  const void* k = nullptr;
  const void* v = nullptr;
  DType dtype = DType::kFloat16;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int64_t stride_n = 0;  // elements between tokens
  int64_t stride_h = 0;  // elements between heads
  int32_t batch_size = 0;
  const int32_t* indptr = nullptr;  // [batch_size + 1]
};

// Query/output side of a batched attention call.
//   q:   [qo_nnz, num_qo_heads, head_dim] in q_dtype (row-major, dense)
//   o:   [qo_nnz, num_qo_heads, head_dim] in q_dtype
//   lse: [qo_nnz, num_qo_heads] float32, natural-log log-sum-exp of the scaled logits (and of the
//        sink, AttentionOptions::sinks); optional
// Request b's query rows are qo_indptr[b] .. qo_indptr[b+1); null qo_indptr means one row per
// request (decode). The query rows are the last qo_len tokens of the sequence, so row i of
// request b sits at kv position kv_len(b) - qo_len(b) + i (used by causal masks, windows, RoPE).
struct QueryOutput {
  const void* q = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  DType q_dtype = DType::kFloat16;
  int32_t num_qo_heads = 0;
  int32_t batch_size = 0;
  const int32_t* qo_indptr = nullptr;  // [batch_size + 1] or null (one row per request)
};

// Batched attention over the paged cache: decode (one row per request) or prefill/append.
struct PagedAttentionParams {
  QueryOutput qo;
  PagedKV kv;
  AttentionOptions options;
};

// Batched attention over ragged contiguous K/V (prefill without a cache).
struct RaggedAttentionParams {
  QueryOutput qo;
  RaggedKV kv;
  AttentionOptions options;
};

// Writes new tokens into the paged cache: row j of k/v (request b's i-th new token, rows
// new_indptr[b] .. new_indptr[b+1)) goes to kv position kv_len(b) - new_len(b) + i of request b.
// k, v: [new_nnz, num_kv_heads, head_dim] in new_dtype, dense.
struct AppendKvParams {
  PagedKV kv;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* new_indptr = nullptr;  // [kv.batch_size + 1]
  // The rows' type (AppendRowsAccepted): unset or kv.dtype, copied as they are; or, on an fp8
  // cache, float32 / float16 / bfloat16, quantized with the cache's scales: element x of KV head
  // h is stored as fp8(x / k_scale[h]) for K (v_scale for V; 1 where the scale is null), the
  // float32 quotient rounded to nearest even and saturated to the largest finite fp8 value (NaN
  // stays NaN) -- what every backend computes, bit for bit. Unset by default, so that a caller
  // who never thinks of it copies rows of the cache's own type (a fixed default type would
  // quantize fp8 rows as if they were that type).
  std::optional<DType> new_dtype;
  DType RowsDtype() const { return new_dtype.value_or(kv.dtype); }
};

// Merges attention states: for each row r and head h, the states (v_i, s_i) for i < num_states
// (v: [num_rows, num_heads, head_dim] in dtype, s: [num_rows, num_heads] float32 natural-log LSE)
// laid out as v_in[r][i][h][:] and s_in[r][i][h], are combined into v_out[r][h][:], s_out[r][h].
//   s = log(sum_i exp(s_i)),  v = sum_i exp(s_i - s) * v_i
// A state with s_i = -inf contributes nothing (an empty partition); a row whose states are all
// empty, or that has none (num_states = 0: v_in and s_in may be null), gets v = 0 and s = -inf.
//
// The pair form (FlashInfer's merge_state(v_a, s_a, v_b, s_b)): with v_in_b and s_in_b set,
// num_states is 2 and the two states of row r are (v_in[r], s_in[r]) and (v_in_b[r], s_in_b[r]),
// each [num_rows, num_heads, head_dim] / [num_rows, num_heads].
//
// In place: v_out may be exactly the memory of an input laid out as it is (v_in with
// num_states = 1, or v_in / v_in_b of the pair form), and s_out likewise of s_in / s_in_b: each
// (row, head) reads all of its inputs before it writes its outputs. Other overlaps are undefined.
struct MergeStatesParams {
  const void* v_in = nullptr;   // [num_rows, num_states, num_heads, head_dim]
  const float* s_in = nullptr;  // [num_rows, num_states, num_heads]
  void* v_out = nullptr;        // [num_rows, num_heads, head_dim]
  float* s_out = nullptr;       // [num_rows, num_heads], optional
  DType dtype = DType::kFloat16;
  int32_t num_rows = 0;
  int32_t num_states = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  const void* v_in_b = nullptr;   // pair form: [num_rows, num_heads, head_dim], or null
  const float* s_in_b = nullptr;  // pair form: [num_rows, num_heads], or null

  constexpr bool pair() const { return v_in_b != nullptr || s_in_b != nullptr; }
};

}  // namespace attnd::kernels
