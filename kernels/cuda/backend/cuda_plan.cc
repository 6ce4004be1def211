// CudaPlan (cuda_plan.h): the page-table upload and the schedule of a CUDA plan.
#include "backend/cuda_plan.h"

#include <utility>

#include "backend/cuda_status.h"
#include "planning/page_table.h"

namespace attnd::kernels::cuda {

absl::StatusOr<std::unique_ptr<CudaPlan>> CudaPlan::Create(PlanSpec spec,
                                                           std::span<const int32_t> kv_len,
                                                           int device, cudaStream_t stream) {
  auto plan = std::make_unique<CudaPlan>(std::move(spec));
  const PlanSpec& ps = plan->spec();
  plan->device_ = device;

  // The page table's device layout and upload image: planning/page_table.h.
  const internal::PageTableLayout layout =
      internal::LayoutPageTable(ps.batch_size(), ps.kv_indices.size(), ps.custom_mask.words.size());
  // Stream-ordered: memory freed by an earlier plan on this stream is reused without a
  // cudaMalloc, and nothing waits for the device.
  if (const cudaError_t e = cudaMallocAsync(&plan->block_, layout.total_bytes, stream);
      e != cudaSuccess) {
    plan->block_ = nullptr;
    if (!IsStickyCudaError(e)) cudaGetLastError();  // an out-of-memory is not the context's
    return CudaStatus(e, "plan page table (cudaMallocAsync)");
  }
  plan->stream_ = stream;
  char* base = static_cast<char*>(plan->block_);
  plan->d_indptr = reinterpret_cast<int32_t*>(base + layout.kv_indptr);
  plan->d_qo_indptr = reinterpret_cast<int32_t*>(base + layout.qo_indptr);
  plan->d_indices = reinterpret_cast<int32_t*>(base + layout.kv_indices);
  plan->d_last_page_len = reinterpret_cast<int32_t*>(base + layout.last_page_len);
  plan->d_rope_offsets = reinterpret_cast<int32_t*>(base + layout.rope_offsets);
  if (!ps.custom_mask.empty()) {
    plan->mask = {reinterpret_cast<const uint32_t*>(base + layout.mask_words),
                  reinterpret_cast<const int32_t*>(base + layout.mask_word_offset),
                  reinterpret_cast<const int32_t*>(base + layout.mask_dense_until)};
  }
  // One upload of the whole table (rope_offsets excluded: Attention writes them) from a host
  // image with the device layout, owned by the plan.
  plan->upload_image_ = internal::PageTableImage(ps, layout);
  const std::vector<char>& image = plan->upload_image_;
  ATTND_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(base, image.data(), image.size(), cudaMemcpyHostToDevice, stream),
      "plan upload");

  if (ps.kind == AttentionKind::kDecode) {
    auto work = PrepareDecode(kv_len, ps.num_qo_heads, ps.num_kv_heads, ps.head_dim, ps.page_size,
                              DecodeScheduleOptions(), stream);
    if (!work.ok()) return work.status();
    plan->decode = *std::move(work);
  } else {
    PrefillScheduleOptions options;
    options.custom_mask = !ps.custom_mask.empty();
    auto work = PreparePrefill(ps.qo_indptr, kv_len, ps.num_qo_heads, ps.num_kv_heads, ps.head_dim,
                               options, stream);
    if (!work.ok()) return work.status();
    plan->prefill = *std::move(work);
  }
  return plan;
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
