// Page-table planning (page_table.h).
#include "planning/page_table.h"

#include <algorithm>
#include <cstring>

namespace attnd::kernels::cuda::internal {
namespace {

size_t Align256(size_t x) { return (x + 255) / 256 * 256; }

}  // namespace

PageTableLayout LayoutPageTable(int32_t batch, size_t num_indices, size_t mask_words) {
  const size_t b = static_cast<size_t>(std::max<int32_t>(batch, 0));
  const size_t b_indptr = Align256((b + 1) * sizeof(int32_t));
  const size_t b_indices = Align256(std::max<size_t>(1, num_indices) * sizeof(int32_t));
  const size_t b_last = Align256(b * sizeof(int32_t));
  const size_t b_mask_per_request = mask_words > 0 ? b_last : 0;
  const size_t b_mask_words = Align256(mask_words * sizeof(uint32_t));
  const size_t b_rope = Align256(b * sizeof(int32_t));
  PageTableLayout l;
  l.kv_indptr = 0;
  l.qo_indptr = b_indptr;
  l.kv_indices = 2 * b_indptr;
  l.last_page_len = l.kv_indices + b_indices;
  l.mask_word_offset = l.last_page_len + b_last;
  l.mask_dense_until = l.mask_word_offset + b_mask_per_request;
  l.mask_words = l.mask_dense_until + b_mask_per_request;
  l.rope_offsets = l.mask_words + b_mask_words;
  l.total_bytes = l.rope_offsets + b_rope;
  return l;
}

std::vector<char> PageTableImage(const PlanSpec& spec, const PageTableLayout& layout) {
  std::vector<char> image(layout.rope_offsets, 0);
  auto place = [&](size_t offset, const std::vector<int32_t>& src) {
    if (!src.empty()) std::memcpy(image.data() + offset, src.data(), src.size() * sizeof(int32_t));
  };
  place(layout.kv_indptr, spec.kv_indptr);
  place(layout.qo_indptr, spec.qo_indptr);
  place(layout.kv_indices, spec.kv_indices);
  place(layout.last_page_len, spec.kv_last_page_len);
  const CustomMaskImage& mask = spec.custom_mask;
  if (!mask.empty()) {
    place(layout.mask_word_offset, mask.word_offset);
    place(layout.mask_dense_until, mask.dense_until);
    std::memcpy(image.data() + layout.mask_words, mask.words.data(),
                mask.words.size() * sizeof(uint32_t));
  }
  return image;
}

std::vector<int32_t> KvLengths(const PlanSpec& spec) {
  const int32_t batch = spec.batch_size();
  std::vector<int32_t> kv_len(static_cast<size_t>(std::max<int32_t>(batch, 0)));
  for (int32_t b = 0; b < batch; ++b) {
    const int32_t pages = spec.kv_indptr[b + 1] - spec.kv_indptr[b];
    kv_len[b] = pages == 0 ? 0 : (pages - 1) * spec.page_size + spec.kv_last_page_len[b];
  }
  return kv_len;
}

PageDivisor MakePageDivisor(int32_t page_size) {
  int s = 0;
  while ((int64_t{1} << s) < page_size) ++s;
  const uint64_t d = static_cast<uint64_t>(page_size);
  PageDivisor div;
  div.m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1);
  div.s = s;
  return div;
}

int32_t PageShift(int32_t page_size) {
  if (page_size <= 0 || (page_size & (page_size - 1)) != 0) return -1;
  int32_t shift = 0;
  while ((1 << shift) < page_size) ++shift;
  return shift;
}

}  // namespace attnd::kernels::cuda::internal
