// What the Backend implementations (CPU and CUDA) share: the consistency checks of a plan and of
// the layer a run uses it with, and the order of work of Backend::Attention (every check before
// the first write, so that a refused call changes nothing). Header-only: the CPU and the CUDA
// libraries both use it and neither links the other.
#pragma once

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels {

// A plan's page table: head counts, head_dim in 1..max_head_dim, page_size >= 1, one kv_indptr
// and qo_indptr entry per request plus one, both starting at 0 and never decreasing, one query
// row per request for decode, as many kv_indices as kv_indptr ends at, page ids >= 0 and
// last_page_len in 1..page_size for every request with pages.
// A plan's custom mask image (custom_mask.h) covers its rows: a prefill plan, one offset and
// dense_until per request, every request's rows (qo_len * ceil(kv_len / 32) words from its
// offset) inside the words, the padding after them. What the kernels read is then in bounds.
inline absl::Status CheckCustomMaskImage(const PlanSpec& spec) {
  const CustomMaskImage& m = spec.custom_mask;
  if (m.empty()) return absl::OkStatus();
  const int64_t batch = spec.batch_size();
  if (spec.kind != AttentionKind::kPrefill) {
    return absl::InvalidArgumentError("plan custom_mask: only prefill plans take a custom mask");
  }
  if (static_cast<int64_t>(m.word_offset.size()) != batch ||
      static_cast<int64_t>(m.dense_until.size()) != batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan custom_mask has ", m.word_offset.size(), " word offsets and ",
                     m.dense_until.size(), " dense_until entries for ", batch, " requests"));
  }
  const int64_t words = static_cast<int64_t>(m.words.size()) - kCustomMaskPadWords;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t kv_len = spec.kv_len(static_cast<int32_t>(b));
    const int64_t rows = spec.qo_indptr[b + 1] - spec.qo_indptr[b];
    const int64_t begin = m.word_offset[b];
    if (begin < 0 || begin + rows * MaskRowWords(kv_len) > words) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plan custom_mask: request ", b, "'s rows (word ", begin, ", ", rows, " x ",
          MaskRowWords(kv_len), " words) are not inside its ", words, " words of rows"));
    }
  }
  return absl::OkStatus();
}

inline absl::Status CheckPlanSpec(const PlanSpec& spec, int32_t max_head_dim) {
  const int64_t batch = spec.batch_size();
  if (spec.num_kv_heads <= 0 || spec.num_qo_heads <= 0 ||
      spec.num_qo_heads % spec.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("plan num_qo_heads ", spec.num_qo_heads,
                                                   " must be a positive multiple of num_kv_heads ",
                                                   spec.num_kv_heads));
  }
  if (spec.head_dim <= 0 || spec.head_dim > max_head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan head_dim ", spec.head_dim, " is outside 1..", max_head_dim));
  }
  if (spec.page_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan page_size must be > 0, got ", spec.page_size));
  }
  if (static_cast<int64_t>(spec.kv_indptr.size()) != batch + 1 ||
      static_cast<int64_t>(spec.qo_indptr.size()) != batch + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan has ", batch, " requests (kv_last_page_len) but kv_indptr has ",
                     spec.kv_indptr.size(), " and qo_indptr ", spec.qo_indptr.size(), " entries"));
  }
  if (spec.kv_indptr[0] != 0 || spec.qo_indptr[0] != 0) {
    return absl::InvalidArgumentError("plan kv_indptr and qo_indptr must start at 0");
  }
  for (int64_t b = 0; b < batch; ++b) {
    if (spec.kv_indptr[b + 1] < spec.kv_indptr[b] || spec.qo_indptr[b + 1] < spec.qo_indptr[b]) {
      return absl::InvalidArgumentError(absl::StrCat("plan indptr decreases at request ", b));
    }
    if (spec.kind == AttentionKind::kDecode && spec.qo_indptr[b + 1] - spec.qo_indptr[b] != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("decode plan must have one query row per "
                       "request; request ",
                       b, " has ", spec.qo_indptr[b + 1] - spec.qo_indptr[b]));
    }
    if (spec.kv_indptr[b + 1] > spec.kv_indptr[b] &&
        (spec.kv_last_page_len[b] < 1 || spec.kv_last_page_len[b] > spec.page_size)) {
      return absl::InvalidArgumentError(absl::StrCat("plan kv_last_page_len[", b,
                                                     "] = ", spec.kv_last_page_len[b],
                                                     " is outside 1..", spec.page_size));
    }
  }
  if (static_cast<int64_t>(spec.kv_indices.size()) != spec.kv_indptr[batch]) {
    return absl::InvalidArgumentError(absl::StrCat("plan kv_indices has ", spec.kv_indices.size(),
                                                   " entries, kv_indptr ends at ",
                                                   spec.kv_indptr[batch]));
  }
  for (size_t i = 0; i < spec.kv_indices.size(); ++i) {
    if (spec.kv_indices[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan kv_indices[", i, "] = ", spec.kv_indices[i], " is negative"));
    }
  }
  return CheckCustomMaskImage(spec);
}

// The largest page id of a plan (-1 without pages): every run checks it against its layer.
inline int32_t MaxPageId(const PlanSpec& spec) {
  int32_t max_page = -1;
  for (const int32_t p : spec.kv_indices) max_page = std::max(max_page, p);
  return max_page;
}

