// Custom masks (tree / speculative-decoding verification): from the wire's packed bits
// (CreatePlanRequest.custom_mask, FlashInfer's packed_custom_mask) to the row-word image every
// backend reads (CustomMaskImage here; its view in backend memory, CustomMaskView, types.h).
//
// Wire / packed form, per request b in order: ceil(qo_len_b * kv_len_b / 8) bytes; element
// (i, j) (query row i against kv position j) is bit i * kv_len_b + j of b's bytes, bit k of byte
// n being element 8n + k (numpy.packbits(..., bitorder="little")); 1 = visible.
//
// Row-word form: each row starts on a 32-bit word, so a kernel finds the bits of (row, kv
// position) without a division and reads 32 of them with two loads and a funnel shift; a
// dense_until per request lets it skip the bits where every row sees every key (a tree's shared
// prefix). Header-only: the daemon's validation, both backends and the tests use it.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels {

// Bytes of one request's packed bits.
inline int64_t PackedMaskBytes(int64_t qo_len, int64_t kv_len) { return (qo_len * kv_len + 7) / 8; }
// Words of one row of the row-word form.
inline int64_t MaskRowWords(int64_t kv_len) { return (kv_len + 31) / 32; }

// A plan's custom mask in the row-word form (CustomMaskView's layout), in host memory. Empty
// words: no custom mask.
struct CustomMaskImage {
  std::vector<uint32_t> words;       // rows, then kCustomMaskPadWords zero words
  std::vector<int32_t> word_offset;  // [batch]
  std::vector<int32_t> dense_until;  // [batch]
  bool empty() const { return words.empty(); }
  size_t bytes() const {
    return words.size() * sizeof(uint32_t) + (word_offset.size() + dense_until.size()) * 4;
  }
  // The view of this image where it lies (host memory: the CPU backend; CUDA: a device copy).
  CustomMaskView View() const {
    if (empty()) return {};
    return {words.data(), word_offset.data(), dense_until.data()};
  }
};

namespace internal {
// The n (1..32) bits of `packed` from bit `bit` on (little bit order), as the low bits of a word;
// reads only the bytes those bits are in.
inline uint32_t PackedBits32(std::span<const uint8_t> packed, int64_t bit, int64_t n) {
  const size_t first = static_cast<size_t>(bit / 8);
  const size_t last = static_cast<size_t>((bit + n - 1) / 8);
  uint64_t window = 0;
  for (size_t k = first; k <= last; ++k)
    window |= static_cast<uint64_t>(packed[k]) << (8 * (k - first));
  return static_cast<uint32_t>(window >> (bit % 8));
}
}  // namespace internal

