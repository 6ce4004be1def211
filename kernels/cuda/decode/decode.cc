// Host side of batch decode: PrepareDecode (the schedule from planning/decode_schedule.h, its
// upload, the workspace), the DecodeWork that owns its device memory, and RunPagedDecode
// (checks, kernel params, dispatch by head_dim/dtype, merge pass).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cuda_launch.h"
#include "backend/cuda_status.h"
#include "backend/device_query.h"
#include "backend/launch_checks.h"
#include "blocks/paged_kv.h"
#include "blocks/variant.h"
#include "decode/decode_params.h"
#include "merge/merge_params.h"
#include "planning/decode_schedule.h"

namespace attnd::kernels::cuda {

using internal::DecodeKernelParams;
using internal::DecodeWorkItem;

class DecodeWork {
 public:
  // Stream-ordered free on the stream the work was prepared on (no device-wide sync, unlike
  // cudaFree): that stream must still exist, and runs on other streams must be complete or
  // ordered before the destruction. A graph-safe work's staging copy is waited for first.
  ~DecodeWork() {
    if (staged_ != nullptr) {
      cudaEventSynchronize(staged_);
      cudaEventDestroy(staged_);
    }
    if (host_staging_ != nullptr) cudaFreeHost(host_staging_);
    if (device_block_ != nullptr) cudaFreeAsync(device_block_, stream_);
  }

  checks::PlanShape shape;  // batch, head counts, head_dim the work was planned for
  int32_t group = 1;        // query heads per KV head
  int32_t head_tile = 1;    // query heads per CTA
  int32_t head_tiles = 1;   // CTAs per KV head
  bool tensor_cores = false;
  internal::DecodeSchedule schedule;  // host copy of what the device block holds

  // One device allocation (internal::LayoutDecodeWorkspace): items | chunk_indptr | partial_lse
  // | partial_o.
  void* device_block_ = nullptr;
  cudaStream_t stream_ = nullptr;  // the block was allocated (and is freed) in this stream's order
  const DecodeWorkItem* d_items = nullptr;
  const int32_t* d_chunk_indptr = nullptr;
  float* d_partial_lse = nullptr;
  float* d_partial_o = nullptr;

