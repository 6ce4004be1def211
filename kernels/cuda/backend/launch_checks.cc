// The launch preconditions of the attnd CUDA kernels (see launch_checks.h).
#include "backend/launch_checks.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace attnd::kernels::cuda::checks {
namespace {

using absl::InvalidArgumentError;
using absl::StrCat;
using absl::UnimplementedError;

constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridYZ = 65535;

std::string Address(const void* p) {
  return StrCat("0x", absl::Hex(reinterpret_cast<uintptr_t>(p)));
}

// `field` must be aligned to `bytes` (null passes: NotNull says whether it may be null).
absl::Status Aligned(absl::string_view op, absl::string_view field, const void* p, uint32_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes == 0) return absl::OkStatus();
  return InvalidArgumentError(
      StrCat(op, ": ", field, "=", Address(p), " is not ", bytes, "-byte aligned"));
}

absl::Status NotNull(absl::string_view op, absl::string_view field, const void* p) {
  if (p != nullptr) return absl::OkStatus();
  return InvalidArgumentError(StrCat(op, ": ", field, " is null"));
}

// A tensor the kernel needs (non-null) with the given alignment.
absl::Status Tensor(absl::string_view op, absl::string_view field, const void* p, uint32_t bytes) {
  if (auto s = NotNull(op, field, p); !s.ok()) return s;
  return Aligned(op, field, p, bytes);
}

// An int32 array the kernel reads (page tables, indptr arrays).
absl::Status IntArray(absl::string_view op, absl::string_view field, const int32_t* p) {
  return Tensor(op, field, p, sizeof(int32_t));
}

