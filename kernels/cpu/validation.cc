#include "validation.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cpu_reference.h"

namespace attnd::kernels::cpu {
namespace {

bool IsKvStorageDType(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 ||
         t == DType::kFloat8E4M3 || t == DType::kFloat8E5M2;
}

bool IsQueryDType(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

absl::Status CheckHeadGeometry(const char* what, int32_t num_kv_heads, int32_t head_dim) {
  if (num_kv_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".num_kv_heads must be > 0, got ", num_kv_heads));
  }
  if (head_dim <= 0 || head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".head_dim must be in 1..", kMaxHeadDim, ", got ", head_dim));
  }
  return absl::OkStatus();
}

// indptr[0..batch_size] must be non-null (when batch_size > 0), start at >= 0 and not decrease.
absl::Status CheckIndptr(const char* name, const int32_t* indptr, int32_t batch_size) {
  if (indptr == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, " is null"));
  if (indptr[0] < 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, "[0] must be >= 0, got ", indptr[0]));
  }
  for (int32_t b = 0; b < batch_size; ++b) {
    if (indptr[b + 1] < indptr[b]) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " decreases at ", b + 1, ": ", indptr[b], " -> ", indptr[b + 1]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t PagedKvLen(const PagedKV& kv, int32_t b) {
  const int64_t num_pages = kv.indptr[b + 1] - kv.indptr[b];
  if (num_pages == 0) return 0;
  return (num_pages - 1) * kv.page_size + kv.last_page_len[b];
}

absl::Status ValidatePagedKV(const PagedKV& kv) {
  if (kv.data == nullptr) return absl::InvalidArgumentError("kv.data is null");
  if (!IsKvStorageDType(kv.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv.dtype ", DTypeName(kv.dtype), " is not supported by the CPU backend"));
  }
  if (auto s = CheckHeadGeometry("kv", kv.num_kv_heads, kv.head_dim); !s.ok()) return s;
  if (kv.k_scale != nullptr || kv.v_scale != nullptr) {
    if (kv.dtype != DType::kFloat8E4M3 && kv.dtype != DType::kFloat8E5M2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv.k_scale / kv.v_scale are for fp8 storage; kv.dtype is ", DTypeName(kv.dtype)));
    }
    for (const auto& [name, scale] :
         {std::pair{"kv.k_scale", kv.k_scale}, std::pair{"kv.v_scale", kv.v_scale}}) {
      for (int32_t h = 0; scale != nullptr && h < kv.num_kv_heads; ++h) {
        if (!(scale[h] > 0.f) || !std::isfinite(scale[h])) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, "[", h, "]=", scale[h], " must be finite and > 0"));
        }
      }
    }
  }
  if (kv.page_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv.page_size must be > 0, got ", kv.page_size));
  }
  if (kv.num_pages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv.num_pages must be >= 0, got ", kv.num_pages));
  }
  if (kv.page_stride <= 0 || kv.kv_stride <= 0 || kv.token_stride <= 0 || kv.head_stride <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv strides must be > 0 (SetNhdStrides?), got page ", kv.page_stride, " kv ",
                     kv.kv_stride, " token ", kv.token_stride, " head ", kv.head_stride));
  }
  if (kv.batch_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv.batch_size must be >= 0, got ", kv.batch_size));
  }
  if (auto s = CheckIndptr("kv.indptr", kv.indptr, kv.batch_size); !s.ok()) return s;
  if (kv.batch_size > 0 && kv.last_page_len == nullptr) {
    return absl::InvalidArgumentError("kv.last_page_len is null");
  }
  const int32_t first = kv.indptr[0], last = kv.indptr[kv.batch_size];
  if (last > first && kv.indices == nullptr)
    return absl::InvalidArgumentError("kv.indices is null");
  for (int32_t i = first; i < last; ++i) {
    if (kv.indices[i] < 0 || kv.indices[i] >= kv.num_pages) {
      return absl::InvalidArgumentError(absl::StrCat("kv.indices[", i, "] = ", kv.indices[i],
                                                     " is outside [0, ", kv.num_pages, ")"));
    }
  }
  for (int32_t b = 0; b < kv.batch_size; ++b) {
    if (kv.indptr[b + 1] == kv.indptr[b]) continue;
    if (kv.last_page_len[b] < 1 || kv.last_page_len[b] > kv.page_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kv.last_page_len[", b, "] = ", kv.last_page_len[b], " is outside 1..", kv.page_size));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRaggedKV(const RaggedKV& kv) {
  if (!IsKvStorageDType(kv.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv.dtype ", DTypeName(kv.dtype), " is not supported by the CPU backend"));
  }
  if (auto s = CheckHeadGeometry("kv", kv.num_kv_heads, kv.head_dim); !s.ok()) return s;
  if (kv.stride_n <= 0 || kv.stride_h <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv strides must be > 0, got stride_n ",
                                                   kv.stride_n, " stride_h ", kv.stride_h));
  }
  if (kv.batch_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv.batch_size must be >= 0, got ", kv.batch_size));
  }
  if (auto s = CheckIndptr("kv.indptr", kv.indptr, kv.batch_size); !s.ok()) return s;
  if (kv.indptr[kv.batch_size] > kv.indptr[0] && (kv.k == nullptr || kv.v == nullptr)) {
    return absl::InvalidArgumentError("kv.k or kv.v is null");
  }
  return absl::OkStatus();
}

