// Host side of the CUDA prefill: the plan (PreparePrefill -> PrefillWork) and the run entry
// points that validate a call, resolve the variant options and dispatch to the per-(head_dim,
// dtype) launchers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/cuda_prefill.h"
#include "cuda_status.h"
#include "launch_checks.h"
#include "prefill_params.h"

// Which head dims are compiled: sources.cmake defines ATTND_PREFILL_HEAD_DIMS_FILTERED and
// ATTND_PREFILL_HD<D>; kernels/cuda/CMakeLists.txt (which filters prefill_hd<D>_*.cu by
// ATTND_CUDA_HEAD_DIMS) defines ATTND_CUDA_HD<D>. With neither, every head dim is compiled.
#ifndef ATTND_PREFILL_HEAD_DIMS_FILTERED
#if defined(ATTND_CUDA_HD64) || defined(ATTND_CUDA_HD128) || defined(ATTND_CUDA_HD256)
#ifdef ATTND_CUDA_HD64
#define ATTND_PREFILL_HD64 1
#endif
#ifdef ATTND_CUDA_HD128
#define ATTND_PREFILL_HD128 1
#endif
#ifdef ATTND_CUDA_HD256
#define ATTND_PREFILL_HD256 1
#endif
#else
#define ATTND_PREFILL_HD64 1
#define ATTND_PREFILL_HD128 1
#define ATTND_PREFILL_HD256 1
#endif
#endif

namespace attnd::kernels::cuda {

// Owns the device array of work items (one cudaMalloc), and remembers the shape it was planned
// for so that runs can be checked against it.
class PrefillWork {
 public:
  PrefillWork() = default;
  PrefillWork(const PrefillWork&) = delete;
  PrefillWork& operator=(const PrefillWork&) = delete;
  // Stream-ordered free on the stream the work was prepared on (no device-wide sync, unlike
  // cudaFree): that stream must still exist, and runs on other streams must be complete or
  // ordered before the destruction.
  ~PrefillWork() {
    if (items_ != nullptr) cudaFreeAsync(items_, stream_);
  }

  prefill::PrefillItem* items_ = nullptr;  // device, [num_items_]
  cudaStream_t stream_ = nullptr;          // items_ is allocated and freed in this stream's order
  int32_t num_items_ = 0;
  int32_t batch_size_ = 0;
  int32_t num_qo_heads_ = 0;
  int32_t num_kv_heads_ = 0;
  int32_t head_dim_ = 0;
  prefill::TileVariant variant_ = prefill::TileVariant::kDefault;
};

void PrefillWorkDeleter::operator()(PrefillWork* w) const { delete w; }

absl::StatusOr<PrefillWorkPtr> PreparePrefill(std::span<const int32_t> qo_indptr,
                                              std::span<const int32_t> kv_len,
                                              int32_t num_qo_heads, int32_t num_kv_heads,
                                              int32_t head_dim, cudaStream_t stream) {
  if (auto s = checks::PrefillPlan(qo_indptr, kv_len, num_qo_heads, num_kv_heads, head_dim);
      !s.ok()) {
    return s;
  }
  const size_t batch = qo_indptr.size() - 1;
  const int64_t group = num_qo_heads / num_kv_heads;
  // Tile variant (see prefill_params.h): kDefaultVariant128 for head_dim 128; the environment
  // variable ATTND_PREFILL_TILE (default | wide | wide64) overrides it for experiments.
  prefill::TileVariant variant =
      head_dim == 128 ? prefill::kDefaultVariant128 : prefill::TileVariant::kDefault;
  if (const char* env = std::getenv("ATTND_PREFILL_TILE"); env != nullptr && head_dim == 128) {
    const std::string_view v(env);
    if (v == "default") variant = prefill::TileVariant::kDefault;
    if (v == "wide") variant = prefill::TileVariant::kWide;
    if (v == "wide64") variant = prefill::TileVariant::kWide64;
    if (v == "wide3") variant = prefill::TileVariant::kWide3;
  }
  const int64_t cta_rows = prefill::CtaRows(head_dim, variant);

  struct Candidate {
    prefill::PrefillItem item;
    int64_t cost;  // keys a causal tile scans (upper bound of its work)
  };
  std::vector<Candidate> candidates;
  for (size_t b = 0; b < batch; ++b) {
    const int64_t qo_len = static_cast<int64_t>(qo_indptr[b + 1]) - qo_indptr[b];
    const int64_t packed = qo_len * group;
    for (int64_t start = 0; start < packed; start += cta_rows) {
      if (start > 0x7fffffff) return absl::InvalidArgumentError("prefill: too many query rows");
      const int64_t last_row = std::min(start + cta_rows, packed) - 1;
      const int64_t cost = kv_len[b] - qo_len + last_row / group + 1;
      candidates.push_back({{static_cast<int32_t>(b), static_cast<int32_t>(start)}, cost});
    }
  }
  // Longest first: the tail of the grid is then made of short tiles (causal load balance).
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) { return a.cost > b.cost; });

  auto work = PrefillWorkPtr(new PrefillWork());
  work->batch_size_ = static_cast<int32_t>(batch);
  work->num_qo_heads_ = num_qo_heads;
  work->num_kv_heads_ = num_kv_heads;
  work->head_dim_ = head_dim;
  work->variant_ = variant;
  work->num_items_ = static_cast<int32_t>(candidates.size());
  if (candidates.empty()) return work;

  std::vector<prefill::PrefillItem> items(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) items[i] = candidates[i].item;
  const size_t bytes = items.size() * sizeof(prefill::PrefillItem);
  // Stream-ordered allocation from the device's memory pool: no cudaMalloc per plan.
  if (auto s = CudaStatus(cudaMallocAsync(&work->items_, bytes, stream), "prefill: cudaMallocAsync(work items)");
      !s.ok()) {
    work->items_ = nullptr;
    return s;
  }
  work->stream_ = stream;
  // Wait for the copy: the work is then complete on return and usable from any stream (runs
  // are often issued on another stream than the plan's), and `items` may go.
  if (auto s = CudaStatus(cudaMemcpyAsync(work->items_, items.data(), bytes,
                                          cudaMemcpyHostToDevice, stream),
                          "prefill: upload work items");
      !s.ok()) {
    return s;
  }
  if (auto s = CudaStatus(cudaStreamSynchronize(stream), "prefill: upload work items (sync)"); !s.ok()) {
    return s;
  }
  return work;
}

