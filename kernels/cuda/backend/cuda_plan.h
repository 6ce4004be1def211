// The plan of the CUDA backend (PreparedPlan): a batch's page table in device memory plus its
// decode split-KV schedule or prefill tiling. Created by CudaBackend::Prepare; host code only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/kernels/backend.h"
#include "attnd/kernels/backend_checks.h"
#include "attnd/kernels/cuda_launch.h"
#include "attnd/kernels/cuda_prefill.h"
#include "planning/page_table.h"

namespace attnd::kernels::cuda {

// A plan's page table in device memory ([indptr | qo_indptr | indices | last_page_len | custom
// mask | rope_offsets], one allocation: planning/page_table.h) plus the decode or prefill
// schedule.
//
// Plan memory is stream-ordered (cudaMallocAsync / cudaFreeAsync from the device's memory pool,
// on the stream the plan was prepared on), so creating and deleting plans neither calls
// cudaMalloc nor synchronises the device the way cudaFree does. Hence: a plan must be destroyed
// before the stream it was prepared on, and runs on other streams must be complete (or ordered
// before that stream's current work) when it is destroyed. attnd runs every plan on its
// session's stream, which outlives the session's plans.
class CudaPlan final : public PreparedPlan {
 public:
  // spec: checked (CheckPlanSpec, batch >= 1, the schedule's preconditions); kv_len: its
  // KvLengths. Uploads the page table (layout and image: planning/page_table.h) and prepares the
  // decode schedule or the prefill tiling, all in `stream`'s order on `device` (current).
  static absl::StatusOr<std::unique_ptr<CudaPlan>> Create(PlanSpec spec,
                                                          std::span<const int32_t> kv_len,
                                                          int device, cudaStream_t stream);
  explicit CudaPlan(PlanSpec spec)
      : PreparedPlan(std::move(spec)), max_page_id(MaxPageId(this->spec())) {}
  ~CudaPlan() override;

  // Streamed page-table updates (Backend::UpdatePlan), in place: `spec` checked as for Create and
  // UpdatableInPlace with this plan's (an ordinary table, no custom mask), `stream` the plan's.
  // All in the stream's order, nothing synchronised: the new decode schedule or prefill tiling
  // is prepared first (on failure nothing changed); the table stays in its device block while it
  // fits the block's capacity (layout_), and only the bytes from the first to the last that
  // differ from the previous upload are copied (ChangedRange: a grown request changes its
  // last_page_len, appended pages shift the later requests' entries); a table that outgrows the
  // block moves to a new one with capacity for half as much again (GrownCapacity), uploaded whole,
  // and the old block is freed after the work already enqueued. The old schedule is freed in the
  // same order. Runs enqueued before the update read the old table, later ones the new.
  absl::Status Update(PlanSpec spec, std::span<const int32_t> kv_len, cudaStream_t stream);

  int32_t max_page_id;  // checked against the layer of every run and append
  int device_ = 0;
  cudaStream_t stream_ = nullptr;  // the plan's memory is allocated and freed in its order
  void* block_ = nullptr;
  // The block's layout, for capacity_batch_ requests and capacity_indices_ page entries (the
  // plan's own sizes at Create; more after an update outgrew them).
  internal::PageTableLayout layout_;
  int32_t capacity_batch_ = 0;
  size_t capacity_indices_ = 0;
  // Host image of the page table, uploaded by one cudaMemcpyAsync; kept for the plan's lifetime
  // so the copy never depends on when the driver reads a pageable source. An update builds the
  // next image in spare_image_ (reusing its memory), uploads what differs, and swaps the two.
  std::vector<char> upload_image_;
  std::vector<char> spare_image_;
  int32_t* d_indptr = nullptr;
  int32_t* d_indices = nullptr;
  int32_t* d_last_page_len = nullptr;
  int32_t* d_qo_indptr = nullptr;
  // Written by Attention() from rope_offsets_host: runs of one plan must be stream-ordered.
  int32_t* d_rope_offsets = nullptr;
  // The plan's custom mask in the upload (PlanSpec::custom_mask's image), or empty.
  CustomMaskView mask;
  DecodeWorkPtr decode;
  PrefillWorkPtr prefill;

  // Sets block_ and the section pointers below to `block`, laid out as layout_.
  void PointAt(void* block);

  PagedKV WithPageTable(const PagedKV& layer) const {
    PagedKV kv = layer;
    kv.batch_size = spec().batch_size();
    kv.indptr = d_indptr;
    kv.indices = d_indices;
    kv.last_page_len = d_last_page_len;
    return kv;
  }
  // New K/V rows of the plan's query tokens (qo_indptr) into the layer.
  AppendKvParams AppendParams(const PagedKV& layer, const void* k, const void* v,
                              DType new_dtype) const {
    AppendKvParams p;
    p.kv = WithPageTable(layer);
    p.k = k;
    p.v = v;
    p.new_dtype = new_dtype;
    p.new_indptr = d_qo_indptr;
    return p;
  }
};

}  // namespace attnd::kernels::cuda
