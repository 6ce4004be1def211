// The attention variant of a run (softmax scale, soft cap, sliding window, causal mask, custom
// mask, RoPE, attention sinks) as the kernels see it: ONE params struct, embedded in every
// kernel's params, resolved from the public AttentionOptions by ONE host function. Device-side
// policies that read it: blocks/variant.cuh. A new variant adds its fields here and its
// resolution to ResolveVariant. Host and device code (plain struct).
#pragma once

#include <cstdint>

#include "attnd/kernels/types.h"
#include "blocks/numerics.h"

namespace attnd::kernels::cuda::internal {

struct VariantParams {
  LogitScale logit;  // raw q.k -> base-2 logit, soft cap included (numerics.h)
  // bool, not int32_t: the prefill RoPE kernel at head_dim 256 takes one register more with an
  // int32_t flag (ptxas, 2026-12-01).
  bool causal = false;       // prefill/append: key position <= query position (decode: implied)
  int32_t window_left = -1;  // >= 0: keys older than q_pos - window_left are masked; -1: none
  bool rope = false;         // RoPE LLaMA: the kernels' kRope instantiations run
  const int32_t* rope_offsets = nullptr;  // [batch] device, or null (rope only)
  RopeFreq rope_freq[kMaxRopePairs];      // pairs 0 .. head_dim/2 - 1, filled when rope
  // Attention sinks: [num_qo_heads] float32 device, natural-log units of the scaled, capped
  // logits (AttentionOptions::sinks), or null. Folded in once per row at finalization
  // (FinalizeRow, softmax_state.cuh): by the kernel for an unsplit row, by the merge after
  // split-KV (partial states never carry the sink).
  const float* sinks = nullptr;
  // Custom mask of a prefill plan (CustomMaskView, types.h: rows of 32-bit words, request b's
  // from mask.word_offset[b], every row seeing the keys below mask.dense_until[b]), or
  // mask.words null. Applied by the prefill kernels' logit policy (ApplyVariant) in the tiles
  // that reach past dense_until, with causal and the window; decode refuses one.
  CustomMaskView mask;
};

// AttentionOptions -> VariantParams for head_dim (sm_scale 0 = 1/sqrt(head_dim); a negative
// window is no window; rope_offsets kept only with RoPE; sinks and the custom mask as given).
inline VariantParams ResolveVariant(const AttentionOptions& o, int32_t head_dim) {
  VariantParams v;
  v.logit = MakeLogitScale(o, head_dim);
  v.causal = o.causal;
  v.window_left = o.window_left >= 0 ? o.window_left : -1;
  v.rope = o.pos_encoding == PosEncoding::kRopeLlama;
  v.rope_offsets = v.rope ? o.rope_offsets : nullptr;
  if (v.rope) FillRopeFreqs(o, head_dim, v.rope_freq);
  v.sinks = o.sinks;
  v.mask = o.custom_mask;
  return v;
}

}  // namespace attnd::kernels::cuda::internal
