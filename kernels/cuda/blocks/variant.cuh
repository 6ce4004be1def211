// Device-side variant policies (VariantParams, blocks/variant.h), written once: the logit
// transform with the optional soft cap, the first key a sliding window lets a query see, and the
// custom mask's bits. Masks are applied by the kernels' tile loops with these bounds.
#pragma once

#include <cuda_runtime.h>

#include "blocks/numerics.h"
#include "blocks/variant.h"

namespace attnd::kernels::cuda::internal {

// The soft cap part of the base-2 logit (numerics.h): tanh(raw * pre) with a cap, raw without.
__device__ __forceinline__ float CapLogit(float raw, const LogitScale& ls) {
  return ls.soft_cap ? tanhf(raw * ls.pre) : raw;
}
// The base-2 logit l2 = post * CapLogit(raw).
__device__ __forceinline__ float Log2Logit(float raw, const LogitScale& ls) {
  return ls.post * CapLogit(raw, ls);
}

// The logit scale of raw logits r * k (k > 0: a factor of every key, FP8 K's dequantization
// scale): the same transform with k folded into the first multiply.
__device__ __forceinline__ LogitScale ScaleRawLogit(LogitScale ls, float k) {
  if (ls.soft_cap) {
    ls.pre *= k;
  } else {
    ls.post *= k;
  }
  return ls;
}

// First kv position visible from query position q_pos when scanning from `begin`: the sliding
// window keeps [q_pos - window_left, q_pos].
__device__ __forceinline__ int FirstVisibleKv(const VariantParams& v, int q_pos, int begin) {
  return v.window_left >= 0 ? max(begin, q_pos - v.window_left) : begin;
}

// The custom mask's row of query row `row` of request b (CustomMaskView: ceil(kv_len / 32) words
// per row), as a word index. Fits int32: the image has fewer than 2^31 words (custom_mask.h).
// An index rather than a pointer: one register where the kernels have none to spare.
__device__ __forceinline__ int CustomMaskRow(const CustomMaskView& m, int b, int kv_len, int row) {
  return __ldg(m.word_offset + b) + row * ((kv_len + 31) >> 5);
}
// The custom-mask bits of kv positions pos .. pos + 31 of a row (bit k: position pos + k), from
// two word loads and a funnel shift. Reads the word after pos + 31's: past a row's last word
// that is the next row's or the image's zero padding (kCustomMaskPadWords), never out of bounds
// for a tile that starts inside the row; bits past kv_len are masked by the kernels' end bound.
__device__ __forceinline__ uint32_t CustomMaskBits32(const CustomMaskView& m, int row, int pos) {
  const int w = row + (pos >> 5);
  return __funnelshift_r(__ldg(m.words + w), __ldg(m.words + w + 1),
                         static_cast<uint32_t>(pos & 31));
}

}  // namespace attnd::kernels::cuda::internal
