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
  std::vector<char> image;
  FillPageTableImage(spec, layout, &image);
  return image;
}

void FillPageTableImage(const PlanSpec& spec, const PageTableLayout& layout,
                        std::vector<char>* out) {
  std::vector<char>& image = *out;
  image.assign(layout.rope_offsets, 0);
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
}

size_t GrownCapacity(size_t current, size_t needed) {
  return std::max(needed, current + current / 2);
}

ByteRange ChangedRange(const std::vector<char>& before, const std::vector<char>& after) {
  ByteRange range;
  if (before.size() != after.size()) {  // not one layout: all of `after`
    range.end = after.size();
    return range;
  }
  // Blocks compared with memcmp (vectorised), then the bytes of the first and last block that
  // differ; an image is a few hundred kilobytes at most.
  constexpr size_t kBlock = 256;
  const char* a = before.data();
  const char* b = after.data();
  const size_t n = after.size();
  size_t begin = 0;
  while (begin < n) {
    const size_t len = std::min(kBlock, n - begin);
    if (std::memcmp(a + begin, b + begin, len) != 0) break;
    begin += len;
  }
  if (begin == n) return range;  // identical
  while (a[begin] == b[begin]) ++begin;
  size_t end = n;
  while (end > begin) {
    const size_t len = std::min(kBlock, end - begin);
    if (std::memcmp(a + end - len, b + end - len, len) != 0) break;
    end -= len;
  }
  while (a[end - 1] == b[end - 1]) --end;
  // Whole 4-byte words (every section is int32 and 256-byte aligned).
  range.begin = begin / 4 * 4;
  range.end = std::min(n, (end + 3) / 4 * 4);
  return range;
}

std::vector<int32_t> KvLengths(const PlanSpec& spec) {
  const int32_t batch = spec.batch_size();
  std::vector<int32_t> kv_len(static_cast<size_t>(std::max<int32_t>(batch, 0)));
  for (int32_t b = 0; b < batch; ++b) {
    kv_len[b] = static_cast<int32_t>(spec.kv_len(b));
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
