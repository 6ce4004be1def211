// Planning of the page table a plan uploads (CPU only, no CUDA calls): its device layout, the
// host image that one cudaMemcpyAsync copies, the kv lengths it implies. The page arithmetic
// constants: page_divisor.h.
//
// Device layout of a plan's page table (one allocation, sections 256-byte aligned, int32):
//   kv_indptr [B + 1] | qo_indptr [B + 1] | kv_indices [max(1, nnz)] | last_page_len [B] |
//   custom mask, when the plan has one (CustomMaskView): word_offset [B] | dense_until [B] |
//   words [n] (uint32) | rope_offsets [B] (written per run, not part of the upload image)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attnd/kernels/backend.h"
#include "planning/page_divisor.h"

namespace attnd::kernels::cuda::internal {

struct PageTableLayout {
  size_t kv_indptr = 0;  // byte offsets
  size_t qo_indptr = 0;
  size_t kv_indices = 0;
  size_t last_page_len = 0;
  size_t mask_word_offset = 0;  // the custom mask's sections (empty without one)
  size_t mask_dense_until = 0;
  size_t mask_words = 0;
  size_t rope_offsets = 0;  // == the size of the upload image
  size_t total_bytes = 0;
};
// mask_words: the words of the plan's custom mask image (0: none).
PageTableLayout LayoutPageTable(int32_t batch, size_t num_indices, size_t mask_words = 0);

// The upload image of spec's table in `layout` (rope_offsets excluded), zero padded. `layout`
// may be laid out for more requests and entries than spec has (a plan's capacity).
std::vector<char> PageTableImage(const PlanSpec& spec, const PageTableLayout& layout);
// The same into `image` (resized to layout.rope_offsets), reusing its allocation.
void FillPageTableImage(const PlanSpec& spec, const PageTableLayout& layout,
                        std::vector<char>* image);

// Streamed page-table updates (Backend::UpdatePlan): the capacity a plan's table is laid out for
// once it has outgrown its allocation, `needed` grown by half of `current` (so that a table
// growing a few pages per step moves to a new allocation O(log) times, not every step).
size_t GrownCapacity(size_t current, size_t needed);
// The bytes [begin, end) from the first to the last 4-byte word in which two images of one
// layout differ (begin == end: none): the one range an update uploads.
struct ByteRange {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
};
ByteRange ChangedRange(const std::vector<char>& before, const std::vector<char>& after);

// kv_len[b] = (pages - 1) * page_size + last_page_len[b], 0 for a request without pages.
std::vector<int32_t> KvLengths(const PlanSpec& spec);

}  // namespace attnd::kernels::cuda::internal
