// Host side of batch decode: the split-KV schedule (PrepareDecode), the DecodeWork that owns its
// device arrays, and RunPagedDecode (validation, kernel dispatch by head_dim/dtype, merge pass).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/cuda_launch.h"
#include "cuda_status.h"
#include "launch_checks.h"
#include "launch_internal.h"

namespace attnd::kernels::cuda {

using internal::DecodeKernelParams;
using internal::DecodeWorkItem;

class DecodeWork {
 public:
  // Stream-ordered free on the stream the work was prepared on (no device-wide sync, unlike
  // cudaFree): that stream must still exist, and runs on other streams must be complete or
  // ordered before the destruction.
  ~DecodeWork() {
    if (device_block_ != nullptr) cudaFreeAsync(device_block_, stream_);
  }

  int32_t batch = 0;
  int32_t num_qo_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t group = 1;
  int32_t head_tile = 1;
  int32_t head_tiles = 1;
  int32_t chunk_tokens = 0;
  bool split = false;
  bool tensor_cores = false;
  std::vector<DecodeWorkItem> items;    // host copy
  std::vector<int32_t> chunk_indptr;    // [batch + 1] host copy

  // One device allocation: items | chunk_indptr | partial_lse | partial_o (256-byte aligned).
  void* device_block_ = nullptr;
  cudaStream_t stream_ = nullptr;  // the block was allocated (and is freed) in this stream's order
  const DecodeWorkItem* d_items = nullptr;
  const int32_t* d_chunk_indptr = nullptr;
  float* d_partial_lse = nullptr;
  float* d_partial_o = nullptr;
};

void DecodeWorkDeleter::operator()(DecodeWork* w) const { delete w; }

namespace internal {
int DecodeHeadTile(int group) {
  if (group <= 1) return 1;
  if (group <= 2) return 2;
  if (group <= 4) return 4;
  return 8;  // groups > 8 take several CTAs per KV head
}
}  // namespace internal

namespace {

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

template <DType kDType>
cudaError_t DispatchHeadDim(int32_t head_dim, const DecodeKernelParams& params, int num_items,
                            int num_kv_heads, int head_tile, cudaStream_t stream) {
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64:
      return internal::LaunchDecodeKernel<kDType, 64>(params, num_items, num_kv_heads, head_tile,
                                                      stream);
#endif
#ifdef ATTND_CUDA_HD128
    case 128:
      return internal::LaunchDecodeKernel<kDType, 128>(params, num_items, num_kv_heads,
                                                       head_tile, stream);
#endif
#ifdef ATTND_CUDA_HD256
    case 256:
      return internal::LaunchDecodeKernel<kDType, 256>(params, num_items, num_kv_heads,
                                                       head_tile, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

template <DType kDType>
cudaError_t DispatchTcHeadDim(int32_t head_dim, const DecodeKernelParams& params, int num_items,
                              int num_kv_heads, cudaStream_t stream) {
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64:
      return internal::LaunchDecodeTcKernel<kDType, 64>(params, num_items, num_kv_heads, stream);
#endif
#ifdef ATTND_CUDA_HD128
    case 128:
      return internal::LaunchDecodeTcKernel<kDType, 128>(params, num_items, num_kv_heads, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

bool TcHeadDim(int32_t head_dim) { return checks::HeadDimBuilt(head_dim) && head_dim <= 128; }

cudaError_t Occupancy(int32_t head_dim, bool tensor_cores, int head_tile, int* ctas) {
  if (tensor_cores) {
    switch (head_dim) {
#ifdef ATTND_CUDA_HD64
      case 64: return internal::DecodeTcKernelOccupancy<DType::kFloat16, 64>(ctas);
#endif
#ifdef ATTND_CUDA_HD128
      case 128: return internal::DecodeTcKernelOccupancy<DType::kFloat16, 128>(ctas);
#endif
      default: return cudaErrorInvalidValue;
    }
  }
  switch (head_dim) {
#ifdef ATTND_CUDA_HD64
    case 64: return internal::DecodeKernelOccupancy<DType::kFloat16, 64>(head_tile, ctas);
#endif
#ifdef ATTND_CUDA_HD128
    case 128: return internal::DecodeKernelOccupancy<DType::kFloat16, 128>(head_tile, ctas);
#endif
#ifdef ATTND_CUDA_HD256
    case 256: return internal::DecodeKernelOccupancy<DType::kFloat16, 256>(head_tile, ctas);
#endif
    default: return cudaErrorInvalidValue;
  }
}

int64_t CountChunks(std::span<const int32_t> kv_len, int64_t chunk) {
  int64_t n = 0;
  for (int32_t len : kv_len) n += std::max<int64_t>(1, (len + chunk - 1) / chunk);
  return n;
}

}  // namespace

absl::StatusOr<DecodeWorkPtr> PrepareDecode(std::span<const int32_t> kv_len, int32_t num_qo_heads,
                                            int32_t num_kv_heads, int32_t head_dim,
                                            int32_t page_size,
                                            const DecodeScheduleOptions& options,
                                            cudaStream_t stream) {
  using Kernel = DecodeScheduleOptions::Kernel;
  if (auto s = checks::DecodePlan(kv_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                                  options.kernel == Kernel::kTensorCores);
      !s.ok()) {
    return s;
  }

  DecodeWorkPtr work(new DecodeWork());
  work->batch = static_cast<int32_t>(kv_len.size());
  work->num_qo_heads = num_qo_heads;
  work->num_kv_heads = num_kv_heads;
  work->head_dim = head_dim;
  work->group = num_qo_heads / num_kv_heads;
  work->tensor_cores = options.kernel == Kernel::kTensorCores ||
                       (options.kernel == Kernel::kAuto && work->group >= 4 && TcHeadDim(head_dim));
  work->head_tile =
      work->tensor_cores ? internal::kTcHeadTile : internal::DecodeHeadTile(work->group);
  work->head_tiles = (work->group + work->head_tile - 1) / work->head_tile;
  // <= num_qo_heads <= 65535 (checks::DecodePlan): the grid's y dimension.
  const int64_t head_ctas = static_cast<int64_t>(num_kv_heads) * work->head_tiles;

  // ---- the split-KV schedule ----
  int64_t chunk = 0;  // 0 = no split
  const int32_t max_len = *std::max_element(kv_len.begin(), kv_len.end());
  if (options.fixed_chunk_tokens > 0) {
    chunk = options.fixed_chunk_tokens;
  } else if (options.allow_split) {
    int num_sms = options.num_sms;
    if (num_sms <= 0) {
      int dev = 0;
      ATTND_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
      ATTND_RETURN_IF_CUDA_ERROR(
          cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev),
          "cudaDeviceGetAttribute(multiProcessorCount)");
    }
    int ctas_per_sm = options.ctas_per_sm;
    if (ctas_per_sm <= 0) {
      ATTND_RETURN_IF_CUDA_ERROR(Occupancy(head_dim, work->tensor_cores, work->head_tile, &ctas_per_sm),
                                 "decode occupancy");
      ctas_per_sm = std::max(ctas_per_sm, 1);
    }
    const int64_t target = std::max<int64_t>(
        1, static_cast<int64_t>(static_cast<double>(num_sms) * ctas_per_sm *
                                std::max(0.01f, options.waves)));
    if (static_cast<int64_t>(work->batch) * head_ctas < target) {
      // The smallest chunk (a multiple of the granule) whose grid still fits in one full wave:
      // all CTAs run concurrently and finish together; fewer, longer chunks merge less.
      const int64_t granule = std::max<int64_t>(16, page_size);
      const int64_t lo =
          std::max<int64_t>(granule, (options.min_chunk_tokens + granule - 1) / granule * granule);
      const int64_t hi = std::max<int64_t>(lo, (max_len + granule - 1) / granule * granule);
      int64_t a = lo / granule, z = hi / granule;  // search over multiples of the granule
      while (a < z) {
        const int64_t mid = (a + z) / 2;
        if (CountChunks(kv_len, mid * granule) * head_ctas <= target) {
          z = mid;
        } else {
          a = mid + 1;
        }
      }
      chunk = a * granule;
      if (chunk >= max_len) chunk = 0;
    }
  }
  work->chunk_tokens = static_cast<int32_t>(chunk);

  work->chunk_indptr.assign(1, 0);
  for (int32_t b = 0; b < work->batch; ++b) {
    const int32_t len = kv_len[b];
    if (chunk == 0 || len <= chunk) {
      work->items.push_back({b, 0, len, 0});
    } else {
      work->split = true;
      for (int64_t s = 0; s < len; s += chunk) {
        work->items.push_back({b, static_cast<int32_t>(s),
                               static_cast<int32_t>(std::min<int64_t>(len, s + chunk)), 1});
      }
    }
    work->chunk_indptr.push_back(static_cast<int32_t>(work->items.size()));
  }
  if (work->items.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("decode: too many work items");
  }

  // ---- device arrays ----
  const size_t n_items = work->items.size();
  const size_t items_bytes = AlignUp(n_items * sizeof(DecodeWorkItem));
  const size_t indptr_bytes = AlignUp(work->chunk_indptr.size() * sizeof(int32_t));
  const size_t rows = work->split ? n_items * num_qo_heads : 0;
  const size_t lse_bytes = AlignUp(rows * sizeof(float));
  const size_t o_bytes = AlignUp(rows * head_dim * sizeof(float));
  const size_t total = items_bytes + indptr_bytes + lse_bytes + o_bytes;
  // Stream-ordered allocation from the device's memory pool: no cudaMalloc per plan.
  if (const cudaError_t e = cudaMallocAsync(&work->device_block_, total, stream);
      e != cudaSuccess) {
    work->device_block_ = nullptr;
    return CudaStatus(e, "decode workspace");
  }
  work->stream_ = stream;
  char* base = static_cast<char*>(work->device_block_);
  work->d_items = reinterpret_cast<const DecodeWorkItem*>(base);
  work->d_chunk_indptr = reinterpret_cast<const int32_t*>(base + items_bytes);
  if (work->split) {
    work->d_partial_lse = reinterpret_cast<float*>(base + items_bytes + indptr_bytes);
    work->d_partial_o = reinterpret_cast<float*>(base + items_bytes + indptr_bytes + lse_bytes);
  }
  // Pageable sources: cudaMemcpyAsync returns after staging them, so the host vectors may
  // change afterwards (they do not; they stay as the work's host copy).
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(base, work->items.data(), n_items * sizeof(DecodeWorkItem),
                      cudaMemcpyHostToDevice, stream),
      "decode schedule upload");
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(base + items_bytes, work->chunk_indptr.data(),
                      work->chunk_indptr.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream),
      "decode schedule upload");
  return work;
}

DecodeScheduleInfo GetDecodeScheduleInfo(const DecodeWork& work) {
  DecodeScheduleInfo info;
  info.batch_size = work.batch;
  info.num_chunks = static_cast<int32_t>(work.items.size());
  info.chunk_tokens = work.chunk_tokens;
  info.head_groups = work.num_kv_heads * work.head_tiles;
  info.split = work.split;
  info.tensor_cores = work.tensor_cores;
  return info;
}

absl::Status CheckPagedDecode(const DecodeWork& work, const PagedAttentionParams& params) {
  return checks::DecodeRun({work.batch, work.num_qo_heads, work.num_kv_heads, work.head_dim},
                           params);
}

absl::Status RunPagedDecode(const DecodeWork& work, const PagedAttentionParams& params,
                            cudaStream_t stream) {
  if (auto s = CheckPagedDecode(work, params); !s.ok()) return s;
  const QueryOutput& qo = params.qo;
  const PagedKV& kv = params.kv;
  const AttentionOptions& opt = params.options;

  DecodeKernelParams p;
  p.q = qo.q;
  p.o = qo.o;
  p.lse = qo.lse;
  p.kv_data = kv.data;
  p.page_stride = kv.page_stride;
  p.kv_stride = kv.kv_stride;
  p.token_stride = kv.token_stride;
  p.head_stride = kv.head_stride;
  p.page_size = kv.page_size;
  {  // magic numbers for t / page_size (Granlund-Montgomery, round-up variant)
    int s = 0;
    while ((int64_t{1} << s) < kv.page_size) ++s;
    const uint64_t d = static_cast<uint64_t>(kv.page_size);
    p.page_div_m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1);
    p.page_div_s = s;
  }
  p.indptr = kv.indptr;
  p.indices = kv.indices;
  p.last_page_len = kv.last_page_len;
  p.num_qo_heads = work.num_qo_heads;
  p.group = work.group;
  p.head_tiles = work.head_tiles;
  p.items = work.d_items;
  p.partial_o = work.d_partial_o;
  p.partial_lse = work.d_partial_lse;
  p.logit = internal::MakeLogitScale(opt, kv.head_dim);
  p.window_left = opt.window_left;
  p.rope = opt.pos_encoding == PosEncoding::kRopeLlama ? 1 : 0;
  p.rope_offsets = p.rope ? opt.rope_offsets : nullptr;
  if (p.rope) internal::FillRopeFreqs(opt, kv.head_dim, p.rope_freq);

