// Host side of the CUDA prefill: the plan (PreparePrefill -> PrefillWork: the tiling of
// planning/prefill_tiling.h, uploaded in stream order) and the run entry points that validate a
// call, resolve the variant (blocks/variant.h) and dispatch to the per-(head_dim, dtype, tile)
// launchers. Head dims compiled: ATTND_CUDA_HD<D> (kernels/cuda/CMakeLists.txt).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/cuda_prefill.h"
#include "backend/cuda_status.h"
#include "backend/device_query.h"
#include "backend/launch_checks.h"
#include "blocks/variant.h"
#include "merge/merge_params.h"
#include "planning/kernel_paths.h"
#include "planning/page_table.h"
#include "planning/prefill_tiling.h"
#include "prefill/prefill_params.h"

namespace attnd::kernels::cuda {

// Owns the device array of work items (one stream-ordered allocation) and the event that marks
// its upload complete, and remembers the shape it was planned for so that runs can be checked
// against it.
class PrefillWork {
 public:
  PrefillWork() = default;
  PrefillWork(const PrefillWork&) = delete;
  PrefillWork& operator=(const PrefillWork&) = delete;
  // Stream-ordered free on the stream the work was prepared on (no device-wide sync, unlike
  // cudaFree): that stream must still exist, and runs on other streams must be complete or
  // ordered before the destruction.
  ~PrefillWork() {
    if (device_ != nullptr) cudaFreeAsync(device_, stream_);
    if (uploaded_ != nullptr) cudaEventDestroy(uploaded_);
  }

