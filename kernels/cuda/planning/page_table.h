// Planning of the page table a plan uploads (CPU only, no CUDA calls): its device layout, the
// host image that one cudaMemcpyAsync copies, the kv lengths it implies, and the integer
// constants the kernels use to turn a kv position into (page, row) without a division.
//
// Device layout of a plan's page table (one allocation, sections 256-byte aligned, int32):
//   kv_indptr [B + 1] | qo_indptr [B + 1] | kv_indices [max(1, nnz)] | last_page_len [B] |
//   rope_offsets [B] (written per run, not part of the upload image)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attnd/kernels/backend.h"

namespace attnd::kernels::cuda::internal {

struct PageTableLayout {
  size_t kv_indptr = 0;  // byte offsets
  size_t qo_indptr = 0;
  size_t kv_indices = 0;
  size_t last_page_len = 0;
  size_t rope_offsets = 0;  // == the size of the upload image
  size_t total_bytes = 0;
};
PageTableLayout LayoutPageTable(int32_t batch, size_t num_indices);

// The upload image of spec's table in `layout` (rope_offsets excluded), zero padded.
std::vector<char> PageTableImage(const PlanSpec& spec, const PageTableLayout& layout);

// kv_len[b] = (pages - 1) * page_size + last_page_len[b], 0 for a request without pages.
std::vector<int32_t> KvLengths(const PlanSpec& spec);

// t / page_size as (umulhi(t, m) + t) >> s (Granlund-Montgomery, round-up variant): three
// integer instructions and no branch on the device, exact for 0 <= t < 2^31 and any
// page_size >= 1 (PageOfToken in blocks/paged_kv.cuh).
struct PageDivisor {
  uint32_t m = 1;
  int32_t s = 0;
};
PageDivisor MakePageDivisor(int32_t page_size);
// The host mirror of the device division (tests check it against t / page_size).
inline int32_t DividePage(int32_t t, PageDivisor div) {
  const uint64_t u = static_cast<uint32_t>(t);
  const uint64_t hi = (u * div.m) >> 32;  // umulhi
  return static_cast<int32_t>(static_cast<uint32_t>(hi + u) >> div.s);
}
// log2(page_size) when page_size is a power of two, else -1 (the prefill kernel's shift path).
int32_t PageShift(int32_t page_size);

}  // namespace attnd::kernels::cuda::internal