// Whether a backend may update the plan of `old_spec` to `new_spec` in place (Backend::UpdatePlan):
// both ordinary paged tables (no cascade levels, no custom mask, not ragged) of the same kind,
// head counts, head_dim, page size and kv dtype. Anything else is prepared anew.
inline bool UpdatableInPlace(const PlanSpec& old_spec, const PlanSpec& new_spec) {
  auto plain = [](const PlanSpec& s) {
    return s.cascade_levels.empty() && s.custom_mask.empty() && !s.ragged;
  };
  return plain(old_spec) && plain(new_spec) && old_spec.kind == new_spec.kind &&
         old_spec.num_qo_heads == new_spec.num_qo_heads &&
         old_spec.num_kv_heads == new_spec.num_kv_heads && old_spec.head_dim == new_spec.head_dim &&
         old_spec.page_size == new_spec.page_size && old_spec.kv_dtype == new_spec.kv_dtype;
}

// The layer a run or an append uses a plan with: a plan of pages (not a ragged one), the plan's
// geometry and dtype, and pages for every page id of the plan.
inline absl::Status CheckLayerMatchesPlan(const PlanSpec& spec, int32_t max_page_id,
                                          const PagedKV& layer) {
  if (spec.ragged) {
    return absl::InvalidArgumentError(
        "the plan is a ragged plan (RaggedPlanSpec): it has no pages to read or append to");
  }
  if (layer.num_kv_heads != spec.num_kv_heads || layer.head_dim != spec.head_dim ||
      layer.page_size != spec.page_size || layer.dtype != spec.kv_dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer (kv heads ", layer.num_kv_heads, ", head_dim ", layer.head_dim,
                     ", page_size ", layer.page_size, ", dtype ", DTypeName(layer.dtype),
                     ") does not match the plan (", spec.num_kv_heads, ", ", spec.head_dim, ", ",
                     spec.page_size, ", ", DTypeName(spec.kv_dtype), ")"));
  }
  if (max_page_id >= layer.num_pages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plan page id ", max_page_id, " is outside the layer's ", layer.num_pages, " pages"));
  }
  return absl::OkStatus();
}

// RunArgs before anything else: a plan, and k_new with v_new or neither.
inline absl::Status CheckRunArgs(const RunArgs& args) {
  if (args.plan == nullptr) return absl::InvalidArgumentError("RunArgs.plan is null");
  if ((args.k_new == nullptr) != (args.v_new == nullptr)) {
    return absl::InvalidArgumentError("k_new and v_new must be given together");
  }
  return absl::OkStatus();
}

// RaggedRunArgs before anything else: a ragged plan, q, o and k with v.
inline absl::Status CheckRaggedRunArgs(const RaggedRunArgs& args) {
  if (args.plan == nullptr || !args.plan->spec().ragged) {
    return absl::InvalidArgumentError("RaggedRunArgs.plan is not a prepared RaggedPlanSpec");
  }
  if (args.q == nullptr || args.o == nullptr || args.k == nullptr || args.v == nullptr) {
    return absl::InvalidArgumentError("RaggedRunArgs: q, o, k and v must be given");
  }
  return absl::OkStatus();
}

// The kernels' view of a ragged run (both backends): the query/output side and the K/V tensors,
// laid out by the plan's qo_indptr and kv_indptr (host or device copies: the caller's).
inline RaggedAttentionParams RaggedParamsOf(const RaggedRunArgs& args, const int32_t* qo_indptr,
                                            const int32_t* kv_indptr) {
  const PlanSpec& spec = args.plan->spec();
  RaggedAttentionParams p;
  p.qo.q = args.q;
  p.qo.o = args.o;
  p.qo.lse = args.lse;
  p.qo.q_dtype = args.q_dtype;
  p.qo.num_qo_heads = spec.num_qo_heads;
  p.qo.batch_size = spec.batch_size();
  p.qo.qo_indptr = qo_indptr;
  p.kv.k = args.k;
  p.kv.v = args.v;
  p.kv.dtype = spec.kv_dtype;
  p.kv.num_kv_heads = spec.num_kv_heads;
  p.kv.head_dim = spec.head_dim;
  p.kv.stride_n = static_cast<int64_t>(spec.num_kv_heads) * spec.head_dim;
  p.kv.stride_h = spec.head_dim;
  p.kv.batch_size = spec.batch_size();
  p.kv.indptr = kv_indptr;
  p.options = args.options;
  p.options.rope_offsets = nullptr;
  return p;
}

// The order of work of Backend::Attention on every backend: the append's checks (when k_new/v_new
// are given) and the attention's checks first, then the writes (append, attention). A call that
// a check refuses has no side effect, in the cache or anywhere else.
template <typename CheckAppend, typename CheckAttention, typename Append, typename Attend>
absl::Status AppendThenAttend(bool with_append, CheckAppend&& check_append,
                              CheckAttention&& check_attention, Append&& append, Attend&& attend) {
  if (with_append) {
    if (absl::Status s = check_append(); !s.ok()) return s;
  }
  if (absl::Status s = check_attention(); !s.ok()) return s;
  if (with_append) {
    if (absl::Status s = append(); !s.ok()) return s;
  }
  return attend();
}

}  // namespace attnd::kernels