  const int num_items = static_cast<int>(work.items.size());
  cudaError_t e;
  if (work.tensor_cores) {
    e = kv.dtype == DType::kFloat16
            ? DispatchTcHeadDim<DType::kFloat16>(kv.head_dim, p, num_items, work.num_kv_heads,
                                                 stream)
            : DispatchTcHeadDim<DType::kBFloat16>(kv.head_dim, p, num_items, work.num_kv_heads,
                                                  stream);
  } else {
    e = kv.dtype == DType::kFloat16
                      ? DispatchHeadDim<DType::kFloat16>(kv.head_dim, p, num_items,
                                                         work.num_kv_heads, work.head_tile, stream)
                      : DispatchHeadDim<DType::kBFloat16>(kv.head_dim, p, num_items,
                                                          work.num_kv_heads, work.head_tile,
                                                          stream);
  }
  ATTND_RETURN_IF_CUDA_ERROR(e, absl::StrCat("decode kernel launch (head_dim ", kv.head_dim, ")"));
  if (work.split) {
    internal::MergeKernelParams m;
    m.v_in = work.d_partial_o;
    m.s_in = work.d_partial_lse;
    m.v_out = qo.o;
    m.s_out = qo.lse;
    m.num_rows = work.batch;
    m.num_heads = work.num_qo_heads;
    m.head_dim = work.head_dim;
    m.state_indptr = work.d_chunk_indptr;
    m.skip_single = 1;
    ATTND_RETURN_IF_CUDA_ERROR(
        internal::LaunchDecodeMergeKernel(m, kv.dtype, stream),
        "decode merge kernel launch");
  }
  return absl::OkStatus();
}

}  // namespace attnd::kernels::cuda
