"""``flashinfer.prefill`` on attnd: BatchPrefillWithPagedKVCacheWrapper,
BatchPrefillWithRaggedKVCacheWrapper (plan only: attnd's wire API cannot run ragged K/V yet),
single_prefill_with_kv_cache.

Same names, constructor, plan()/run() signatures, layouts and semantics as FlashInfer 0.7.4;
what differs is listed in client/python/README.md ("FlashInfer drop-in").
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from attnd.flashinfer import _mapping as _m
from attnd.flashinfer._paged import PagedWrapperBase, Spec, check_dtypes

__all__ = ["BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithRaggedKVCacheWrapper",
           "single_prefill_with_kv_cache", "single_prefill_with_kv_cache_return_lse"]

_MASK_ITEMS_UNSUPPORTED = dict(custom_mask=None, packed_custom_mask=None, prefix_len_ptr=None,
                               token_pos_in_items_ptr=None, token_pos_in_items_len=0,
                               max_item_len_ptr=None, use_token_head_sf=False)
_PREFILL_RUN_UNSUPPORTED = dict(sinks=None, kv_cache_sf=None,
                                skip_softmax_threshold_scale_factor=None)

RAGGED_NOT_AVAILABLE = (
    "BatchPrefillWithRaggedKVCacheWrapper.run: attnd's wire API runs attention over paged K/V in "
    "its pools only; ragged (contiguous, unpaged) K/V runs are not available yet. Append the "
    "K/V to a pool (attnd.flashinfer.append_paged_kv_cache into a cache from "
    "allocate_paged_kv_cache) and use BatchPrefillWithPagedKVCacheWrapper, or "
    "single_prefill_with_kv_cache for one request (it copies the K/V into a scratch pool)")


class BatchPrefillWithPagedKVCacheWrapper(PagedWrapperBase):
    """Batch prefill / append over a paged KV cache that is an attnd pool.

        wrapper = attnd.flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(qo_indptr, kv_indptr, kv_indices, kv_last_page_len, num_qo_heads,
                     num_kv_heads, head_dim, page_size, causal=True, q_data_type=torch.bfloat16)
        o = wrapper.run(q, cache[layer])            # q [qo_indptr[-1], num_qo_heads, head_dim]

    Request b's queries are rows qo_indptr[b] .. qo_indptr[b+1] of q and are the last qo_len
    tokens of its kv_len (the K/V of the new tokens are in the cache already: append first).
    The workspace, backend and the *_buf arguments are accepted and not used; use_cuda_graph=True
    raises NotImplementedError. attnd_context: see BatchDecodeWithPagedKVCacheWrapper.
    """

    _api = "BatchPrefillWithPagedKVCacheWrapper"

    def __init__(self, float_workspace_buffer, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf=None, paged_kv_indptr_buf=None, paged_kv_indices_buf=None,
                 paged_kv_last_page_len_buf=None, custom_mask_buf=None, mask_indptr_buf=None,
                 backend: str = "auto", jit_args=None, jit_kwargs=None,
                 variant_owns_mask: bool = False, max_total_num_rows: Optional[int] = None, *,
                 attnd_context=None):
        if custom_mask_buf is not None or mask_indptr_buf is not None or variant_owns_mask:
            raise NotImplementedError(f"{self._api}: custom masks are not supported by attnd")
        self._init_common(float_workspace_buffer, kv_layout, use_cuda_graph, backend, jit_args,
                          jit_kwargs, attnd_context)

    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
             num_qo_heads: int, num_kv_heads: int, head_dim_qk: int, page_size: int,
             head_dim_vo: Optional[int] = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
             window_left: int = -1, logits_soft_cap: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Any = "float16", kv_data_type: Any = None, o_data_type: Any = None,
             non_blocking: bool = True, prefix_len_ptr=None, token_pos_in_items_ptr=None,
             token_pos_in_items_len: int = 0, max_item_len_ptr=None, seq_lens=None,
             seq_lens_q=None, block_tables=None, max_token_per_sequence: Optional[int] = None,
             max_sequence_kv: Optional[int] = None, fixed_split_size: Optional[int] = None,
             disable_split_kv: bool = False, uniform_q_len: Optional[int] = None,
             use_token_head_sf: bool = False) -> None:
        """Plans a prefill / append batch (see FlashInfer's documentation for every argument).

        Checked here (ValueError naming the field), including attnd's rule qo_len <= kv_len per
        request; the daemon-side plan is made here when one pool of the context fits, else at the
        first run() on each pool.
        """
        _m.reject_unsupported(self._api + ".plan", dict(
            custom_mask=custom_mask, packed_custom_mask=packed_custom_mask,
            prefix_len_ptr=prefix_len_ptr, token_pos_in_items_ptr=token_pos_in_items_ptr,
            token_pos_in_items_len=token_pos_in_items_len, max_item_len_ptr=max_item_len_ptr,
            use_token_head_sf=use_token_head_sf), _MASK_ITEMS_UNSUPPORTED)
        if head_dim_vo is not None and int(head_dim_vo) != int(head_dim_qk):
            raise NotImplementedError(f"{self._api}.plan: head_dim_vo={head_dim_vo} != "
                                      f"head_dim_qk={head_dim_qk}; attnd has one head_dim")
        q_dtype, kv_dtype = check_dtypes(self._api + ".plan", q_data_type, kv_data_type,
                                         o_data_type)
        hq, hkv, d = _m.check_heads(num_qo_heads, num_kv_heads, head_dim_qk)
        table = _m.page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                              page_size, qo_indptr)
        self._set_spec(Spec(
            kind="prefill", table=table, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d,
            q_dtype=q_dtype, kv_dtype=kv_dtype, causal=bool(causal),
            pos_encoding=_m.pos_encoding(pos_encoding_mode), window_left=_m.window(window_left),
            logits_soft_cap=_m.soft_cap(logits_soft_cap),
            sm_scale=None if sm_scale is None else float(sm_scale),
            rope_scale=None if rope_scale is None else float(rope_scale),
            rope_theta=None if rope_theta is None else float(rope_theta)))

    begin_forward = plan

    def run(self, q, paged_kv_cache, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out=None, lse=None,
            return_lse: bool = False, lse_base: str = "log2", lse_layout: str = "NH",
            enable_pdl: Optional[bool] = None, window_left: Optional[int] = None, sinks=None,
            kv_cache_sf=None, skip_softmax_threshold_scale_factor: Optional[float] = None,
            use_fp16_softmax: Optional[bool] = None, uses_spcompress: Optional[bool] = None):
        """Prefill attention of q [qo_indptr[-1], num_qo_heads, head_dim] over paged_kv_cache
        (cache[layer] of an attnd pool, or its (k_cache, v_cache) halves).

        Returns o (q's dtype; into ``out`` when given) and with return_lse the LSE in
        ``lse_base`` ("log2" default, or "ln") and ``lse_layout`` ("NH" [rows, heads] or "HN").
        """
        if args:
            raise NotImplementedError(f"{self._api}.run: extra positional arguments are for "
                                      "FlashInfer's custom JIT kernels")
        _m.reject_unsupported(self._api + ".run", dict(
            sinks=sinks, kv_cache_sf=kv_cache_sf,
            skip_softmax_threshold_scale_factor=skip_softmax_threshold_scale_factor),
            _PREFILL_RUN_UNSUPPORTED)
        return self._run(q, paged_kv_cache, out=out, lse=lse, return_lse=return_lse,
                         lse_base=lse_base, lse_layout=lse_layout, q_scale=q_scale,
                         k_scale=k_scale, v_scale=v_scale, window_left=window_left)

    run_return_lse = functools.partialmethod(run, return_lse=True)


class BatchPrefillWithRaggedKVCacheWrapper:
    """FlashInfer's ragged-K/V prefill wrapper. Constructed and planned as in FlashInfer (the
    plan is checked); run() raises NotImplementedError: attnd's wire API has no ragged (unpaged)
    K/V runs yet. See RAGGED_NOT_AVAILABLE for what to do instead."""

    _api = "BatchPrefillWithRaggedKVCacheWrapper"

    def __init__(self, float_workspace_buffer, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf=None, kv_indptr_buf=None, custom_mask_buf=None,
                 mask_indptr_buf=None, backend: str = "auto", jit_args=None, jit_kwargs=None,
                 variant_owns_mask: bool = False, *, attnd_context=None):
        _m.check_kv_layout(kv_layout)
        if use_cuda_graph:
            raise NotImplementedError(f"{self._api}: use_cuda_graph=True is not supported")
        self._float_workspace_buffer = float_workspace_buffer
        self._kv_layout = kv_layout
        self._planned = False

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return False

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        self._float_workspace_buffer = float_workspace_buffer

    def plan(self, qo_indptr, kv_indptr, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             head_dim_vo: Optional[int] = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, window_left: int = -1,
             logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Any = "float16", kv_data_type: Any = None, o_data_type: Any = None,
             non_blocking: bool = True, prefix_len_ptr=None, token_pos_in_items_ptr=None,
             token_pos_in_items_len: int = 0, max_item_len_ptr=None,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False,
             seq_lens=None, seq_lens_q=None, max_token_per_sequence: Optional[int] = None,
             max_sequence_kv: Optional[int] = None, v_indptr=None, o_indptr=None,
             qo_indptr_cpu=None, kv_indptr_cpu=None, uniform_q_len: Optional[int] = None,
             use_token_head_sf: bool = False) -> None:
        """Checks the plan's arguments as the paged wrapper does (so code paths that only plan
        keep working); run() is not available."""
        _m.reject_unsupported(self._api + ".plan", dict(
            custom_mask=custom_mask, packed_custom_mask=packed_custom_mask,
            prefix_len_ptr=prefix_len_ptr, token_pos_in_items_ptr=token_pos_in_items_ptr,
            token_pos_in_items_len=token_pos_in_items_len, max_item_len_ptr=max_item_len_ptr,
            use_token_head_sf=use_token_head_sf), _MASK_ITEMS_UNSUPPORTED)
        check_dtypes(self._api + ".plan", q_data_type, kv_data_type, o_data_type)
        _m.check_heads(num_qo_heads, num_kv_heads, head_dim_qk)
        _m.pos_encoding(pos_encoding_mode)
        qo = _m._ints("qo_indptr", qo_indptr)
        kv = _m._ints("kv_indptr", kv_indptr)
        if len(qo) != len(kv) or len(qo) < 2:
            raise _m.AttndFlashInferError(f"qo_indptr ({len(qo)} entries) and kv_indptr "
                                          f"({len(kv)}) must both be [batch_size + 1]")
        self._planned = True

    begin_forward = plan

    def run(self, q, k, v, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None,
            o_scale: Optional[float] = None, out=None, lse=None, return_lse: bool = False,
            lse_base: str = "log2", lse_layout: str = "NH", enable_pdl: Optional[bool] = None,
            kv_cache_sf=None):
        raise NotImplementedError(RAGGED_NOT_AVAILABLE)

    run_return_lse = functools.partialmethod(run, return_lse=True)


def single_prefill_with_kv_cache(q, k, v, scale_q=None, scale_k=None, scale_v=None,
                                 o_dtype=None, custom_mask=None, packed_custom_mask=None,
                                 causal: bool = False, kv_layout: str = "NHD",
                                 pos_encoding_mode: str = "NONE",
                                 use_fp16_qk_reduction: bool = False,
                                 sm_scale: Optional[float] = None, window_left: int = -1,
                                 logits_soft_cap: Optional[float] = None,
                                 rope_scale: Optional[float] = None,
                                 rope_theta: Optional[float] = None, backend: str = "auto",
                                 return_lse: bool = False, kv_cache_sf=None,
                                 k_scale: Optional[float] = None, v_scale: Optional[float] = None,
                                 *, attnd_context=None):
    """Prefill attention of one request: q [qo_len, num_qo_heads, head_dim] over k, v [kv_len,
    num_kv_heads, head_dim] (NHD, or HND), the queries being the last qo_len of the kv_len tokens
    (qo_len <= kv_len: attnd's rule; FlashInfer's causal mask is bottom-right aligned the same way).

    The K/V are copied into a scratch pool of the context first (one device copy per call).
    Returns o [qo_len, num_qo_heads, head_dim] (q's dtype) and with return_lse the base-2 LSE
    [qo_len, num_qo_heads].
    """
    from attnd.flashinfer._single import single_attention

    api = "single_prefill_with_kv_cache"
    _m.reject_unsupported(api, dict(scale_q=scale_q, scale_k=scale_k, scale_v=scale_v,
                                    custom_mask=custom_mask,
                                    packed_custom_mask=packed_custom_mask,
                                    kv_cache_sf=kv_cache_sf),
                          dict(scale_q=None, scale_k=None, scale_v=None, custom_mask=None,
                               packed_custom_mask=None, kv_cache_sf=None))
    if o_dtype is not None and _m.dtype_name(o_dtype) != _m.dtype_name(q.dtype):
        raise NotImplementedError(f"{api}: o_dtype={o_dtype} differs from q's dtype; attnd writes "
                                  "o in q's dtype")
    return single_attention(
        api, "prefill", q, k, v, kv_layout=kv_layout, causal=causal,
        pos_encoding_mode=pos_encoding_mode, window_left=window_left,
        logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale,
        rope_theta=rope_theta, q_scale=None, k_scale=k_scale, v_scale=v_scale,
        return_lse=return_lse, attnd_context=attnd_context)


single_prefill_with_kv_cache_return_lse = functools.partial(single_prefill_with_kv_cache,
                                                            return_lse=True)