absl::Status ValidateQueryOutput(const QueryOutput& qo, int32_t kv_batch_size,
                                 int32_t num_kv_heads) {
  if (qo.batch_size != kv_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("qo.batch_size ", qo.batch_size, " != kv.batch_size ", kv_batch_size));
  }
  if (!IsQueryDType(qo.q_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("qo.q_dtype ", DTypeName(qo.q_dtype), " is not supported"));
  }
  if (qo.num_qo_heads <= 0 || qo.num_qo_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("qo.num_qo_heads ", qo.num_qo_heads,
                                                   " must be a positive multiple of num_kv_heads ",
                                                   num_kv_heads));
  }
  if (qo.qo_indptr != nullptr) {
    if (auto s = CheckIndptr("qo.qo_indptr", qo.qo_indptr, qo.batch_size); !s.ok()) return s;
  }
  const bool has_rows =
      qo.qo_indptr == nullptr ? qo.batch_size > 0 : qo.qo_indptr[qo.batch_size] > qo.qo_indptr[0];
  if (has_rows && (qo.q == nullptr || qo.o == nullptr)) {
    return absl::InvalidArgumentError("qo.q or qo.o is null");
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const AttentionOptions& options, int32_t head_dim) {
  if (!std::isfinite(options.sm_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sm_scale must be finite, got ", options.sm_scale));
  }
  if (!(options.logits_soft_cap >= 0.f) || std::isinf(options.logits_soft_cap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("logits_soft_cap must be finite and >= 0, got ", options.logits_soft_cap));
  }
  if (options.window_left < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("window_left must be >= -1, got ", options.window_left));
  }
  switch (options.pos_encoding) {
    case PosEncoding::kNone: break;
    case PosEncoding::kRopeLlama:
      if (head_dim % 2 != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("RoPE needs an even head_dim, got ", head_dim));
      }
      if (!(options.rope_theta > 0.f) || !std::isfinite(options.rope_theta) ||
          !(options.rope_scale > 0.f) || !std::isfinite(options.rope_scale)) {
        return absl::InvalidArgumentError(
            absl::StrCat("rope_theta and rope_scale must be > 0, "
                         "got ",
                         options.rope_theta, " and ", options.rope_scale));
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown pos_encoding ", static_cast<int>(options.pos_encoding)));
  }
  return absl::OkStatus();
}

absl::Status ValidateAppendKv(const AppendKvParams& params) {
  const PagedKV& kv = params.kv;
  if (auto s = ValidatePagedKV(kv); !s.ok()) return s;
  if (!AppendRowsAccepted(kv.dtype, params.RowsDtype())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "new K/V rows in ", DTypeName(params.RowsDtype()), " for a ", DTypeName(kv.dtype),
        " cache (the cache's type, or float32/float16/bfloat16 "
        "on an fp8 cache)"));
  }
  const int32_t batch = kv.batch_size;
  auto new_begin = [&](int32_t b) -> int64_t {
    return params.new_indptr ? params.new_indptr[b] : b;
  };
  if (params.new_indptr != nullptr) {
    if (params.new_indptr[0] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("new_indptr[0] must be >= 0, got ", params.new_indptr[0]));
    }
    for (int32_t b = 0; b < batch; ++b) {
      if (params.new_indptr[b + 1] < params.new_indptr[b]) {
        return absl::InvalidArgumentError(absl::StrCat("new_indptr decreases at ", b + 1));
      }
    }
  }
  for (int32_t b = 0; b < batch; ++b) {
    const int64_t new_len = new_begin(b + 1) - new_begin(b);
    if (new_len > PagedKvLen(kv, b)) {
      return absl::InvalidArgumentError(absl::StrCat("request ", b, " appends ", new_len,
                                                     " tokens but its pages hold only ",
                                                     PagedKvLen(kv, b)));
    }
  }
  if (new_begin(batch) > new_begin(0) && (params.k == nullptr || params.v == nullptr)) {
    return absl::InvalidArgumentError("k or v is null");
  }
  return absl::OkStatus();
}

absl::Status ValidatePagedAttention(const PagedAttentionParams& params) {
  const PagedKV& kv = params.kv;
  if (auto s = ValidatePagedKV(kv); !s.ok()) return s;
  if (auto s = ValidateQueryOutput(params.qo, kv.batch_size, kv.num_kv_heads); !s.ok()) return s;
  return ValidateOptions(params.options, kv.head_dim);
}

absl::Status ValidateRaggedAttention(const RaggedAttentionParams& params) {
  const RaggedKV& kv = params.kv;
  if (auto s = ValidateRaggedKV(kv); !s.ok()) return s;
  if (auto s = ValidateQueryOutput(params.qo, kv.batch_size, kv.num_kv_heads); !s.ok()) return s;
  return ValidateOptions(params.options, kv.head_dim);
}

}  // namespace attnd::kernels::cpu