  // One stream-ordered device allocation: items | state_indptr | partial_lse | partial_o (each
  // 256-byte aligned; the last three only when the schedule splits).
  void* device_ = nullptr;
  internal::PrefillItem* items_ = nullptr;  // device, [num_items_]
  int32_t* state_indptr_ = nullptr;         // device, [qo_nnz + 1] (split)
  float* partial_lse_ = nullptr;            // device, [num_states, num_qo_heads] (split)
  void* partial_o_ =
      nullptr;           // device, [num_states, num_qo_heads, head_dim], o's 16-bit type (split)
  int32_t qo_rows_ = 0;  // qo_nnz (split: the merge's rows)
  cudaStream_t stream_ =
      nullptr;  // device_ is allocated, uploaded and freed in this stream's order
  cudaEvent_t uploaded_ = nullptr;  // recorded on stream_ after the upload
  int32_t num_items_ = 0;
  int32_t batch_size_ = 0;
  int32_t num_qo_heads_ = 0;
  int32_t num_kv_heads_ = 0;
  int32_t head_dim_ = 0;
  internal::TileVariant variant_ = internal::TileVariant::kDefault;
  bool custom_mask_ = false;  // PrefillScheduleOptions::custom_mask: runs may carry a mask
  std::vector<unsigned char> host_image_;  // the upload's source (items | state_indptr), kept
};

namespace {

// The device facts split-KV needs: the current device's SMs (or the options'), two resident
// CTAs per SM unless the options say otherwise (PrefillScheduleOptions).
absl::StatusOr<internal::DeviceFill> ResolvePrefillFill(const PrefillScheduleOptions& options) {
  internal::DeviceFill fill;
  fill.ctas_per_sm = options.ctas_per_sm > 0 ? options.ctas_per_sm : 2;
  fill.num_sms = options.num_sms;
  if (fill.num_sms <= 0) {
    auto sms = CurrentSmCount();
    if (!sms.ok()) return sms.status();
    fill.num_sms = *sms;
  }
  return fill;
}

}  // namespace

void PrefillWorkDeleter::operator()(PrefillWork* w) const { delete w; }

absl::StatusOr<PrefillWorkPtr> PreparePrefill(std::span<const int32_t> qo_indptr,
                                              std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                              int32_t num_kv_heads, int32_t head_dim,
                                              const PrefillScheduleOptions& options,
                                              cudaStream_t stream) {
  if (auto s = checks::PrefillPlan(qo_indptr, kv_len, num_qo_heads, num_kv_heads, head_dim);
      !s.ok()) {
    return s;
  }
  auto sm90 = CurrentDeviceIsSm90();
  if (!sm90.ok()) return sm90.status();
  const internal::TileVariant variant =
      internal::ResolvePrefillTile(head_dim, options.tile, *sm90, options.custom_mask);
  internal::DeviceFill fill;
  if (internal::PrefillNeedsDeviceFill(options)) {
    auto f = ResolvePrefillFill(options);
    if (!f.ok()) return f.status();
    fill = *f;
  }
  const int32_t group = num_qo_heads / num_kv_heads;
  auto schedule = internal::PlanPrefillSchedule(qo_indptr, kv_len, group, num_kv_heads,
                                                internal::CtaRows(head_dim, variant),
                                                internal::TileKv(head_dim, variant), options, fill);
  if (!schedule.ok()) return schedule.status();

  auto work = PrefillWorkPtr(new PrefillWork());
  work->batch_size_ = static_cast<int32_t>(qo_indptr.size() - 1);
  work->num_qo_heads_ = num_qo_heads;
  work->num_kv_heads_ = num_kv_heads;
  work->head_dim_ = head_dim;
  work->variant_ = variant;
  work->custom_mask_ = options.custom_mask;
  work->num_items_ = static_cast<int32_t>(schedule->items.size());
  if (schedule->items.empty()) return work;

  // The host image of the upload (items, then, split, state_indptr) in the device layout.
  const internal::PrefillWorkspaceLayout layout =
      internal::LayoutPrefillWorkspace(*schedule, num_qo_heads, head_dim);
  work->host_image_.assign(layout.upload_bytes, 0);
  std::memcpy(work->host_image_.data() + layout.items, schedule->items.data(),
              schedule->items.size() * sizeof(internal::PrefillItem));
  std::memcpy(work->host_image_.data() + layout.state_indptr, schedule->state_indptr.data(),
              schedule->state_indptr.size() * sizeof(int32_t));
  const size_t bytes = layout.total_bytes;
  // Stream-ordered allocation from the device's memory pool: no cudaMalloc per plan.
  if (auto s = CudaStatus(cudaMallocAsync(&work->device_, bytes, stream),
                          "prefill: cudaMallocAsync(work items and split-KV states)");
      !s.ok()) {
    work->device_ = nullptr;
    return s;
  }
  work->stream_ = stream;
  auto* base = static_cast<unsigned char*>(work->device_);
  work->items_ = reinterpret_cast<internal::PrefillItem*>(base + layout.items);
  if (schedule->chunk_tokens > 0) {
    work->state_indptr_ = reinterpret_cast<int32_t*>(base + layout.state_indptr);
    work->partial_lse_ = reinterpret_cast<float*>(base + layout.partial_lse);
    work->partial_o_ = base + layout.partial_o;
    work->qo_rows_ = qo_indptr.back();
  }
  // In stream order, not waited for: runs on `stream` follow the upload; runs on another stream
  // wait for the event first (RunPagedPrefill / RunRaggedPrefill).
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(work->device_, work->host_image_.data(), work->host_image_.size(),
                      cudaMemcpyHostToDevice, stream),
      "prefill: upload work items");
  ATTND_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&work->uploaded_, cudaEventDisableTiming),
                             "prefill: cudaEventCreate(upload)");
  ATTND_RETURN_IF_CUDA_ERROR(cudaEventRecord(work->uploaded_, stream),
                             "prefill: cudaEventRecord(upload)");
  return work;
}

absl::StatusOr<PrefillWorkPtr> PreparePrefill(std::span<const int32_t> qo_indptr,
                                              std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                              int32_t num_kv_heads, int32_t head_dim,
                                              cudaStream_t stream) {
  return PreparePrefill(qo_indptr, kv_len, num_qo_heads, num_kv_heads, head_dim,
                        PrefillScheduleOptions(), stream);
}