namespace {

void FillCommon(const PrefillWork& work, const QueryOutput& qo, const AttentionOptions& opt,
                int32_t head_dim, prefill::PrefillParams& p) {
  p.q = qo.q;
  p.o = qo.o;
  p.lse = qo.lse;
  p.qo_indptr = qo.qo_indptr;
  p.num_qo_heads = work.num_qo_heads_;
  p.num_kv_heads = work.num_kv_heads_;
  p.group = work.num_qo_heads_ / work.num_kv_heads_;
  p.items = work.items_;
  p.num_items = work.num_items_;
  p.item_rows = prefill::CtaRows(head_dim, work.variant_);
  p.sub_items = 1;
  p.logit = internal::MakeLogitScale(opt, head_dim);
  p.causal = opt.causal;
  p.window_left = opt.window_left >= 0 ? opt.window_left : -1;
  p.rope = opt.pos_encoding == PosEncoding::kRopeLlama;
  if (p.rope) {
    internal::FillRopeFreqs(opt, head_dim, p.rope_freq);
    // The RoPE kernels have the default tile: several CTAs per item of a wider plan.
    p.sub_items = p.item_rows / prefill::CtaRows(head_dim, prefill::TileVariant::kDefault);
  }
  p.rope_offsets = p.rope ? opt.rope_offsets : nullptr;
}

template <bool kPaged>
cudaError_t Dispatch(int32_t head_dim, DType dtype, prefill::TileVariant variant,
                     const prefill::PrefillParams& p, cudaStream_t stream) {
  using prefill::LaunchPrefill;
  using prefill::TileVariant;
  const bool bf16 = dtype == DType::kBFloat16;
  constexpr TileVariant kDef = TileVariant::kDefault;
  switch (head_dim) {
#ifdef ATTND_PREFILL_HD64
    case 64:
      if (p.rope) {
        return bf16 ? LaunchPrefill<64, __nv_bfloat16, kPaged, kDef, true>(p, stream)
                    : LaunchPrefill<64, __half, kPaged, kDef, true>(p, stream);
      }
      return bf16 ? LaunchPrefill<64, __nv_bfloat16, kPaged>(p, stream)
                  : LaunchPrefill<64, __half, kPaged>(p, stream);
#endif
#ifdef ATTND_PREFILL_HD128
    case 128:
      if (p.rope) {
        return bf16 ? LaunchPrefill<128, __nv_bfloat16, kPaged, kDef, true>(p, stream)
                    : LaunchPrefill<128, __half, kPaged, kDef, true>(p, stream);
      }
      if (variant == TileVariant::kWide) {
        return bf16 ? LaunchPrefill<128, __nv_bfloat16, kPaged, TileVariant::kWide>(p, stream)
                    : LaunchPrefill<128, __half, kPaged, TileVariant::kWide>(p, stream);
      }
      if (variant == TileVariant::kWide3) {
        return bf16 ? LaunchPrefill<128, __nv_bfloat16, kPaged, TileVariant::kWide3>(p, stream)
                    : LaunchPrefill<128, __half, kPaged, TileVariant::kWide3>(p, stream);
      }
      if (variant == TileVariant::kWide64) {
        return bf16 ? LaunchPrefill<128, __nv_bfloat16, kPaged, TileVariant::kWide64>(p, stream)
                    : LaunchPrefill<128, __half, kPaged, TileVariant::kWide64>(p, stream);
      }
      return bf16 ? LaunchPrefill<128, __nv_bfloat16, kPaged>(p, stream)
                  : LaunchPrefill<128, __half, kPaged>(p, stream);
#endif
#ifdef ATTND_PREFILL_HD256
    case 256:
      if (p.rope) {
        return bf16 ? LaunchPrefill<256, __nv_bfloat16, kPaged, kDef, true>(p, stream)
                    : LaunchPrefill<256, __half, kPaged, kDef, true>(p, stream);
      }
      return bf16 ? LaunchPrefill<256, __nv_bfloat16, kPaged>(p, stream)
                  : LaunchPrefill<256, __half, kPaged>(p, stream);
#endif
    default:
      return cudaErrorInvalidValue;  // excluded by checks::PagedPrefillRun / RaggedPrefillRun
  }
}

checks::PlanShape Shape(const PrefillWork& work) {
  return {work.batch_size_, work.num_qo_heads_, work.num_kv_heads_, work.head_dim_};
}

}  // namespace

