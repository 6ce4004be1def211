// The CPU reference implementation of attnd's attention operations: exact (fp32 accumulation with
// an online softmax, RoPE angles in float64), threaded over (request, kv head, query tile), and
// the oracle the CUDA kernels are tested against. All pointers are host pointers.
//
// Semantics (shared with every backend; see types.h and docs of AttentionOptions):
//  - Query row i of request b sits at kv position p = kv_len(b) - qo_len(b) + i. Decode
//    (qo.qo_indptr == null) has one row per request, at p = kv_len(b) - 1.
//  - Key t of request b is visible to the row at position p when
//      (!causal || t <= p)  and  (window_left < 0 || t >= p - window_left).
//  - s = (q . k) * sm_scale (0 -> 1/sqrt(head_dim)); with logits_soft_cap > 0, s = cap*tanh(s/cap).
//  - o = softmax(s) . V over the visible keys, written in q's dtype; lse = log(sum exp(s)) (natural
//    log, float32). A row that sees no key gets o = 0 and lse = -inf.
//  - Attention sinks (options.sinks, [num_qo_heads]): query head h's softmax also has the logit
//    sinks[h], which has no value; lse includes it, and a row that sees no key gets o = 0 and
//    lse = sinks[h]. The sink is folded into each row's state once, after all its keys.
//  - RoPE LLaMA rotates q and k ("rotate half") at position (kv position + rope_offsets[b]).
//  - A request of the paged cache with no pages has kv_len 0. qo_len may exceed kv_len (the
//    earliest rows then have negative positions and, when causal, see nothing).
//  - Results do not depend on num_threads (every row is reduced over the same key blocks in the
//    same order).
// Inconsistent parameters (null pointers, head counts not divisible, page ids out of range,
// last_page_len outside 1..page_size, unsupported dtypes or head_dim > kMaxHeadDim, odd head_dim
// with RoPE, ...) give INVALID_ARGUMENT naming the field; nothing is written then.
#pragma once

#include "absl/status/status.h"
#include "attnd/kernels/types.h"

namespace attnd::kernels::cpu {

inline constexpr int kMaxHeadDim = 1024;

// Batched attention over the paged KV cache: decode (qo.qo_indptr null) or prefill/append.
// K/V storage: fp32, fp16, bf16 or fp8 e4m3; q/o: fp32, fp16 or bf16.
// num_threads: 0 = std::thread::hardware_concurrency().
absl::Status PagedAttention(const PagedAttentionParams& params, int num_threads = 0);

// Batched attention over ragged contiguous K/V (same semantics; kv_len(b) = indptr[b+1]-indptr[b]).
absl::Status RaggedAttention(const RaggedAttentionParams& params, int num_threads = 0);

// Writes new K/V rows into the paged cache (see AppendKvParams). new_indptr null means one new
// token per request (0, 1, ..., B). Each request must already account for its new tokens in its
// page table: new_len(b) <= kv_len(b).
absl::Status AppendKv(const AppendKvParams& params);

// Combines attention states (v_i, lse_i) of the same rows into one (see MergeStatesParams).
absl::Status MergeStates(const MergeStatesParams& params, int num_threads = 0);

}  // namespace attnd::kernels::cpu
