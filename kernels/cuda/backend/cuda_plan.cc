// CudaPlan (cuda_plan.h): the page-table upload and the schedule of a CUDA plan, and its update
// in place (streamed page-table updates).
#include "backend/cuda_plan.h"

#include <utility>

#include "backend/cuda_status.h"
#include "planning/page_table.h"

namespace attnd::kernels::cuda {
namespace {

// The decode schedule or the prefill tiling of `ps` (kv_len: its KvLengths), prepared on `stream`.
absl::Status PrepareSchedule(const PlanSpec& ps, std::span<const int32_t> kv_len,
                             cudaStream_t stream, DecodeWorkPtr* decode, PrefillWorkPtr* prefill) {
  if (ps.kind == AttentionKind::kDecode) {
    auto work = PrepareDecode(kv_len, ps.num_qo_heads, ps.num_kv_heads, ps.head_dim, ps.page_size,
                              DecodeScheduleOptions(), stream);
    if (!work.ok()) return work.status();
    *decode = *std::move(work);
    return absl::OkStatus();
  }
  PrefillScheduleOptions options;
  options.custom_mask = !ps.custom_mask.empty();
  auto work = PreparePrefill(ps.qo_indptr, kv_len, ps.num_qo_heads, ps.num_kv_heads, ps.head_dim,
                             options, stream);
  if (!work.ok()) return work.status();
  *prefill = *std::move(work);
  return absl::OkStatus();
}

// A stream-ordered block of `bytes` for a page table (cudaMallocAsync from the device's pool:
// memory freed by an earlier plan on this stream is reused, and nothing waits for the device).
absl::StatusOr<void*> AllocateTable(size_t bytes, cudaStream_t stream) {
  void* block = nullptr;
  if (const cudaError_t e = cudaMallocAsync(&block, bytes, stream); e != cudaSuccess) {
    if (!IsStickyCudaError(e)) cudaGetLastError();  // an out-of-memory is not the context's
    return CudaStatus(e, "plan page table (cudaMallocAsync)");
  }
  return block;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaPlan>> CudaPlan::Create(PlanSpec spec,
                                                           std::span<const int32_t> kv_len,
                                                           int device, cudaStream_t stream) {
  auto plan = std::make_unique<CudaPlan>(std::move(spec));
  const PlanSpec& ps = plan->spec();
  plan->device_ = device;

  // The page table's device layout and upload image: planning/page_table.h.
  plan->capacity_batch_ = ps.batch_size();
  plan->capacity_indices_ = ps.kv_indices.size();
  plan->layout_ = internal::LayoutPageTable(plan->capacity_batch_, plan->capacity_indices_,
                                            ps.custom_mask.words.size());
  auto block = AllocateTable(plan->layout_.total_bytes, stream);
  if (!block.ok()) return block.status();
  plan->stream_ = stream;
  plan->PointAt(*block);
  // One upload of the whole table (rope_offsets excluded: Attention writes them) from a host
  // image with the device layout, owned by the plan.
  plan->upload_image_ = internal::PageTableImage(ps, plan->layout_);
  const std::vector<char>& image = plan->upload_image_;
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(plan->block_, image.data(), image.size(), cudaMemcpyHostToDevice, stream),
      "plan upload");
  if (auto s = PrepareSchedule(ps, kv_len, stream, &plan->decode, &plan->prefill); !s.ok()) {
    return s;
  }
  return plan;
}

void CudaPlan::PointAt(void* block) {
  block_ = block;
  char* base = static_cast<char*>(block_);
  const internal::PageTableLayout& layout = layout_;
  d_indptr = reinterpret_cast<int32_t*>(base + layout.kv_indptr);
  d_qo_indptr = reinterpret_cast<int32_t*>(base + layout.qo_indptr);
  d_indices = reinterpret_cast<int32_t*>(base + layout.kv_indices);
  d_last_page_len = reinterpret_cast<int32_t*>(base + layout.last_page_len);
  d_rope_offsets = reinterpret_cast<int32_t*>(base + layout.rope_offsets);
  mask = {};
  if (!spec().custom_mask.empty()) {
    mask = {reinterpret_cast<const uint32_t*>(base + layout.mask_words),
            reinterpret_cast<const int32_t*>(base + layout.mask_word_offset),
            reinterpret_cast<const int32_t*>(base + layout.mask_dense_until)};
  }
}

absl::Status CudaPlan::Update(PlanSpec spec, std::span<const int32_t> kv_len, cudaStream_t stream) {
  // The new schedule first: if it cannot be made, the plan is untouched.
  DecodeWorkPtr next_decode;
  PrefillWorkPtr next_prefill;
  if (auto s = PrepareSchedule(spec, kv_len, stream, &next_decode, &next_prefill); !s.ok()) {
    return s;
  }
  const int32_t batch = spec.batch_size();
  const size_t entries = spec.kv_indices.size();
  const bool fits = batch <= capacity_batch_ && entries <= capacity_indices_;
  if (fits) {
    // Same layout: upload the one range that differs from what the block holds.
    internal::FillPageTableImage(spec, layout_, &spare_image_);
    const internal::ByteRange changed = internal::ChangedRange(upload_image_, spare_image_);
    if (changed.size() > 0) {
      ATTND_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(static_cast<char*>(block_) + changed.begin,
                                                 spare_image_.data() + changed.begin,
                                                 changed.size(), cudaMemcpyHostToDevice, stream),
                                 "plan update upload");
    }
  } else {
    const int32_t capacity_batch = static_cast<int32_t>(
        internal::GrownCapacity(static_cast<size_t>(capacity_batch_), static_cast<size_t>(batch)));
    const size_t capacity_indices = internal::GrownCapacity(capacity_indices_, entries);
    const internal::PageTableLayout layout =
        internal::LayoutPageTable(capacity_batch, capacity_indices, 0);
    auto block = AllocateTable(layout.total_bytes, stream);
    if (!block.ok()) return block.status();
    internal::FillPageTableImage(spec, layout, &spare_image_);
    if (const cudaError_t e = cudaMemcpyAsync(*block, spare_image_.data(), spare_image_.size(),
                                              cudaMemcpyHostToDevice, stream);
        e != cudaSuccess) {
      cudaFreeAsync(*block, stream);
      return CudaStatus(e, "plan update upload");
    }
    // After every run already enqueued on the stream (they read the old block).
    cudaFreeAsync(block_, stream_);
    layout_ = layout;
    capacity_batch_ = capacity_batch;
    capacity_indices_ = capacity_indices;
    PointAt(*block);
  }
  upload_image_.swap(spare_image_);
  // The old schedule's memory is freed in the stream's order, after the runs that use it.
  decode = std::move(next_decode);
  prefill = std::move(next_prefill);
  max_page_id = MaxPageId(spec);
  ReplaceSpec(std::move(spec));
  return absl::OkStatus();
}

CudaPlan::~CudaPlan() {
  cudaSetDevice(device_);
  // The schedules free their own memory in the same stream order (decode/decode.cc,
  // prefill/prefill.cu).
  decode.reset();
  prefill.reset();
  if (block_ != nullptr) cudaFreeAsync(block_, stream_);
}

}  // namespace attnd::kernels::cuda
