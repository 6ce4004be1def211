#include "server/core/validation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attnd/kernels/custom_mask.h"
#include "server/core/dtype_convert.h"

namespace attnd::server {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

template <typename T>
bool Contains(const std::vector<T>& values, T v) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

std::string DTypeList(const std::vector<kernels::DType>& dtypes) {
  return absl::StrJoin(dtypes, ", ", [](std::string* out, kernels::DType t) {
    absl::StrAppend(out, ProtoDTypeName(ToProtoDType(t)));
  });
}

absl::Status InvalidArg(auto&&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

}  // namespace

absl::Status NotOwnedError(absl::string_view field, absl::string_view id, absl::string_view tail) {
  return absl::NotFoundError(absl::StrCat(field, "='", Echo(id), "'", tail));
}

bool CheckedMul(uint64_t x, uint64_t y, uint64_t* out) {
  return !__builtin_mul_overflow(x, y, out);
}

std::string Echo(absl::string_view value, size_t max_bytes) {
  std::string out;
  const size_t shown = std::min(value.size(), max_bytes);
  out.reserve(shown + 24);
  for (size_t i = 0; i < shown; ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (shown < value.size()) absl::StrAppend(&out, "...(", value.size(), " bytes)");
  return out;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  constexpr size_t kShown = 8;
  if (shape.size() <= kShown) return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
  return absl::StrCat("[", absl::StrJoin(shape.subspan(0, kShown), ","), ",...] (", shape.size(),
                      " dims)");
}

absl::Status ValidatePoolName(absl::string_view name, absl::string_view field) {
  if (name.empty() || name.size() > 64) {
    return InvalidArg(field, "='", Echo(name), "' must be 1..64 characters of [A-Za-z0-9_.-]");
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) {
      return InvalidArg(field, " has character ", static_cast<int>(static_cast<unsigned char>(c)),
                        " at index ", i, "; allowed: [A-Za-z0-9_.-]");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PoolGeometry> ValidateCreatePool(const v1::CreatePoolRequest& request,
                                                const kernels::BackendInfo& backend) {
  if (auto s = ValidatePoolName(request.name()); !s.ok()) return s;
  PoolGeometry g;
  if (request.num_layers() < 1 || request.num_layers() > kMaxLayers) {
    return InvalidArg("num_layers=", request.num_layers(), " must be in 1..", kMaxLayers);
  }
  if (request.num_kv_heads() < 1 || request.num_kv_heads() > kMaxKvHeads) {
    return InvalidArg("num_kv_heads=", request.num_kv_heads(), " must be in 1..", kMaxKvHeads);
  }
  if (!Contains(backend.head_dims, request.head_dim())) {
    return InvalidArg("head_dim=", request.head_dim(), " is not supported by the ", backend.name,
                      " backend (supported: ", absl::StrJoin(backend.head_dims, ", "), ")");
  }
  if (request.page_size() < 1 || request.page_size() > kMaxPageSize) {
    return InvalidArg("page_size=", request.page_size(), " must be in 1..", kMaxPageSize);
  }
  if (!backend.page_sizes.empty() && !Contains(backend.page_sizes, request.page_size())) {
    return InvalidArg("page_size=", request.page_size(), " is not supported by the ", backend.name,
                      " backend (supported: ", absl::StrJoin(backend.page_sizes, ", "), ")");
  }
  auto kv_dtype = FromProtoDType(request.kv_dtype(), "kv_dtype");
  if (!kv_dtype.ok()) return kv_dtype.status();
  if (!Contains(backend.kv_dtypes, *kv_dtype)) {
    return InvalidArg("kv_dtype=", ProtoDTypeName(request.kv_dtype()), " is not supported by the ",
                      backend.name, " backend (supported: ", DTypeList(backend.kv_dtypes), ")");
  }
  if (request.layout() != v1::KV_LAYOUT_UNSPECIFIED && request.layout() != v1::KV_LAYOUT_NHD) {
    return InvalidArg("layout=", static_cast<int>(request.layout()),
                      " is not supported (NHD only)");
  }
  g.num_layers = request.num_layers();
  g.num_kv_heads = request.num_kv_heads();
  g.head_dim = request.head_dim();
  g.page_size = request.page_size();
  g.kv_dtype = *kv_dtype;

  // page_bytes = 2 * page_size * num_kv_heads * head_dim * elem: bounded by the limits above,
  // but computed with checks anyway so the limits can change safely.
  uint64_t page_bytes = 2;
  if (!CheckedMul(page_bytes, static_cast<uint64_t>(g.page_size), &page_bytes) ||
      !CheckedMul(page_bytes, static_cast<uint64_t>(g.num_kv_heads), &page_bytes) ||
      !CheckedMul(page_bytes, static_cast<uint64_t>(g.head_dim), &page_bytes) ||
      !CheckedMul(page_bytes, kernels::DTypeSize(g.kv_dtype), &page_bytes)) {
    return InvalidArg("page of page_size=", g.page_size, ", num_kv_heads=", g.num_kv_heads,
                      ", head_dim=", g.head_dim, " overflows 64 bits");
  }
  uint64_t page_all_layers = 0;
  if (!CheckedMul(page_bytes, static_cast<uint64_t>(g.num_layers), &page_all_layers)) {
    return InvalidArg("num_layers=", g.num_layers, ": pool size overflows 64 bits");
  }

  const bool has_pages = request.num_pages() != 0;
  const bool has_budget = request.memory_budget_bytes() != 0;
  if (has_pages == has_budget) {
    return InvalidArg("exactly one of num_pages (", request.num_pages(),
                      ") and memory_budget_bytes (", request.memory_budget_bytes(),
                      ") must be set");
  }
  int64_t num_pages = 0;
  if (has_pages) {
    if (request.num_pages() < 1 || request.num_pages() > kInt32Max) {
      return InvalidArg("num_pages=", request.num_pages(), " must be in 1..", kInt32Max);
    }
    num_pages = request.num_pages();
  } else {
    const uint64_t pages = request.memory_budget_bytes() / page_all_layers;
    if (pages < 1) {
      return InvalidArg("memory_budget_bytes=", request.memory_budget_bytes(),
                        " is smaller than one page across all layers (", page_all_layers,
                        " bytes)");
    }
    num_pages = static_cast<int64_t>(std::min<uint64_t>(pages, kInt32Max));
  }
  uint64_t layer_bytes = 0, total_bytes = 0;
  if (!CheckedMul(page_bytes, static_cast<uint64_t>(num_pages), &layer_bytes) ||
      !CheckedMul(layer_bytes, static_cast<uint64_t>(g.num_layers), &total_bytes)) {
    return InvalidArg("num_pages=", num_pages, ": pool size overflows 64 bits");
  }
  g.num_pages = static_cast<int32_t>(num_pages);
  g.page_bytes = page_bytes;
  g.layer_bytes = layer_bytes;
  g.total_bytes = total_bytes;

  // FP8 scales: none, one per layer, or one per layer and KV head; finite and > 0.
  const bool fp8 = kernels::IsFp8(g.kv_dtype);
  const int64_t per_head = static_cast<int64_t>(g.num_layers) * g.num_kv_heads;
  for (const auto& [field, values, out] : {std::tuple{"k_scale", &request.k_scale(), &g.k_scale},
                                           std::tuple{"v_scale", &request.v_scale(), &g.v_scale}}) {
    if (values->empty()) continue;
    if (!fp8) {
      return InvalidArg(
          field, " has ", values->size(),
          " values; scales are for fp8 pools (kv_dtype=", ProtoDTypeName(request.kv_dtype()), ")");
    }
    if (values->size() != g.num_layers && values->size() != per_head) {
      return InvalidArg(field, " has ", values->size(), " values, expected num_layers (",
                        g.num_layers, ") or num_layers * num_kv_heads (", per_head, ")");
    }
    for (int i = 0; i < values->size(); ++i) {
      if (!((*values)[i] > 0.f) || !std::isfinite((*values)[i])) {
        return InvalidArg(field, "[", i, "]=", (*values)[i], " must be finite and > 0");
      }
    }
    out->resize(static_cast<size_t>(per_head));
    for (int64_t e = 0; e < per_head; ++e) {
      (*out)[e] = values->size() == per_head ? (*values)[e] : (*values)[e / g.num_kv_heads];
    }
  }
  // One of the two given: the other is 1.
  if (g.k_scale.empty() != g.v_scale.empty()) {
    (g.k_scale.empty() ? g.k_scale : g.v_scale).assign(static_cast<size_t>(per_head), 1.f);
  }
  return g;
}

absl::Status ValidatePageCount(int32_t count) {
  if (count < 1) return InvalidArg("count=", count, " must be >= 1");
  return absl::OkStatus();
}

absl::Status ValidatePageIds(absl::Span<const int32_t> ids, absl::string_view field,
                             int32_t num_pages, absl::string_view pool_name) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= num_pages) {
      return absl::OutOfRangeError(absl::StrCat(field, "[", i, "]=", ids[i], " is outside 0..",
                                                num_pages - 1, " (pool '", pool_name, "' has ",
                                                num_pages, " pages)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPagesHeld(absl::Span<const int32_t> ids, absl::string_view field,
                            const PageLedger& held, absl::string_view pool_name) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (held.count(ids[i]) <= 0) {
      return PageNotHeldError(absl::StrCat(field, "[", i, "]"), ids[i], pool_name);
    }
  }
  return absl::OkStatus();
}

absl::Status PageNotHeldError(absl::string_view name, int32_t page, absl::string_view pool_name) {
  return absl::PermissionDeniedError(absl::StrCat(name, "=", page, ": page ", page, " of pool '",
                                                  pool_name, "' is not held by this session"));
}

absl::StatusOr<std::vector<int64_t>> ValidatePageTable(
    const PageTableNames& names, absl::Span<const int32_t> kv_indptr,
    absl::Span<const int32_t> kv_indices, absl::Span<const int32_t> last_len,
    const PoolGeometry& pool, absl::string_view pool_name, int32_t max_entries) {
  const absl::string_view p = names.prefix, unit = names.unit;
  // kv_indptr: [n + 1], from 0, strictly increasing (every entry has >= 1 page), ends at
  // len(kv_indices).
  if (kv_indptr.size() < 2) {
    return InvalidArg(p, "kv_indptr has ", kv_indptr.size(), " entries; it needs ", names.count,
                      " + 1 >= 2");
  }
  const int64_t n64 = static_cast<int64_t>(kv_indptr.size()) - 1;
  if (n64 > max_entries) {
    return InvalidArg(names.count, "=", n64, " (len(", p, "kv_indptr) - 1) exceeds the limit of ",
                      max_entries);
  }
  const int32_t n = static_cast<int32_t>(n64);
  if (kv_indptr[0] != 0) return InvalidArg(p, "kv_indptr[0]=", kv_indptr[0], " must be 0");
  for (int32_t b = 0; b < n; ++b) {
    if (kv_indptr[b + 1] < kv_indptr[b]) {
      return InvalidArg(p, "kv_indptr[", b + 1, "]=", kv_indptr[b + 1], " is less than ", p,
                        "kv_indptr[", b, "]=", kv_indptr[b], "; kv_indptr must be non-decreasing");
    }
    if (kv_indptr[b + 1] == kv_indptr[b]) {
      return InvalidArg(p, "kv_indptr[", b, "]=", p, "kv_indptr[", b + 1, "]=", kv_indptr[b], ": ",
                        unit, " ", b, " has no pages; every ", unit, " needs >= 1 page");
    }
  }
  if (kv_indptr[n] != static_cast<int64_t>(kv_indices.size())) {
    return InvalidArg(p, "kv_indptr[", n, "]=", kv_indptr[n], " but ", p, "kv_indices has ",
                      kv_indices.size(), " entries");
  }
  for (size_t i = 0; i < kv_indices.size(); ++i) {
    if (kv_indices[i] < 0 || kv_indices[i] >= pool.num_pages) {
      return absl::OutOfRangeError(absl::StrCat(p, "kv_indices[", i, "]=", kv_indices[i],
                                                " is outside 0..", pool.num_pages - 1, " (pool '",
                                                pool_name, "' has ", pool.num_pages, " pages)"));
    }
  }
  if (static_cast<int64_t>(last_len.size()) != n) {
    return InvalidArg(p, "kv_last_page_len has ", last_len.size(), " entries, expected ",
                      names.count, "=", n);
  }
  std::vector<int64_t> kv_len(static_cast<size_t>(n));
  for (int32_t b = 0; b < n; ++b) {
    if (last_len[b] < 1 || last_len[b] > pool.page_size) {
      return InvalidArg(p, "kv_last_page_len[", b, "]=", last_len[b], " is outside 1..page_size (",
                        pool.page_size, ")");
    }
    const int64_t pages_b = static_cast<int64_t>(kv_indptr[b + 1]) - kv_indptr[b];
    kv_len[b] = (pages_b - 1) * pool.page_size + last_len[b];
    if (kv_len[b] > kInt32Max) {
      return InvalidArg(unit, " ", b, " has kv_len=", kv_len[b], ", more than ", kInt32Max);
    }
  }
  return kv_len;
}

absl::StatusOr<ValidatedPlan> ValidatePlan(const v1::CreatePlanRequest& request,
                                           const PoolGeometry& pool, absl::string_view pool_name,
                                           int32_t max_batch_size) {
  ValidatedPlan out;
  kernels::PlanSpec& spec = out.spec;
  switch (request.kind()) {
    case v1::ATTENTION_KIND_DECODE: spec.kind = kernels::AttentionKind::kDecode; break;
    case v1::ATTENTION_KIND_PREFILL: spec.kind = kernels::AttentionKind::kPrefill; break;
    default:
      return InvalidArg("kind=", static_cast<int>(request.kind()),
                        " must be ATTENTION_KIND_DECODE or ATTENTION_KIND_PREFILL");
  }
  const bool decode = spec.kind == kernels::AttentionKind::kDecode;
  if (request.num_qo_heads() < 1 || request.num_qo_heads() % pool.num_kv_heads != 0) {
    return InvalidArg("num_qo_heads=", request.num_qo_heads(),
                      " must be a positive multiple of the pool's num_kv_heads (",
                      pool.num_kv_heads, ")");
  }

  auto kv_len =
      ValidatePageTable({"", "request", "batch_size"}, request.kv_indptr(), request.kv_indices(),
                        request.kv_last_page_len(), pool, pool_name, max_batch_size);
  if (!kv_len.ok()) return kv_len.status();
  for (const int64_t len : *kv_len) out.kv_tokens += len;
  const int32_t batch = static_cast<int32_t>(kv_len->size());
  const auto& kv_indptr = request.kv_indptr();
  const auto& kv_indices = request.kv_indices();
  const auto& last_len = request.kv_last_page_len();

  // qo_indptr: decode -> optional and 0, 1, ..., B; prefill -> required, from 0, non-decreasing,
  // qo_len(b) <= kv_len(b).
  const auto& qo_indptr = request.qo_indptr();
  if (decode && qo_indptr.empty()) {
    spec.qo_indptr.resize(static_cast<size_t>(batch) + 1);
    for (int32_t b = 0; b <= batch; ++b) spec.qo_indptr[b] = b;
  } else {
    if (qo_indptr.size() != batch + 1) {
      return InvalidArg("qo_indptr has ", qo_indptr.size(),
                        " entries, expected batch_size + 1 = ", batch + 1);
    }
    if (qo_indptr[0] != 0) return InvalidArg("qo_indptr[0]=", qo_indptr[0], " must be 0");
    for (int32_t b = 0; b < batch; ++b) {
      const int64_t qo_len = static_cast<int64_t>(qo_indptr[b + 1]) - qo_indptr[b];
      if (qo_len < 0) {
        return InvalidArg("qo_indptr[", b + 1, "]=", qo_indptr[b + 1], " is less than qo_indptr[",
                          b, "]=", qo_indptr[b], "; qo_indptr must be non-decreasing");
      }
      if (decode && qo_len != 1) {
        return InvalidArg("qo_indptr[", b + 1, "]=", qo_indptr[b + 1],
                          ": decode takes exactly one query token per request (request ", b,
                          " has qo_len=", qo_len, ")");
      }
      if (qo_len > (*kv_len)[b]) {
        return InvalidArg("qo_indptr[", b + 1, "]=", qo_indptr[b + 1], ": request ", b,
                          " has qo_len=", qo_len, " > kv_len=", (*kv_len)[b],
                          " (query tokens are the last kv tokens)");
      }
    }
    spec.qo_indptr.assign(qo_indptr.begin(), qo_indptr.end());
  }
  if (spec.qo_indptr.back() < 1) {
    return InvalidArg("qo_indptr[", batch, "]=0: the plan has no query tokens");
  }

  spec.num_qo_heads = request.num_qo_heads();
  spec.num_kv_heads = pool.num_kv_heads;
  spec.head_dim = pool.head_dim;
  spec.page_size = pool.page_size;
  spec.kv_dtype = pool.kv_dtype;
  if (request.q_dtype() != v1::DTYPE_UNSPECIFIED) {
    auto q_dtype = FromProtoDType(request.q_dtype(), "q_dtype");
    if (!q_dtype.ok()) return q_dtype.status();
    if (*q_dtype != kernels::DType::kFloat32 && *q_dtype != kernels::DType::kFloat16 &&
        *q_dtype != kernels::DType::kBFloat16) {
      return InvalidArg("q_dtype=", ProtoDTypeName(request.q_dtype()),
                        " is not a query dtype (float32, float16 or bfloat16)");
    }
    spec.q_dtype = *q_dtype;
  }
  spec.kv_indptr.assign(kv_indptr.begin(), kv_indptr.end());
  spec.kv_indices.assign(kv_indices.begin(), kv_indices.end());
  spec.kv_last_page_len.assign(last_len.begin(), last_len.end());

  // custom_mask: prefill only, exactly the packed bits of every request (custom_mask.h).
  if (!request.custom_mask().empty()) {
    if (decode) {
      return InvalidArg("custom_mask (", request.custom_mask().size(),
                        " bytes) needs kind=ATTENTION_KIND_PREFILL; a decode plan takes none");
    }
    const std::string& bits = request.custom_mask();
    auto image = kernels::BuildCustomMaskImage(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bits.data()), bits.size()),
        std::span<const int32_t>(spec.qo_indptr), std::span<const int64_t>(*kv_len));
    if (!image.ok()) return image.status();
    spec.custom_mask = *std::move(image);
  }

  // Distinct pages, ascending. When the plan names a good share of the pool's pages (the usual
  // decode batch), a presence map over the pool is O(num_pages), far cheaper than sorting tens
  // of thousands of ids; otherwise sort. The ids were range-checked above.
  if (static_cast<int64_t>(spec.kv_indices.size()) * 8 >= pool.num_pages) {
    std::vector<uint8_t> present(static_cast<size_t>(pool.num_pages), 0);
    for (const int32_t page : spec.kv_indices) present[page] = 1;
    for (int32_t page = 0; page < pool.num_pages; ++page) {
      if (present[page] != 0) out.distinct_pages.push_back(page);
    }
  } else {
    out.distinct_pages = spec.kv_indices;
    std::sort(out.distinct_pages.begin(), out.distinct_pages.end());
    out.distinct_pages.erase(std::unique(out.distinct_pages.begin(), out.distinct_pages.end()),
                             out.distinct_pages.end());
  }

  // Pages written by appends: the ones holding kv positions kv_len - qo_len .. kv_len - 1 of each
  // request. Two requests appending into the same page would race, so that is refused too.
  absl::flat_hash_map<int32_t, int32_t> writer_of_page;
  for (int32_t b = 0; b < batch; ++b) {
    const int64_t qo_len = static_cast<int64_t>(spec.qo_indptr[b + 1]) - spec.qo_indptr[b];
    const SlotRange slots = WrittenSlots((*kv_len)[b], qo_len, pool.page_size);
    for (int64_t slot = slots.first; slot <= slots.last; ++slot) {
      const int64_t index = kv_indptr[b] + slot;
      const int32_t page = kv_indices[static_cast<int>(index)];
      auto [it, inserted] = writer_of_page.try_emplace(page, b);
      if (!inserted && it->second != b) {
        return InvalidArg("kv_indices[", index, "]=", page, ": page ", page,
                          " would be appended to by requests ", it->second, " and ", b,
                          " of the same plan");
      }
      if (inserted) out.written_pages.push_back(page);
    }
  }
  std::sort(out.written_pages.begin(), out.written_pages.end());
  return out;
}

absl::Status CheckPagesUnshared(absl::Span<const int32_t> written_pages,
                                const PageAllocator& allocator, const PageLedger& held,
                                const PageLedger& pinned) {
  for (const int32_t page : written_pages) {
    const int64_t mine = static_cast<int64_t>(held.count(page)) + pinned.count(page);
    if (allocator.refcount(page) > mine) {
      return absl::FailedPreconditionError(
          absl::StrCat("page ", page,
                       " is shared with another session; appends need an "
                       "unshared page"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLayer(int32_t layer, int32_t num_layers) {
  if (layer < 0 || layer >= num_layers) {
    return absl::OutOfRangeError(absl::StrCat("layer=", layer, " is outside 0..", num_layers - 1));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ValidateTensor(const v1::Tensor& tensor, absl::string_view name,
                                        kernels::DType expected_dtype,
                                        absl::Span<const int64_t> expected_shape) {
  if (tensor.data_case() == v1::Tensor::DATA_NOT_SET) {
    return InvalidArg(name, " has no data: set inline_data or buffer");
  }
  if (tensor.dtype() != ToProtoDType(expected_dtype)) {
    return InvalidArg(name, ".dtype=", ProtoDTypeName(tensor.dtype()), ", expected ",
                      ProtoDTypeName(ToProtoDType(expected_dtype)));
  }
  const absl::Span<const int64_t> shape(tensor.shape().data(), tensor.shape_size());
  if (shape != expected_shape) {
    return InvalidArg(name, ".shape=", ShapeString(shape), ", expected ",
                      ShapeString(expected_shape));
  }
  uint64_t bytes = kernels::DTypeSize(expected_dtype);
  for (const int64_t d : expected_shape) {
    if (d < 0 || !CheckedMul(bytes, static_cast<uint64_t>(d), &bytes)) {
      return InvalidArg(name, ".shape=", ShapeString(shape), " has no valid byte size");
    }
  }
  if (tensor.data_case() == v1::Tensor::kInlineData && tensor.inline_data().size() != bytes) {
    return InvalidArg(name, ".inline_data has ", tensor.inline_data().size(), " bytes, expected ",
                      bytes, " (shape ", ShapeString(shape), " x ",
                      kernels::DTypeSize(expected_dtype), " bytes)");
  }
  return bytes;
}

absl::StatusOr<kernels::DType> ValidateQueryDType(const v1::Tensor& q,
                                                  const kernels::BackendInfo& backend) {
  auto dtype = FromProtoDType(q.dtype(), "q.dtype");
  if (!dtype.ok()) return dtype.status();
  if (!Contains(backend.q_dtypes, *dtype)) {
    return InvalidArg("q.dtype=", ProtoDTypeName(q.dtype()),
                      " is not supported for queries by the ", backend.name,
                      " backend (supported: ", DTypeList(backend.q_dtypes), ")");
  }
  return *dtype;
}

absl::Status ValidateSlice(absl::string_view name, const v1::BufferSlice& slice, uint64_t bytes,
                           uint64_t elem_size, uint32_t alignment, const void* base,
                           uint64_t buffer_size) {
  const uint64_t offset = slice.offset_bytes();
  if (elem_size > 0 && offset % elem_size != 0) {
    return InvalidArg(name, ".buffer.offset_bytes=", offset,
                      " is not a multiple of the element size (", elem_size, " bytes)");
  }
  // The kernels' vector loads need aligned addresses: a misaligned one would fault the device
  // for every session, so it is refused here, before anything is enqueued.
  if (alignment > 1 && (reinterpret_cast<uintptr_t>(base) + offset) % alignment != 0) {
    return InvalidArg(name, ".buffer.offset_bytes=", offset, " is not a multiple of ", alignment,
                      " bytes: the ", alignment == 16 ? "CUDA " : "",
                      "backend needs tensors aligned to ServerInfo.tensor_alignment_bytes (",
                      alignment, ")");
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(offset, bytes, &end) || end > buffer_size) {
    return absl::OutOfRangeError(absl::StrCat(
        name, ".buffer: offset_bytes=", offset, " + ", bytes, " bytes exceeds the size of buffer '",
        Echo(slice.buffer_id()), "' (", buffer_size, " bytes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<MergeShape> ValidateMergeInput(const v1::Tensor& v, absl::string_view name,
                                              bool with_states) {
  if (v.data_case() == v1::Tensor::DATA_NOT_SET) {
    return InvalidArg(name, " has no data: set inline_data or buffer");
  }
  MergeShape shape;
  const v1::DType dtype = v.dtype();
  if (dtype != v1::DTYPE_FLOAT16 && dtype != v1::DTYPE_BFLOAT16 && dtype != v1::DTYPE_FLOAT32) {
    return InvalidArg(name, ".dtype=", ProtoDTypeName(dtype),
                      " cannot be merged (DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT32)");
  }
  auto kdtype = FromProtoDType(dtype, absl::StrCat(name, ".dtype"));
  if (!kdtype.ok()) return kdtype.status();
  shape.dtype = *kdtype;
  const absl::Span<const int64_t> dims(v.shape().data(), v.shape_size());
  const size_t rank = with_states ? 4 : 3;
  if (dims.size() != rank) {
    return InvalidArg(name, ".shape=", ShapeString(dims), " must be [seq_len, ",
                      with_states ? "num_states, " : "", "num_heads, head_dim]");
  }
  shape.seq_len = dims[0];
  const int64_t states = with_states ? dims[1] : 1;  // rows of states per row of the output
  shape.num_states = with_states ? states : 2;
  shape.num_heads = dims[rank - 2];
  shape.head_dim = dims[rank - 1];
  // Each factor is checked before the product, which then cannot overflow.
  if (shape.seq_len < 0 || states < 0 || shape.seq_len > kMaxMergeStateRows ||
      states > kMaxMergeStateRows || shape.seq_len * states > kMaxMergeStateRows) {
    return InvalidArg(
        name, ".shape=", ShapeString(dims), ": seq_len",
        with_states ? " and num_states must be >= 0 and seq_len * num_states" : " must be >= 0 and",
        " at most ", kMaxMergeStateRows);
  }
  if (shape.num_heads < 1 || shape.num_heads > kMaxMergeHeads) {
    return InvalidArg(name, ".shape=", ShapeString(dims), ": num_heads=", shape.num_heads,
                      " must be in 1..", kMaxMergeHeads);
  }
  if (shape.head_dim < 4 || shape.head_dim > kMaxMergeHeadDim || shape.head_dim % 4 != 0) {
    return InvalidArg(name, ".shape=", ShapeString(dims), ": head_dim=", shape.head_dim,
                      " must be a multiple of 4 in 4..", kMaxMergeHeadDim);
  }
  return shape;
}

absl::StatusOr<RaggedShape> ValidateRaggedShape(const v1::Tensor& q, const v1::Tensor& k,
                                                const kernels::BackendInfo& backend) {
  if (q.data_case() == v1::Tensor::DATA_NOT_SET) {
    return InvalidArg("q has no data: set inline_data or buffer");
  }
  auto dtype = ValidateQueryDType(q, backend);
  if (!dtype.ok()) return dtype.status();
  RaggedShape shape;
  shape.dtype = *dtype;
  const absl::Span<const int64_t> qd(q.shape().data(), q.shape_size());
  if (qd.size() != 3) {
    return InvalidArg("q.shape=", ShapeString(qd), " must be [qo_tokens, num_qo_heads, head_dim]");
  }
  shape.qo_tokens = qd[0];
  shape.num_qo_heads = qd[1];
  shape.head_dim = qd[2];
  if (shape.qo_tokens < 0 || shape.qo_tokens > kMaxRaggedTokens) {
    return InvalidArg("q.shape=", ShapeString(qd), ": qo_tokens must be in 0..", kMaxRaggedTokens);
  }
  if (shape.num_qo_heads < 1 || shape.num_qo_heads > kMaxRaggedQoHeads) {
    return InvalidArg("q.shape=", ShapeString(qd), ": num_qo_heads=", shape.num_qo_heads,
                      " must be in 1..", kMaxRaggedQoHeads);
  }
  const bool head_dim_known = shape.head_dim > 0 &&
                              shape.head_dim <= std::numeric_limits<int32_t>::max() &&
                              Contains(backend.head_dims, static_cast<int32_t>(shape.head_dim));
  if (!head_dim_known) {
    return InvalidArg("q.shape=", ShapeString(qd), ": head_dim=", shape.head_dim,
                      " is not supported by the ", backend.name,
                      " backend (supported: ", absl::StrJoin(backend.head_dims, ", "), ")");
  }
  if (k.data_case() == v1::Tensor::DATA_NOT_SET) {
    return InvalidArg("k has no data: set inline_data or buffer");
  }
  if (k.dtype() != q.dtype()) {
    return InvalidArg("k.dtype=", ProtoDTypeName(k.dtype()), ", expected q's dtype ",
                      ProtoDTypeName(q.dtype()));
  }
  const absl::Span<const int64_t> kd(k.shape().data(), k.shape_size());
  if (kd.size() != 3 || kd[2] != shape.head_dim) {
    return InvalidArg("k.shape=", ShapeString(kd), " must be [kv_tokens, num_kv_heads, ",
                      shape.head_dim, "] (q's head_dim)");
  }
  shape.kv_tokens = kd[0];
  shape.num_kv_heads = kd[1];
  if (shape.kv_tokens < 0 || shape.kv_tokens > kMaxRaggedTokens) {
    return InvalidArg("k.shape=", ShapeString(kd), ": kv_tokens must be in 0..", kMaxRaggedTokens);
  }
  if (shape.num_kv_heads < 1 || shape.num_kv_heads > kMaxKvHeads) {
    return InvalidArg("k.shape=", ShapeString(kd), ": num_kv_heads=", shape.num_kv_heads,
                      " must be in 1..", kMaxKvHeads);
  }
  if (shape.num_qo_heads % shape.num_kv_heads != 0) {
    return InvalidArg("k.shape=", ShapeString(kd), ": num_kv_heads=", shape.num_kv_heads,
                      " does not divide num_qo_heads=", shape.num_qo_heads, " (q.shape)");
  }
  return shape;
}

absl::Status ValidateRaggedIndptrs(absl::Span<const int32_t> qo_indptr,
                                   absl::Span<const int32_t> kv_indptr, const RaggedShape& shape) {
  if (qo_indptr.size() < 2 || qo_indptr.size() - 1 > static_cast<size_t>(kMaxBatchSize)) {
    return InvalidArg("qo_indptr has ", qo_indptr.size(),
                      " entries; it needs batch_size + 1 with batch_size in 1..", kMaxBatchSize);
  }
  if (kv_indptr.size() != qo_indptr.size()) {
    return InvalidArg("kv_indptr has ", kv_indptr.size(), " entries, qo_indptr ", qo_indptr.size(),
                      ": both are batch_size + 1 long");
  }
  const struct {
    absl::string_view field;
    absl::Span<const int32_t> indptr;
    int64_t rows;
    absl::string_view rows_field;
  } arrays[2] = {{"qo_indptr", qo_indptr, shape.qo_tokens, "q.shape[0]"},
                 {"kv_indptr", kv_indptr, shape.kv_tokens, "k.shape[0]"}};
  for (const auto& a : arrays) {
    if (a.indptr[0] != 0) return InvalidArg(a.field, "[0]=", a.indptr[0], " must be 0");
    for (size_t b = 0; b + 1 < a.indptr.size(); ++b) {
      if (a.indptr[b + 1] < a.indptr[b]) {
        return InvalidArg(a.field, "[", b + 1, "]=", a.indptr[b + 1], " is less than ", a.field,
                          "[", b, "]=", a.indptr[b], "; it must be non-decreasing");
      }
    }
    const size_t last = a.indptr.size() - 1;
    if (a.indptr[last] != a.rows) {
      return InvalidArg(a.field, "[", last, "]=", a.indptr[last], " must equal ", a.rows_field, "=",
                        a.rows);
    }
  }
  if (shape.qo_tokens < 1) {
    return InvalidArg("q.shape[0]=0: the batch has no query rows");
  }
  return absl::OkStatus();
}

absl::StatusOr<kernels::AttentionOptions> ValidateOptions(const v1::AttentionOptions& options,
                                                          int32_t batch_size) {
  kernels::AttentionOptions out;
  if (!std::isfinite(options.sm_scale()) || options.sm_scale() < 0.f) {
    return InvalidArg("options.sm_scale=", options.sm_scale(), " must be finite and >= 0");
  }
  out.sm_scale = options.sm_scale();
  out.causal = options.causal();
  switch (options.pos_encoding()) {
    case v1::POS_ENCODING_NONE: out.pos_encoding = kernels::PosEncoding::kNone; break;
    case v1::POS_ENCODING_ROPE_LLAMA: out.pos_encoding = kernels::PosEncoding::kRopeLlama; break;
    default:
      return InvalidArg("options.pos_encoding=", static_cast<int>(options.pos_encoding()),
                        " is not a known encoding");
  }
  if (!std::isfinite(options.rope_theta()) || options.rope_theta() < 0.f) {
    return InvalidArg("options.rope_theta=", options.rope_theta(), " must be finite and >= 0");
  }
  out.rope_theta = options.rope_theta() == 0.f ? 1e4f : options.rope_theta();
  if (!std::isfinite(options.rope_scale()) || options.rope_scale() < 0.f) {
    return InvalidArg("options.rope_scale=", options.rope_scale(), " must be finite and >= 0");
  }
  out.rope_scale = options.rope_scale() == 0.f ? 1.f : options.rope_scale();
  if (options.rope_offsets_size() != 0 && options.rope_offsets_size() != batch_size) {
    return InvalidArg("options.rope_offsets has ", options.rope_offsets_size(),
                      " entries, expected 0 or batch_size=", batch_size);
  }
  if (!std::isfinite(options.logits_soft_cap()) || options.logits_soft_cap() < 0.f) {
    return InvalidArg("options.logits_soft_cap=", options.logits_soft_cap(),
                      " must be finite and >= 0");
  }
  out.logits_soft_cap = options.logits_soft_cap();
  if (options.window_left_set()) {
    if (options.window_left() < -1) {
      return InvalidArg("options.window_left=", options.window_left(),
                        " must be >= 0, or -1 for no window");
    }
    out.window_left = options.window_left();
  } else {
    out.window_left = -1;
  }
  return out;
}

absl::Status ValidateRegisterBuffer(const v1::RegisterBufferRequest& request) {
  if (request.size_bytes() < 1) {
    return InvalidArg("size_bytes=", request.size_bytes(), " must be >= 1");
  }
  switch (request.source_case()) {
    case v1::RegisterBufferRequest::kSharedMemory:
      return absl::FailedPreconditionError(absl::StrCat(
          "shared_memory.name='", Echo(request.shared_memory().name()),
          "': shared memory is no longer registered by name (anyone with the daemon's "
          "permissions could name it, and an object shrunk while attnd reads it would fault the "
          "daemon); send a sealed memfd over the peer socket and register shared_memory_fd"));
    case v1::RegisterBufferRequest::kSharedMemoryFd:
      if (request.shared_memory_fd().fd_token().empty()) {
        return InvalidArg("shared_memory_fd.fd_token is empty");
      }
      return absl::OkStatus();
    case v1::RegisterBufferRequest::kCudaIpc:
      if (request.cuda_ipc().ipc_handle().size() != kCudaIpcHandleBytes) {
        return InvalidArg("cuda_ipc.ipc_handle has ", request.cuda_ipc().ipc_handle().size(),
                          " bytes, expected ", kCudaIpcHandleBytes);
      }
      if (request.cuda_ipc().device() < 0) {
        return InvalidArg("cuda_ipc.device=", request.cuda_ipc().device(), " must be >= 0");
      }
      return absl::OkStatus();
    default: return InvalidArg("source is not set: give cuda_ipc or shared_memory_fd");
  }
}

}  // namespace attnd::server