// Bits of the packed form -> the row-word form. qo_indptr: [B + 1], kv_len: [B] (already
// checked). INVALID_ARGUMENT (naming `field`) when `packed` is not exactly the sum of
// PackedMaskBytes over the requests, or when the image would not fit int32 word offsets.
template <typename KvLen>
absl::StatusOr<CustomMaskImage> BuildCustomMaskImage(std::span<const uint8_t> packed,
                                                     std::span<const int32_t> qo_indptr,
                                                     std::span<const KvLen> kv_len,
                                                     absl::string_view field = "custom_mask") {
  const size_t batch = kv_len.size();
  int64_t expected = 0, words = 0;
  for (size_t b = 0; b < batch; ++b) {
    const int64_t qo_len = qo_indptr[b + 1] - qo_indptr[b];
    expected += PackedMaskBytes(qo_len, kv_len[b]);
    words += qo_len * MaskRowWords(kv_len[b]);
  }
  if (static_cast<int64_t>(packed.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " has ", packed.size(), " bytes, expected ", expected,
        " (the sum over requests of ceil(qo_len * kv_len / 8): each request's [qo_len, kv_len] "
        "bits, packed little-endian)"));
  }
  if (words + kCustomMaskPadWords > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " needs ", words, " 32-bit words of rows, more than 2^31 - 17"));
  }
  CustomMaskImage image;
  image.words.assign(static_cast<size_t>(words + kCustomMaskPadWords), 0u);
  image.word_offset.resize(batch);
  image.dense_until.resize(batch);
  int64_t byte0 = 0, word0 = 0;
  for (size_t b = 0; b < batch; ++b) {
    const int64_t qo_len = qo_indptr[b + 1] - qo_indptr[b];
    const int64_t kv = kv_len[b];
    const int64_t row_words = MaskRowWords(kv);
    image.word_offset[b] = static_cast<int32_t>(word0);
    int64_t dense = kv;  // first kv position some row does not see
    const std::span<const uint8_t> bits = packed.subspan(static_cast<size_t>(byte0));
    for (int64_t i = 0; i < qo_len; ++i) {
      uint32_t* row = &image.words[static_cast<size_t>(word0 + i * row_words)];
      for (int64_t w = 0; w < row_words; ++w) {
        const int64_t n = std::min<int64_t>(32, kv - 32 * w);  // bits of this word in the row
        const uint32_t valid = n == 32 ? ~0u : (1u << n) - 1u;
        const uint32_t word = internal::PackedBits32(bits, i * kv + 32 * w, n) & valid;
        row[w] = word;
        if (const uint32_t hidden = ~word & valid; hidden != 0 && 32 * w < dense) {
          dense = std::min<int64_t>(dense, 32 * w + std::countr_zero(hidden));
        }
      }
    }
    image.dense_until[b] = static_cast<int32_t>(qo_len > 0 ? dense : kv);
    byte0 += PackedMaskBytes(qo_len, kv);
    word0 += qo_len * row_words;
  }
  return image;
}

// The packed (wire) form of dense masks: masks[b] is request b's [qo_len_b * kv_len_b] row-major
// matrix, nonzero = visible. For clients and tests.
inline std::vector<uint8_t> PackCustomMask(const std::vector<std::vector<uint8_t>>& masks) {
  std::vector<uint8_t> out;
  for (const std::vector<uint8_t>& m : masks) {
    const size_t first = out.size();
    out.resize(first + (m.size() + 7) / 8, 0);
    for (size_t e = 0; e < m.size(); ++e) {
      if (m[e] != 0) out[first + e / 8] |= static_cast<uint8_t>(1u << (e % 8));
    }
  }
  return out;
}

// Speculative decoding's tree verification, for clients and tests: the dense mask
// [n * (prefix + n)] (1 = visible) of n = parents.size() draft tokens in topological order
// (parents[0] = -1, 0 <= parents[i] < i) after a prefix of `prefix` keys: row i sees the prefix,
// its ancestors and itself.
inline std::vector<uint8_t> TreeVerificationMask(std::span<const int32_t> parents, int64_t prefix) {
  const int64_t n = static_cast<int64_t>(parents.size()), kv = prefix + n;
  std::vector<uint8_t> mask(static_cast<size_t>(n * kv), 0);
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* row = &mask[static_cast<size_t>(i * kv)];
    std::fill_n(row, prefix, uint8_t{1});
    for (int64_t j = i; j >= 0; j = parents[j]) row[prefix + j] = 1;
  }
  return mask;
}
// The parents of a complete tree of n nodes with `fanout` children each (1: a chain).
inline std::vector<int32_t> CompleteTreeParents(int32_t n, int32_t fanout) {
  std::vector<int32_t> parents(static_cast<size_t>(std::max(n, 0)));
  for (int32_t i = 0; i < n; ++i) parents[i] = i == 0 ? -1 : (i - 1) / fanout;
  return parents;
}

// Whether row `row` of request b sees kv position `pos` (pos < kv_len_b), from a view in host
// memory.
inline bool CustomMaskVisible(const CustomMaskView& mask, int32_t b, int64_t kv_len, int64_t row,
                              int64_t pos) {
  const uint32_t* r = mask.words + mask.word_offset[b] + row * MaskRowWords(kv_len);
  return ((r[pos / 32] >> (pos % 32)) & 1u) != 0;
}

}  // namespace attnd::kernels
