"""attnd.flashinfer: FlashInfer's Python API (0.7.4) on attnd.

An engine written against FlashInfer moves its attention into the attnd daemon by changing its
import and where its paged KV cache comes from:

    import attnd.flashinfer as flashinfer          # was: import flashinfer

    flashinfer.connect("unix:///tmp/attnd.sock")   # optional; default $ATTND_TARGET
    cache = flashinfer.allocate_paged_kv_cache(    # was: torch.empty(...) per layer
        num_layers, max_num_pages, page_size, num_kv_heads, head_dim, torch.float16)
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")   # kept, unused
    decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    decode.plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                page_size, pos_encoding_mode="ROPE_LLAMA", q_data_type=torch.float16)
    for layer in range(num_layers):
        flashinfer.append_paged_kv_cache(k, v, batch_idx, positions, cache[layer], indices,
                                         indptr, last_page_len)
        o = decode.run(q, cache[layer])

The cache is an attnd pool (every page held by the drop-in's session) seen as a CUDA tensor
[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim] through the pool's CUDA IPC handle,
so the daemon reads it in place; ``cache[layer]`` is FlashInfer's single-tensor NHD cache. It
needs a CUDA daemon on the same host. Same names, signatures, layouts (NHD) and semantics
(base-2 LSE, bottom-right causal alignment, window_left, soft cap, RoPE LLaMA); every deviation
is listed in client/python/README.md, "FlashInfer drop-in".

Submodules mirror FlashInfer's: attnd.flashinfer.decode, .prefill, .cascade, .page. torch is
imported only when a function runs.
"""

from attnd.flashinfer._context import (
    Context,
    allocate_paged_kv_cache,
    connect,
    get_context,
    set_context,
)
from attnd.flashinfer._mapping import AttndFlashInferError
from attnd.flashinfer.cascade import (
    MultiLevelCascadeAttentionWrapper,
    merge_state,
    merge_state_in_place,
    merge_states,
)
from attnd.flashinfer.decode import (
    BatchDecodeWithPagedKVCacheWrapper,
    CUDAGraphBatchDecodeWithPagedKVCacheWrapper,
    single_decode_with_kv_cache,
)
from attnd.flashinfer.page import (
    append_paged_kv_cache,
    get_batch_indices_positions,
    get_seq_lens,
)
from attnd.flashinfer.prefill import (
    BatchPrefillWithPagedKVCacheWrapper,
    BatchPrefillWithRaggedKVCacheWrapper,
    single_prefill_with_kv_cache,
    single_prefill_with_kv_cache_return_lse,
)

__version__ = "0.7.4+attnd"  # the FlashInfer API version this mirrors

__all__ = [
    "AttndFlashInferError",
    "BatchDecodeWithPagedKVCacheWrapper",
    "BatchPrefillWithPagedKVCacheWrapper",
    "BatchPrefillWithRaggedKVCacheWrapper",
    "CUDAGraphBatchDecodeWithPagedKVCacheWrapper",
    "Context",
    "MultiLevelCascadeAttentionWrapper",
    "allocate_paged_kv_cache",
    "append_paged_kv_cache",
    "connect",
    "get_batch_indices_positions",
    "get_context",
    "get_seq_lens",
    "merge_state",
    "merge_state_in_place",
    "merge_states",
    "set_context",
    "single_decode_with_kv_cache",
    "single_prefill_with_kv_cache",
    "single_prefill_with_kv_cache_return_lse",
]