  // Graph-safe works (PrepareDecodeForGraph): capacities, what a re-plan needs, the live counts
  // the kernels read, and a pinned copy of the upload sections (items | chunk_indptr | counts)
  // that UpdateDecode rewrites after the previous copy out of it finished (staged_).
  bool graph = false;
  int64_t max_items = 0;
  int32_t page_size = 1;
  DecodeScheduleOptions options;
  internal::DeviceFill fill;
  internal::DecodeWorkspaceLayout layout;
  const int32_t* d_live_counts = nullptr;  // [2]: valid items, valid requests
  void* host_staging_ = nullptr;
  cudaEvent_t staged_ = nullptr;
};

void DecodeWorkDeleter::operator()(DecodeWork* w) const { delete w; }

namespace {

template <DType kQ, DType kKv>
cudaError_t DispatchHeadDim(int32_t head_dim, const DecodeKernelParams& params, int num_items,
                            int num_kv_heads, int head_tile, cudaStream_t stream) {
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64:
      return internal::LaunchDecodeKernel<kQ, kKv, 64>(params, num_items, num_kv_heads, head_tile,
                                                       stream);
#endif
#ifdef ATTND_CUDA_HD128
    case 128:
      return internal::LaunchDecodeKernel<kQ, kKv, 128>(params, num_items, num_kv_heads, head_tile,
                                                        stream);
#endif
#ifdef ATTND_CUDA_HD256
    case 256:
      return internal::LaunchDecodeKernel<kQ, kKv, 256>(params, num_items, num_kv_heads, head_tile,
                                                        stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

template <DType kQ, DType kKv>
cudaError_t DispatchTcHeadDim(int32_t head_dim, const DecodeKernelParams& params, int num_items,
                              int num_kv_heads, cudaStream_t stream) {
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64:
      return internal::LaunchDecodeTcKernel<kQ, kKv, 64>(params, num_items, num_kv_heads, stream);
#endif
#ifdef ATTND_CUDA_HD128
    case 128:
      return internal::LaunchDecodeTcKernel<kQ, kKv, 128>(params, num_items, num_kv_heads, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

// The tensor-core kernel reads K/V of q's type or fp8 (its mma operands share one 16-bit type);
// another 16-bit K/V type runs on the CUDA-core kernel, which converts every element to fp32.
bool TcReadsKv(DType q_dtype, DType kv_dtype) { return kv_dtype == q_dtype || IsFp8(kv_dtype); }

template <DType kQ, DType kKv>
cudaError_t LaunchDecodeFor(bool tensor_cores, int32_t head_dim, const DecodeKernelParams& params,
                            int num_items, int num_kv_heads, int head_tile, cudaStream_t stream) {
  if (tensor_cores) {
    if constexpr (kQ == kKv || IsFp8(kKv)) {
      return DispatchTcHeadDim<kQ, kKv>(head_dim, params, num_items, num_kv_heads, stream);
    }
    return cudaErrorInvalidValue;
  }
  return DispatchHeadDim<kQ, kKv>(head_dim, params, num_items, num_kv_heads, head_tile, stream);
}
template <DType kQ>
cudaError_t LaunchDecodeForKv(DType kv_dtype, bool tensor_cores, int32_t head_dim,
                              const DecodeKernelParams& params, int num_items, int num_kv_heads,
                              int head_tile, cudaStream_t stream) {
  constexpr auto kF16 = DType::kFloat16, kBF16 = DType::kBFloat16;
  constexpr auto kE4m3 = DType::kFloat8E4M3, kE5m2 = DType::kFloat8E5M2;
  switch (kv_dtype) {
    case kF16:
      return LaunchDecodeFor<kQ, kF16>(tensor_cores, head_dim, params, num_items, num_kv_heads,
                                       head_tile, stream);
    case kBF16:
      return LaunchDecodeFor<kQ, kBF16>(tensor_cores, head_dim, params, num_items, num_kv_heads,
                                        head_tile, stream);
    case kE4m3:
      return LaunchDecodeFor<kQ, kE4m3>(tensor_cores, head_dim, params, num_items, num_kv_heads,
                                        head_tile, stream);
    case kE5m2:
      return LaunchDecodeFor<kQ, kE5m2>(tensor_cores, head_dim, params, num_items, num_kv_heads,
                                        head_tile, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t Occupancy(int32_t head_dim, bool tensor_cores, int head_tile, int* ctas) {
  if (tensor_cores) {
    switch (head_dim) {
#ifdef ATTND_CUDA_HD64
      case 64: return internal::DecodeTcKernelOccupancy<DType::kFloat16, DType::kFloat16, 64>(ctas);
#endif
#ifdef ATTND_CUDA_HD128
      case 128:
        return internal::DecodeTcKernelOccupancy<DType::kFloat16, DType::kFloat16, 128>(ctas);
#endif
      default: return cudaErrorInvalidValue;
    }
  }
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64:
      return internal::DecodeKernelOccupancy<DType::kFloat16, DType::kFloat16, 64>(head_tile, ctas);
#endif
#ifdef ATTND_CUDA_HD128
    case 128:
      return internal::DecodeKernelOccupancy<DType::kFloat16, DType::kFloat16, 128>(head_tile,
                                                                                    ctas);
#endif
#ifdef ATTND_CUDA_HD256
    case 256:
      return internal::DecodeKernelOccupancy<DType::kFloat16, DType::kFloat16, 256>(head_tile,
                                                                                    ctas);
#endif
    default: return cudaErrorInvalidValue;
  }
}

// The device facts the automatic split needs: SMs (options.num_sms or the current device's) and
// resident CTAs per SM (options.ctas_per_sm or the chosen kernel's occupancy).
absl::StatusOr<internal::DeviceFill> ResolveDeviceFill(const DecodeScheduleOptions& options,
                                                       int32_t head_dim, bool tensor_cores,
                                                       int head_tile) {
  internal::DeviceFill fill;
  fill.num_sms = options.num_sms;
  if (fill.num_sms <= 0) {
    auto sms = CurrentSmCount();
    if (!sms.ok()) return sms.status();
    fill.num_sms = *sms;
  }
  fill.ctas_per_sm = options.ctas_per_sm;
  if (fill.ctas_per_sm <= 0) {
    ATTND_RETURN_IF_CUDA_ERROR(Occupancy(head_dim, tensor_cores, head_tile, &fill.ctas_per_sm),
                               "decode occupancy");
    fill.ctas_per_sm = std::max(fill.ctas_per_sm, 1);
  }
  return fill;
}

// Writes `sch` into the upload sections at `dst` (host memory laid out as `layout`; the counts
// are the valid items and requests).
void PackSchedule(const internal::DecodeSchedule& sch, const internal::DecodeWorkspaceLayout& l,
                  char* dst) {
  std::memcpy(dst + l.items, sch.items.data(), sch.items.size() * sizeof(DecodeWorkItem));
  std::memcpy(dst + l.chunk_indptr, sch.chunk_indptr.data(),
              sch.chunk_indptr.size() * sizeof(int32_t));
  const int32_t counts[2] = {static_cast<int32_t>(sch.items.size()),
                             static_cast<int32_t>(sch.chunk_indptr.size() - 1)};
  std::memcpy(dst + l.live_counts, counts, sizeof(counts));
}

// PrepareDecode and PrepareDecodeForGraph (max_batch > 0: capacities for max_batch requests, a
// pinned staging copy, the merge pass always allocated).
absl::StatusOr<DecodeWorkPtr> PrepareDecodeWork(std::span<const int32_t> kv_len, int32_t max_batch,
                                                int32_t num_qo_heads, int32_t num_kv_heads,
                                                int32_t head_dim, int32_t page_size,
                                                const DecodeScheduleOptions& options,
                                                cudaStream_t stream) {
  using Kernel = DecodeScheduleOptions::Kernel;
  if (auto s = checks::DecodePlan(kv_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                                  options.kernel == Kernel::kTensorCores);
      !s.ok()) {
    return s;
  }
  const bool graph = max_batch > 0;
  if (graph && static_cast<int64_t>(kv_len.size()) > max_batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode: batch of ", kv_len.size(), " requests over max_batch ", max_batch));
  }

  DecodeWorkPtr work(new DecodeWork());
  const int32_t batch_cap = graph ? max_batch : static_cast<int32_t>(kv_len.size());
  work->shape = {batch_cap, num_qo_heads, num_kv_heads, head_dim};
  work->group = num_qo_heads / num_kv_heads;
  work->tensor_cores =
      internal::UseTensorCoreDecode(options.kernel, work->group, checks::TcDecodeBuilt(head_dim));
  work->head_tile =
      work->tensor_cores ? internal::kTcHeadTile : internal::DecodeHeadTile(work->group);
  work->head_tiles = (work->group + work->head_tile - 1) / work->head_tile;
  // <= num_qo_heads <= 65535 (checks::DecodePlan).
  const int64_t head_ctas = static_cast<int64_t>(num_kv_heads) * work->head_tiles;

  internal::DeviceFill fill;
  if (internal::NeedsDeviceFill(options)) {
    auto f = ResolveDeviceFill(options, head_dim, work->tensor_cores, work->head_tile);
    if (!f.ok()) return f.status();
    fill = *f;
  }
  work->graph = graph;
  work->page_size = page_size;
  work->options = options;
  work->fill = fill;
  work->max_items = graph ? internal::GraphItemCapacity(max_batch, head_ctas, options, fill) : 0;
  if (graph && work->max_items * head_ctas > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("decode: max_batch ", max_batch, " x ",
                                                   head_ctas, " head CTAs is too large a grid"));
  }
  auto schedule =
      internal::PlanDecodeSchedule(kv_len, head_ctas, page_size, options, fill, work->max_items);
  if (!schedule.ok()) return schedule.status();
  work->schedule = *std::move(schedule);
  const internal::DecodeSchedule& sch = work->schedule;

  // ---- device arrays: a graph-safe work at its capacities, partial states whenever it may
  // split (its merge pass is always launched, so that a captured run fits every schedule) ----
  const size_t items_cap = graph ? static_cast<size_t>(work->max_items) : sch.items.size();
  const bool partial = graph ? (options.allow_split || options.fixed_chunk_tokens > 0) : sch.split;
  work->layout =
      internal::LayoutDecodeWorkspace(items_cap, batch_cap, partial, num_qo_heads, head_dim);
  const internal::DecodeWorkspaceLayout& layout = work->layout;
  // Stream-ordered allocation from the device's memory pool: no cudaMalloc per plan.
  if (const cudaError_t e = cudaMallocAsync(&work->device_block_, layout.total_bytes, stream);
      e != cudaSuccess) {
    work->device_block_ = nullptr;
    return CudaStatus(e, "decode workspace");
  }
  work->stream_ = stream;
  char* base = static_cast<char*>(work->device_block_);
  work->d_items = reinterpret_cast<const DecodeWorkItem*>(base + layout.items);
  work->d_chunk_indptr = reinterpret_cast<const int32_t*>(base + layout.chunk_indptr);
  if (graph) work->d_live_counts = reinterpret_cast<const int32_t*>(base + layout.live_counts);
  if (partial) {
    work->d_partial_lse = reinterpret_cast<float*>(base + layout.partial_lse);
    work->d_partial_o = reinterpret_cast<float*>(base + layout.partial_o);
  }
  if (graph) {
    ATTND_RETURN_IF_CUDA_ERROR(
        cudaHostAlloc(&work->host_staging_, layout.upload_bytes, cudaHostAllocDefault),
        "decode schedule staging");
    ATTND_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&work->staged_, cudaEventDisableTiming),
                               "decode schedule staging");
    PackSchedule(sch, layout, static_cast<char*>(work->host_staging_));
    ATTND_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(base, work->host_staging_, layout.upload_bytes,
                                               cudaMemcpyHostToDevice, stream),
                               "decode schedule upload");
    ATTND_RETURN_IF_CUDA_ERROR(cudaEventRecord(work->staged_, stream), "decode schedule upload");
    return work;
  }
  // Pageable sources: cudaMemcpyAsync returns after staging them, so the host vectors may
  // change afterwards (they do not; they stay as the work's host copy).
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(base + layout.items, sch.items.data(),
                      sch.items.size() * sizeof(DecodeWorkItem), cudaMemcpyHostToDevice, stream),
      "decode schedule upload");
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(base + layout.chunk_indptr, sch.chunk_indptr.data(),
                      sch.chunk_indptr.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
      "decode schedule upload");
  return work;
}

}  // namespace

absl::StatusOr<DecodeWorkPtr> PrepareDecode(std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                            int32_t num_kv_heads, int32_t head_dim,
                                            int32_t page_size, const DecodeScheduleOptions& options,
                                            cudaStream_t stream) {
  return PrepareDecodeWork(kv_len, 0, num_qo_heads, num_kv_heads, head_dim, page_size, options,
                           stream);
}

absl::StatusOr<DecodeWorkPtr> PrepareDecodeForGraph(std::span<const int32_t> kv_len,
                                                    int32_t max_batch, int32_t num_qo_heads,
                                                    int32_t num_kv_heads, int32_t head_dim,
                                                    int32_t page_size,
                                                    const DecodeScheduleOptions& options,
                                                    cudaStream_t stream) {
  if (max_batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("decode: max_batch ", max_batch, " < 1"));
  }
  return PrepareDecodeWork(kv_len, max_batch, num_qo_heads, num_kv_heads, head_dim, page_size,
                           options, stream);
}

absl::Status UpdateDecode(DecodeWork& work, std::span<const int32_t> kv_len, cudaStream_t stream) {
  if (!work.graph) {
    return absl::FailedPreconditionError(
        "decode: UpdateDecode needs a graph-safe work (PrepareDecodeForGraph)");
  }
  if (static_cast<int64_t>(kv_len.size()) > work.shape.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode: batch of ", kv_len.size(), " requests over max_batch ", work.shape.batch_size));
  }
  if (auto s = checks::DecodePlan(
          kv_len, work.shape.num_qo_heads, work.shape.num_kv_heads, work.shape.head_dim,
          work.page_size, work.options.kernel == DecodeScheduleOptions::Kernel::kTensorCores);
      !s.ok()) {
    return s;
  }
  const int64_t head_ctas = static_cast<int64_t>(work.shape.num_kv_heads) * work.head_tiles;
  auto schedule = internal::PlanDecodeSchedule(kv_len, head_ctas, work.page_size, work.options,
                                               work.fill, work.max_items);
  if (!schedule.ok()) return schedule.status();
  // The previous upload must have left the staging buffer before it is rewritten (normally long
  // done: it ran before the previous step's kernels).
  ATTND_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(work.staged_), "decode schedule staging");
  work.schedule = *std::move(schedule);
  PackSchedule(work.schedule, work.layout, static_cast<char*>(work.host_staging_));
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(work.device_block_, work.host_staging_, work.layout.upload_bytes,
                      cudaMemcpyHostToDevice, stream),
      "decode schedule upload");
  ATTND_RETURN_IF_CUDA_ERROR(cudaEventRecord(work.staged_, stream), "decode schedule upload");
  return absl::OkStatus();
}