// A stride (elements) of a tensor read with 16-byte vectors.
absl::Status VectorStride(absl::string_view op, absl::string_view field, int64_t stride,
                          size_t elem_size) {
  if (stride <= 0) {
    return InvalidArgumentError(StrCat(op, ": ", field, "=", stride, " must be > 0"));
  }
  if ((stride * static_cast<int64_t>(elem_size)) % kVectorBytes != 0) {
    return InvalidArgumentError(StrCat(op, ": ", field, "=", stride, " elements (",
                                       stride * static_cast<int64_t>(elem_size),
                                       " bytes) is not a multiple of ", kVectorBytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status HeadCounts(absl::string_view op, int32_t num_qo_heads, int32_t num_kv_heads) {
  if (num_kv_heads <= 0 || num_qo_heads <= 0 || num_qo_heads % num_kv_heads != 0) {
    return InvalidArgumentError(
        StrCat(op, ": num_qo_heads=", num_qo_heads,
               " is not a positive multiple of num_kv_heads=", num_kv_heads));
  }
  return absl::OkStatus();
}

absl::Status HeadDim(absl::string_view op, int32_t head_dim) {
  if (HeadDimBuilt(head_dim)) return absl::OkStatus();
  if (head_dim <= 0) return InvalidArgumentError(StrCat(op, ": head_dim=", head_dim));
  return UnimplementedError(
      StrCat(op, ": head_dim=", head_dim, " is not compiled (ATTND_CUDA_HEAD_DIMS)"));
}

// The attention kernels: q and o fp16 or bf16; K/V of q's type, or for decode (kv_may_differ)
// the other 16-bit type or fp8 e4m3 / e5m2.
absl::Status AttentionDtypes(absl::string_view op, DType q_dtype, DType kv_dtype,
                             bool kv_may_differ) {
  if (DTypeSize(q_dtype) == 0 || DTypeSize(kv_dtype) == 0) {
    return InvalidArgumentError(StrCat(op, ": unknown dtype (q ", static_cast<int>(q_dtype),
                                       ", kv ", static_cast<int>(kv_dtype), ")"));
  }
  if (q_dtype != DType::kFloat16 && q_dtype != DType::kBFloat16) {
    return UnimplementedError(
        StrCat(op, ": q dtype ", DTypeName(q_dtype), " (the CUDA kernels take fp16 and bf16)"));
  }
  if (kv_dtype == q_dtype) return absl::OkStatus();
  if (kv_may_differ &&
      (kv_dtype == DType::kFloat16 || kv_dtype == DType::kBFloat16 || IsFp8(kv_dtype))) {
    return absl::OkStatus();
  }
  if (kv_dtype == DType::kFloat32) {
    return UnimplementedError(
        StrCat(op, ": kv dtype float32 (the CUDA kernels read fp16, bf16 and fp8 K/V)"));
  }
  return UnimplementedError(StrCat(op, ": kv dtype ", DTypeName(kv_dtype), " with q dtype ",
                                   DTypeName(q_dtype),
                                   " (the CUDA prefill kernels read K/V of q's type; fp8 and "
                                   "mixed 16-bit K/V run in decode plans)"));
}

absl::Status Options(absl::string_view op, const AttentionOptions& o) {
  // Read by the decode kernels whenever it is set.
  if (auto s = Aligned(op, "rope_offsets", o.rope_offsets, sizeof(int32_t)); !s.ok()) return s;
  // [num_qo_heads] floats, read one by one at every row's finalization (FinalizeRow).
  if (auto s = Aligned(op, "sinks", o.sinks, sizeof(float)); !s.ok()) return s;
  // The custom mask (a plan's, CustomMaskView): words read as uint32, the per-request arrays as
  // int32; all three or none.
  const CustomMaskView& m = o.custom_mask;
  if ((m.words == nullptr) != (m.word_offset == nullptr) ||
      (m.words == nullptr) != (m.dense_until == nullptr)) {
    return InvalidArgumentError(
        StrCat(op, ": custom_mask needs words, word_offset and dense_until together (or none)"));
  }
  if (auto s = Aligned(op, "custom_mask.words", m.words, sizeof(uint32_t)); !s.ok()) return s;
  if (auto s = Aligned(op, "custom_mask.word_offset", m.word_offset, sizeof(int32_t)); !s.ok()) {
    return s;
  }
  if (auto s = Aligned(op, "custom_mask.dense_until", m.dense_until, sizeof(int32_t)); !s.ok()) {
    return s;
  }
  if (!std::isfinite(o.sm_scale)) {
    return InvalidArgumentError(StrCat(op, ": sm_scale=", o.sm_scale, " is not finite"));
  }
  if (!(o.logits_soft_cap >= 0.f) || std::isinf(o.logits_soft_cap)) {
    return InvalidArgumentError(
        StrCat(op, ": logits_soft_cap=", o.logits_soft_cap, " must be finite and >= 0"));
  }
  if (o.window_left < -1) {
    return InvalidArgumentError(
        StrCat(op, ": window_left=", o.window_left, " must be >= -1 (-1 = no window)"));
  }
  switch (o.pos_encoding) {
    case PosEncoding::kNone: return absl::OkStatus();
    case PosEncoding::kRopeLlama:
      if (!(o.rope_theta > 0.f) || !std::isfinite(o.rope_theta) || !(o.rope_scale > 0.f) ||
          !std::isfinite(o.rope_scale)) {
        return InvalidArgumentError(StrCat(op, ": rope_theta=", o.rope_theta, " and rope_scale=",
                                           o.rope_scale, " must be finite and > 0"));
      }
      return absl::OkStatus();
  }
  return InvalidArgumentError(
      StrCat(op, ": unknown pos_encoding ", static_cast<int>(o.pos_encoding)));
}

// q and o (16-byte vectors), lse (optional, one float per row and head).
absl::Status QueryOutputs(absl::string_view op, const QueryOutput& qo) {
  if (auto s = Tensor(op, "q", qo.q, kVectorBytes); !s.ok()) return s;
  if (auto s = Tensor(op, "o", qo.o, kVectorBytes); !s.ok()) return s;
  return Aligned(op, "lse", qo.lse, sizeof(float));
}

absl::Status MatchesPlan(absl::string_view op, const PlanShape& plan, int32_t batch_size,
                         int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim) {
  if (batch_size == plan.batch_size && num_qo_heads == plan.num_qo_heads &&
      num_kv_heads == plan.num_kv_heads && head_dim == plan.head_dim) {
    return absl::OkStatus();
  }
  return InvalidArgumentError(
      StrCat(op, ": call shape (batch ", batch_size, ", qo heads ", num_qo_heads, ", kv heads ",
             num_kv_heads, ", head_dim ", head_dim, ") differs from the plan's (", plan.batch_size,
             ", ", plan.num_qo_heads, ", ", plan.num_kv_heads, ", ", plan.head_dim, ")"));
}

// The paged cache as the attention and append kernels read it: 16-byte rows at 16-byte strides,
// a page table.
absl::Status PagedLayout(absl::string_view op, const PagedKV& kv) {
  const size_t es = DTypeSize(kv.dtype);
  if (es == 0) {
    return InvalidArgumentError(StrCat(op, ": unknown kv dtype ", static_cast<int>(kv.dtype)));
  }
  if (kv.page_size <= 0) {
    return InvalidArgumentError(StrCat(op, ": kv.page_size=", kv.page_size, " must be > 0"));
  }
  if ((kv.k_scale != nullptr || kv.v_scale != nullptr) && !IsFp8(kv.dtype)) {
    return InvalidArgumentError(StrCat(op, ": kv.k_scale / kv.v_scale are set on a ",
                                       DTypeName(kv.dtype), " cache (fp8 caches only)"));
  }
  if (auto s = Aligned(op, "kv.k_scale", kv.k_scale, sizeof(float)); !s.ok()) return s;
  if (auto s = Aligned(op, "kv.v_scale", kv.v_scale, sizeof(float)); !s.ok()) return s;
  if (kv.num_kv_heads <= 0 || kv.head_dim <= 0) {
    return InvalidArgumentError(StrCat(op, ": kv.num_kv_heads=", kv.num_kv_heads,
                                       ", kv.head_dim=", kv.head_dim, " must be > 0"));
  }
  if ((kv.head_dim * es) % kVectorBytes != 0) {
    return InvalidArgumentError(StrCat(op, ": kv.head_dim=", kv.head_dim, " x ", es,
                                       " bytes is not a multiple of ", kVectorBytes, " bytes"));
  }
  if (auto s = Tensor(op, "kv.data", kv.data, kVectorBytes); !s.ok()) return s;
  if (auto s = VectorStride(op, "kv.page_stride", kv.page_stride, es); !s.ok()) return s;
  if (auto s = VectorStride(op, "kv.kv_stride", kv.kv_stride, es); !s.ok()) return s;
  if (auto s = VectorStride(op, "kv.token_stride", kv.token_stride, es); !s.ok()) return s;
  if (auto s = VectorStride(op, "kv.head_stride", kv.head_stride, es); !s.ok()) return s;
  if (kv.batch_size < 0 || kv.batch_size > kMaxGridX) {
    return InvalidArgumentError(StrCat(op, ": kv.batch_size=", kv.batch_size));
  }
  if (auto s = IntArray(op, "kv.indptr", kv.indptr); !s.ok()) return s;
  if (auto s = IntArray(op, "kv.indices", kv.indices); !s.ok()) return s;
  return IntArray(op, "kv.last_page_len", kv.last_page_len);
}

absl::Status SameBatch(absl::string_view op, int32_t kv_batch, int32_t qo_batch) {
  if (kv_batch == qo_batch) return absl::OkStatus();
  return InvalidArgumentError(
      StrCat(op, ": kv.batch_size=", kv_batch, " != qo.batch_size=", qo_batch));
}

// What every attention run checks: dtypes, head_dim, the plan's shape, the options, q/o/lse.
absl::Status AttentionCall(absl::string_view op, const PlanShape& plan, const QueryOutput& qo,
                           DType kv_dtype, bool kv_may_differ, int32_t num_kv_heads,
                           int32_t head_dim, int32_t kv_batch_size,
                           const AttentionOptions& options) {
  if (auto s = AttentionDtypes(op, qo.q_dtype, kv_dtype, kv_may_differ); !s.ok()) return s;
  if (auto s = HeadDim(op, head_dim); !s.ok()) return s;
  if (auto s = MatchesPlan(op, plan, qo.batch_size, qo.num_qo_heads, num_kv_heads, head_dim);
      !s.ok()) {
    return s;
  }
  if (auto s = SameBatch(op, kv_batch_size, qo.batch_size); !s.ok()) return s;
  if (auto s = Options(op, options); !s.ok()) return s;
  return QueryOutputs(op, qo);
}

// Decode and paged prefill: the attention call over the paged cache.
absl::Status PagedAttention(absl::string_view op, const PlanShape& plan,
                            const PagedAttentionParams& p, bool kv_may_differ) {
  const PagedKV& kv = p.kv;
  if (auto s = AttentionCall(op, plan, p.qo, kv.dtype, kv_may_differ, kv.num_kv_heads, kv.head_dim,
                             kv.batch_size, p.options);
      !s.ok()) {
    return s;
  }
  return PagedLayout(op, kv);
}

}  // namespace

bool TcDecodeBuilt(int32_t head_dim) { return HeadDimBuilt(head_dim) && head_dim <= 128; }

bool HeadDimBuilt(int32_t head_dim) {
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64: return true;
#endif
#ifdef ATTND_CUDA_HD128
    case 128: return true;
#endif
#ifdef ATTND_CUDA_HD256
    case 256: return true;
#endif
    default: return false;
  }
}

absl::Status DecodePlan(std::span<const int32_t> kv_len, int32_t num_qo_heads, int32_t num_kv_heads,
                        int32_t head_dim, int32_t page_size, bool tensor_cores_forced) {
  constexpr absl::string_view op = "PrepareDecode";
  if (kv_len.empty()) return InvalidArgumentError("PrepareDecode: empty batch");
  if (static_cast<int64_t>(kv_len.size()) > kMaxGridX) {
    return InvalidArgumentError(StrCat(op, ": batch of ", kv_len.size(), " requests"));
  }
  if (auto s = HeadCounts(op, num_qo_heads, num_kv_heads); !s.ok()) return s;
  if (num_qo_heads > kMaxGridYZ) {  // the grid's y dimension: kv heads x head tiles
    return InvalidArgumentError(
        StrCat(op, ": num_qo_heads=", num_qo_heads, " (at most ", kMaxGridYZ, ")"));
  }
  if (auto s = HeadDim(op, head_dim); !s.ok()) return s;
  if (tensor_cores_forced && head_dim != 64 && head_dim != 128) {
    return UnimplementedError(StrCat(op, ": no tensor-core decode kernel for head_dim=", head_dim));
  }
  if (page_size <= 0) {
    return InvalidArgumentError(StrCat(op, ": page_size=", page_size, " must be > 0"));
  }
  for (size_t b = 0; b < kv_len.size(); ++b) {
    if (kv_len[b] < 1) {
      return InvalidArgumentError(StrCat(op, ": kv_len[", b, "]=", kv_len[b], " (must be >= 1)"));
    }
  }
  return absl::OkStatus();
}

absl::Status PrefillPlan(std::span<const int32_t> qo_indptr, std::span<const int32_t> kv_len,
                         int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim) {
  constexpr absl::string_view op = "PreparePrefill";
  if (qo_indptr.empty()) return InvalidArgumentError("PreparePrefill: qo_indptr is empty");
  const size_t batch = qo_indptr.size() - 1;
  if (kv_len.size() != batch) {
    return InvalidArgumentError(
        StrCat(op, ": kv_len has ", kv_len.size(), " entries, qo_indptr implies ", batch));
  }
  if (auto s = HeadCounts(op, num_qo_heads, num_kv_heads); !s.ok()) return s;
  if (auto s = HeadDim(op, head_dim); !s.ok()) return s;
  if (qo_indptr[0] != 0) {
    return InvalidArgumentError(StrCat(op, ": qo_indptr[0]=", qo_indptr[0], " (must be 0)"));
  }
  for (size_t b = 0; b < batch; ++b) {
    if (qo_indptr[b + 1] < qo_indptr[b]) {
      return InvalidArgumentError(StrCat(op, ": qo_indptr decreases at ", b + 1, ": ", qo_indptr[b],
                                         " -> ", qo_indptr[b + 1]));
    }
    // kv_len < qo_len is allowed (as in the CPU reference): the earliest rows then sit at
    // negative positions and, when causal, see nothing (o = 0, lse = -inf).
    if (kv_len[b] < 0) {
      return InvalidArgumentError(StrCat(op, ": kv_len[", b, "]=", kv_len[b]));
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeRun(const PlanShape& plan, const PagedAttentionParams& params) {
  if (params.options.custom_mask.words != nullptr) {
    return InvalidArgumentError(
        "decode: a custom mask needs a prefill plan (the decode kernels apply none)");
  }
  return PagedAttention("decode", plan, params, /*kv_may_differ=*/true);
}

absl::Status PagedPrefillRun(const PlanShape& plan, const PagedAttentionParams& params) {
  constexpr absl::string_view op = "prefill";
  if (auto s = PagedAttention(op, plan, params, /*kv_may_differ=*/false); !s.ok()) return s;
  return IntArray(op, "qo.qo_indptr", params.qo.qo_indptr);
}

absl::Status RaggedPrefillRun(const PlanShape& plan, const RaggedAttentionParams& params) {
  constexpr absl::string_view op = "prefill (ragged)";
  if (params.options.custom_mask.words != nullptr) {
    return InvalidArgumentError("prefill (ragged): ragged K/V runs take no custom mask");
  }
  const QueryOutput& qo = params.qo;
  const RaggedKV& kv = params.kv;
  if (auto s = AttentionCall(op, plan, qo, kv.dtype, /*kv_may_differ=*/false, kv.num_kv_heads,
                             kv.head_dim, kv.batch_size, params.options);
      !s.ok()) {
    return s;
  }
  if (auto s = IntArray(op, "qo.qo_indptr", qo.qo_indptr); !s.ok()) return s;
  const size_t es = DTypeSize(kv.dtype);
  if (auto s = Tensor(op, "kv.k", kv.k, kVectorBytes); !s.ok()) return s;
  if (auto s = Tensor(op, "kv.v", kv.v, kVectorBytes); !s.ok()) return s;
  if (auto s = VectorStride(op, "kv.stride_n", kv.stride_n, es); !s.ok()) return s;
  if (auto s = VectorStride(op, "kv.stride_h", kv.stride_h, es); !s.ok()) return s;
  return IntArray(op, "kv.indptr", kv.indptr);
}

absl::Status AppendKv(const AppendKvParams& params) {
  constexpr absl::string_view op = "append_kv";
  const PagedKV& kv = params.kv;
  if (kv.batch_size == 0) return absl::OkStatus();  // nothing to launch
  if (auto s = PagedLayout(op, kv); !s.ok()) return s;
  if (!AppendRowsAccepted(kv.dtype, params.RowsDtype())) {
    return InvalidArgumentError(StrCat(op, ": new rows in ", DTypeName(params.RowsDtype()),
                                       " for a ", DTypeName(kv.dtype),
                                       " cache (its own type, or fp32/fp16/bf16 on an fp8 "
                                       "cache)"));
  }
  if (auto s = Tensor(op, "k", params.k, kVectorBytes); !s.ok()) return s;
  if (auto s = Tensor(op, "v", params.v, kVectorBytes); !s.ok()) return s;
  return Aligned(op, "new_indptr", params.new_indptr, sizeof(int32_t));
}

absl::Status MergeStates(const MergeStatesParams& p) {
  constexpr absl::string_view op = "merge_states";
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    if (DTypeSize(p.dtype) == 0) {
      return InvalidArgumentError(StrCat(op, ": unknown dtype ", static_cast<int>(p.dtype)));
    }
    return UnimplementedError(
        StrCat(op, ": dtype ", DTypeName(p.dtype), " (fp32, fp16 or bf16 only)"));
  }
  if (p.num_rows < 0 || p.num_heads < 0 || p.num_states < 0) {
    return InvalidArgumentError(StrCat(op, ": num_rows=", p.num_rows, ", num_heads=", p.num_heads,
                                       ", num_states=", p.num_states, " must be >= 0"));
  }
  if (p.pair() && p.num_states != 2) {
    return InvalidArgumentError(
        StrCat(op, ": the pair form (v_in_b, s_in_b) has 2 states, not num_states=", p.num_states));
  }
  if (p.num_rows == 0 || p.num_heads == 0) return absl::OkStatus();  // nothing to launch
  if (p.head_dim <= 0 || p.head_dim % 4 != 0) {
    return InvalidArgumentError(
        StrCat(op, ": head_dim=", p.head_dim, " must be a positive multiple of 4"));
  }
  if ((p.num_heads + 3) / 4 > kMaxGridYZ) {
    return InvalidArgumentError(
        StrCat(op, ": num_heads=", p.num_heads, " (at most ", 4 * kMaxGridYZ, ")"));
  }
  // The kernel indexes the states of all rows with 32-bit ints (the pair form: by row).
  if (!p.pair() && static_cast<int64_t>(p.num_rows) * p.num_states > kMaxGridX) {
    return InvalidArgumentError(StrCat(op, ": num_rows=", p.num_rows, " x num_states=",
                                       p.num_states, " is over ", kMaxGridX, " states"));
  }
  // Rows are read and written 4 elements at a time. Without states (num_states = 0: every row
  // gets v = 0, s = -inf) the inputs are never read and may be null.
  const uint32_t vec = 4 * static_cast<uint32_t>(DTypeSize(p.dtype));
  if (p.num_states > 0) {
    if (auto s = Tensor(op, "v_in", p.v_in, vec); !s.ok()) return s;
    if (auto s = Tensor(op, "s_in", p.s_in, sizeof(float)); !s.ok()) return s;
  }
  if (p.pair()) {
    if (auto s = Tensor(op, "v_in_b", p.v_in_b, vec); !s.ok()) return s;
    if (auto s = Tensor(op, "s_in_b", p.s_in_b, sizeof(float)); !s.ok()) return s;
  }
  if (auto s = Tensor(op, "v_out", p.v_out, vec); !s.ok()) return s;
  return Aligned(op, "s_out", p.s_out, sizeof(float));
}

}  // namespace attnd::kernels::cuda::checks