namespace {

internal::PrefillParams CommonParams(const PrefillWork& work, const QueryOutput& qo,
                                     const AttentionOptions& opt, int32_t head_dim) {
  const int32_t item_rows = internal::CtaRows(head_dim, work.variant_);
  internal::PrefillParams p{.q = qo.q,
                            .o = qo.o,
                            .lse = qo.lse,
                            .qo_indptr = qo.qo_indptr,
                            .num_qo_heads = work.num_qo_heads_,
                            .num_kv_heads = work.num_kv_heads_,
                            .group = work.num_qo_heads_ / work.num_kv_heads_,
                            .items = work.items_,
                            .num_items = work.num_items_,
                            .item_rows = item_rows,
                            .sub_items = 1,
                            .variant = internal::ResolveVariant(opt, head_dim),
                            .partial_o = work.partial_o_,
                            .partial_lse = work.partial_lse_};
  // The RoPE kernels have the default tile: several CTAs per item of a wider plan.
  if (p.variant.rope) {
    p.sub_items = item_rows / internal::CtaRows(head_dim, internal::TileVariant::kDefault);
  }
  return p;
}

// Runs on another stream than the plan's wait for the upload of its work items (in the device's
// order, no host wait). Runs on the plan's stream are ordered after it already (and stay
// capturable into a CUDA graph: no cross-stream event).
absl::Status WaitForUpload(const PrefillWork& work, cudaStream_t stream) {
  if (work.uploaded_ == nullptr || stream == work.stream_) return absl::OkStatus();
  return CudaStatus(cudaStreamWaitEvent(stream, work.uploaded_, 0),
                    "prefill: wait for the plan's upload");
}

// One (head_dim, paged) pair: the element type, then the kernel of the plan's tile (RoPE runs
// the default-tile RoPE kernel; the wide tiles exist at head_dim 128 only).
template <int D, bool kPaged, internal::TileVariant kVariant, bool kRope>
cudaError_t LaunchTyped(bool bf16, const internal::PrefillParams& p, cudaStream_t stream) {
  return bf16 ? internal::LaunchPrefill<D, __nv_bfloat16, kPaged, kVariant, kRope>(p, stream)
              : internal::LaunchPrefill<D, __half, kPaged, kVariant, kRope>(p, stream);
}
template <int D, bool kPaged>
cudaError_t LaunchHeadDim(bool bf16, internal::TileVariant variant,
                          const internal::PrefillParams& p, cudaStream_t stream) {
  using V = internal::TileVariant;
  if (p.variant.rope) return LaunchTyped<D, kPaged, V::kDefault, true>(bf16, p, stream);
  if constexpr (D == 64 || D == 128) {
    if (variant == V::kHopper) {
      // A custom mask takes the kernel built with it (paged only: ragged runs have none); the
      // FA2-class default and RoPE kernels apply it at no register cost, the sm90 kernel's
      // consumers would spill (ptxas, 2026-12-02).
      if constexpr (kPaged) {
        if (p.variant.mask.words != nullptr) {
          return bf16 ? internal::LaunchPrefillSm90<D, __nv_bfloat16, true, true>(p, stream)
                      : internal::LaunchPrefillSm90<D, __half, true, true>(p, stream);
        }
      }
      return bf16 ? internal::LaunchPrefillSm90<D, __nv_bfloat16, kPaged>(p, stream)
                  : internal::LaunchPrefillSm90<D, __half, kPaged>(p, stream);
    }
  }
  if constexpr (D == 128) {
    switch (variant) {
      case V::kWide: return LaunchTyped<D, kPaged, V::kWide, false>(bf16, p, stream);
      case V::kWide3: return LaunchTyped<D, kPaged, V::kWide3, false>(bf16, p, stream);
      case V::kWide64: return LaunchTyped<D, kPaged, V::kWide64, false>(bf16, p, stream);
      case V::kDefault:
      case V::kHopper: break;
    }
  }
  return LaunchTyped<D, kPaged, V::kDefault, false>(bf16, p, stream);
}

template <bool kPaged>
cudaError_t Dispatch(int32_t head_dim, DType dtype, internal::TileVariant variant,
                     const internal::PrefillParams& p, cudaStream_t stream) {
  const bool bf16 = dtype == DType::kBFloat16;
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64: return LaunchHeadDim<64, kPaged>(bf16, variant, p, stream);
#endif
#ifdef ATTND_CUDA_HD128
    case 128: return LaunchHeadDim<128, kPaged>(bf16, variant, p, stream);
#endif
#ifdef ATTND_CUDA_HD256
    case 256: return LaunchHeadDim<256, kPaged>(bf16, variant, p, stream);
#endif
    default:
      return cudaErrorInvalidValue;  // excluded by checks::PagedPrefillRun / RaggedPrefillRun
  }
}