DecodeScheduleInfo GetDecodeScheduleInfo(const DecodeWork& work) {
  DecodeScheduleInfo info;
  info.batch_size = work.shape.batch_size;
  info.num_chunks = static_cast<int32_t>(work.schedule.items.size());
  info.chunk_tokens = work.schedule.chunk_tokens;
  info.head_groups = work.shape.num_kv_heads * work.head_tiles;
  info.split = work.schedule.split;
  info.balanced = work.schedule.balanced;
  info.tensor_cores = work.tensor_cores;
  return info;
}

absl::Status CheckPagedDecode(const DecodeWork& work, const PagedAttentionParams& params) {
  return checks::DecodeRun(work.shape, params);
}

absl::Status RunPagedDecode(const DecodeWork& work, const PagedAttentionParams& params,
                            cudaStream_t stream) {
  if (auto s = CheckPagedDecode(work, params); !s.ok()) return s;
  const QueryOutput& qo = params.qo;
  const PagedKV& kv = params.kv;

  // A tensor-core plan whose K/V type that kernel does not read takes the CUDA-core kernel (same
  // work items; its own head tiles).
  const bool tensor_cores = work.tensor_cores && TcReadsKv(qo.q_dtype, kv.dtype);
  const int32_t head_tile = tensor_cores ? work.head_tile : internal::DecodeHeadTile(work.group);
  const int32_t head_tiles = (work.group + head_tile - 1) / head_tile;
  DecodeKernelParams p{.q = qo.q,
                       .o = qo.o,
                       .lse = qo.lse,
                       .kv = internal::MakePagedKvParams(kv),
                       .num_qo_heads = work.shape.num_qo_heads,
                       .group = work.group,
                       .head_tiles = head_tiles,
                       .head_ctas = work.shape.num_kv_heads * head_tiles,
                       .items = work.d_items,
                       .live_items = work.d_live_counts,
                       .partial_o = work.d_partial_o,
                       .partial_lse = work.d_partial_lse,
                       .variant = internal::ResolveVariant(params.options, kv.head_dim)};
  // A graph-safe work launches its capacity (the kernels read the valid count), so that a
  // captured run fits every later schedule.
  const int num_items = static_cast<int>(work.graph ? work.max_items : work.schedule.items.size());
  // The planner bounded items x head CTAs of its kernel; the CUDA-core fallback has more tiles.
  if (static_cast<int64_t>(num_items) * p.head_ctas > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("decode: too many CTAs (", num_items,
                                                   " work items x ", p.head_ctas, " head CTAs)"));
  }
  const int32_t hd = kv.head_dim, hkv = work.shape.num_kv_heads;
  const cudaError_t e = qo.q_dtype == DType::kFloat16
                            ? LaunchDecodeForKv<DType::kFloat16>(kv.dtype, tensor_cores, hd, p,
                                                                 num_items, hkv, head_tile, stream)
                            : LaunchDecodeForKv<DType::kBFloat16>(
                                  kv.dtype, tensor_cores, hd, p, num_items, hkv, head_tile, stream);
  ATTND_RETURN_IF_CUDA_ERROR(e, absl::StrCat("decode kernel launch (head_dim ", kv.head_dim, ")"));
  if (work.graph ? work.d_partial_o != nullptr : work.schedule.split) {
    // The partial states of the split requests -> o, lse (single-chunk requests were written).
    const internal::MergeKernelParams m{.v_in = work.d_partial_o,
                                        .s_in = work.d_partial_lse,
                                        .v_out = qo.o,
                                        .s_out = qo.lse,
                                        .num_rows = work.shape.batch_size,
                                        .num_heads = work.shape.num_qo_heads,
                                        .head_dim = work.shape.head_dim,
                                        .state_indptr = work.d_chunk_indptr,
                                        .skip_single = 1,
                                        .sinks = p.variant.sinks,
                                        .live_rows = work.graph ? work.d_live_counts + 1 : nullptr};
    ATTND_RETURN_IF_CUDA_ERROR(internal::LaunchDecodeMergeKernel(m, qo.q_dtype, stream),
                               "decode merge kernel launch");
  }
  return absl::OkStatus();
}

}  // namespace attnd::kernels::cuda