absl::Status CheckPagedPrefill(const PrefillWork& work, const PagedAttentionParams& params) {
  return checks::PagedPrefillRun(Shape(work), params);
}

absl::Status CheckRaggedPrefill(const PrefillWork& work, const RaggedAttentionParams& params) {
  return checks::RaggedPrefillRun(Shape(work), params);
}

absl::Status RunPagedPrefill(const PrefillWork& work, const PagedAttentionParams& params,
                             cudaStream_t stream) {
  if (auto s = CheckPagedPrefill(work, params); !s.ok()) return s;
  const PagedKV& kv = params.kv;
  if (work.num_items_ == 0) return absl::OkStatus();
  prefill::PrefillParams p;
  FillCommon(work, params.qo, params.options, kv.head_dim, p);
  p.k_base = kv.data;
  p.v_base = static_cast<const char*>(kv.data) + kv.kv_stride * DTypeSize(kv.dtype);
  p.page_stride = kv.page_stride;
  p.token_stride = kv.token_stride;
  p.head_stride = kv.head_stride;
  p.page_size = kv.page_size;
  p.page_shift = -1;
  if ((kv.page_size & (kv.page_size - 1)) == 0) {
    p.page_shift = 0;
    while ((1 << p.page_shift) < kv.page_size) ++p.page_shift;
  }
  p.kv_indptr = kv.indptr;
  p.kv_indices = kv.indices;
  p.last_page_len = kv.last_page_len;
  return CudaStatus(Dispatch<true>(kv.head_dim, kv.dtype, work.variant_, p, stream),
                    "prefill: paged prefill launch");
}

absl::Status RunRaggedPrefill(const PrefillWork& work, const RaggedAttentionParams& params,
                              cudaStream_t stream) {
  if (auto s = CheckRaggedPrefill(work, params); !s.ok()) return s;
  const RaggedKV& kv = params.kv;
  if (work.num_items_ == 0) return absl::OkStatus();
  prefill::PrefillParams p;
  FillCommon(work, params.qo, params.options, kv.head_dim, p);
  p.k_base = kv.k;
  p.v_base = kv.v;
  p.token_stride = kv.stride_n;
  p.head_stride = kv.stride_h;
  p.kv_indptr = kv.indptr;
  return CudaStatus(Dispatch<false>(kv.head_dim, kv.dtype, work.variant_, p, stream),
                    "prefill: ragged prefill launch");
}

}  // namespace attnd::kernels::cuda