// After the plan's upload (WaitForUpload), the kernel of (head_dim, dtype, the plan's tile).
template <bool kPaged>
absl::Status Launch(const PrefillWork& work, int32_t head_dim, DType dtype,
                    const internal::PrefillParams& p, cudaStream_t stream) {
  if (auto s = WaitForUpload(work, stream); !s.ok()) return s;
  ATTND_RETURN_IF_CUDA_ERROR(
      Dispatch<kPaged>(head_dim, dtype, work.variant_, p, stream),
      kPaged ? "prefill: paged prefill launch" : "prefill: ragged prefill launch");
  if (work.state_indptr_ == nullptr) return absl::OkStatus();
  // Split-KV: the chunks' partial states -> o, lse (rows of unsplit requests were written).
  const internal::MergeKernelParams m{.v_in = work.partial_o_,
                                      .s_in = work.partial_lse_,
                                      .v_out = p.o,
                                      .s_out = p.lse,
                                      .num_rows = work.qo_rows_,
                                      .num_heads = work.num_qo_heads_,
                                      .head_dim = head_dim,
                                      .state_indptr = work.state_indptr_,
                                      .skip_single = 1,
                                      .sinks = p.variant.sinks};
  return CudaStatus(internal::LaunchMergeKernel(m, dtype, dtype, stream),
                    "prefill: split-KV merge launch");
}

}  // namespace

const char* PrefillKernelName(const PrefillWork& work) {
  return internal::TileVariantName(work.variant_);
}

namespace {

checks::PlanShape Shape(const PrefillWork& work) {
  return {work.batch_size_, work.num_qo_heads_, work.num_kv_heads_, work.head_dim_};
}

}  // namespace

absl::Status CheckPagedPrefill(const PrefillWork& work, const PagedAttentionParams& params) {
  if (params.options.custom_mask.words != nullptr && !work.custom_mask_) {
    return absl::InvalidArgumentError(
        "prefill: a custom mask needs a plan prepared with PrefillScheduleOptions::custom_mask "
        "(its tile's kernel applies masks)");
  }
  return checks::PagedPrefillRun(Shape(work), params);
}

absl::Status CheckRaggedPrefill(const PrefillWork& work, const RaggedAttentionParams& params) {
  return checks::RaggedPrefillRun(Shape(work), params);
}

namespace {

// One run: checks, the common params, the K/V addressing of the layout, the launch.
template <bool kPaged, typename Params>
absl::Status RunPrefill(const PrefillWork& work, const Params& params, cudaStream_t stream) {
  if constexpr (kPaged) {
    if (auto s = CheckPagedPrefill(work, params); !s.ok()) return s;
  } else {
    if (auto s = CheckRaggedPrefill(work, params); !s.ok()) return s;
  }
  const auto& kv = params.kv;
  if (work.num_items_ == 0) return absl::OkStatus();
  internal::PrefillParams p = CommonParams(work, params.qo, params.options, kv.head_dim);
  if constexpr (kPaged) {
    p.k_base = kv.data;
    p.v_base = static_cast<const char*>(kv.data) + kv.kv_stride * DTypeSize(kv.dtype);
    p.page_stride = kv.page_stride;
    p.token_stride = kv.token_stride;
    p.head_stride = kv.head_stride;
    p.page_size = kv.page_size;
    p.page_shift = internal::PageShift(kv.page_size);
    p.kv_indptr = kv.indptr;
    p.kv_indices = kv.indices;
    p.last_page_len = kv.last_page_len;
  } else {
    p.k_base = kv.k;
    p.v_base = kv.v;
    p.token_stride = kv.stride_n;
    p.head_stride = kv.stride_h;
    p.kv_indptr = kv.indptr;
  }
  return Launch<kPaged>(work, kv.head_dim, kv.dtype, p, stream);
}

}  // namespace

absl::Status RunPagedPrefill(const PrefillWork& work, const PagedAttentionParams& params,
                             cudaStream_t stream) {
  return RunPrefill<true>(work, params, stream);
}

absl::Status RunRaggedPrefill(const PrefillWork& work, const RaggedAttentionParams& params,
                              cudaStream_t stream) {
  return RunPrefill<false>(work, params, stream);
}

}  // namespace attnd::kernels::cuda
