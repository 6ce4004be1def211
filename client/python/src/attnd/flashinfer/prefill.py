"""``flashinfer.prefill`` on attnd: BatchPrefillWithPagedKVCacheWrapper,
BatchPrefillWithRaggedKVCacheWrapper (the daemon's RunRagged), single_prefill_with_kv_cache.

Same names, constructor, plan()/run() signatures, layouts and semantics as FlashInfer 0.7.4;
what differs is listed in client/python/README.md ("FlashInfer drop-in").
"""

from __future__ import annotations

import functools
from typing import Any, Dict, NamedTuple, Optional

from attnd.flashinfer import _arrays as _a
from attnd.flashinfer import _mapping as _m
from attnd.flashinfer._paged import PagedWrapperBase, Spec, check_dtypes

__all__ = ["BatchPrefillWithPagedKVCacheWrapper", "BatchPrefillWithRaggedKVCacheWrapper",
           "single_prefill_with_kv_cache", "single_prefill_with_kv_cache_return_lse"]

# What the paged wrapper cannot honour; the ragged one cannot take custom masks either (attnd's
# RunRagged has none: custom masks are a property of a daemon-side plan).
_ITEMS_UNSUPPORTED = dict(prefix_len_ptr=None, token_pos_in_items_ptr=None,
                          token_pos_in_items_len=0, max_item_len_ptr=None,
                          use_token_head_sf=False)
_MASK_ITEMS_UNSUPPORTED = dict(custom_mask=None, packed_custom_mask=None, **_ITEMS_UNSUPPORTED)
_PREFILL_RUN_UNSUPPORTED = dict(sinks=None, kv_cache_sf=None,
                                skip_softmax_threshold_scale_factor=None)

class BatchPrefillWithPagedKVCacheWrapper(PagedWrapperBase):
    """Batch prefill / append over a paged KV cache that is an attnd pool.

        wrapper = attnd.flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(qo_indptr, kv_indptr, kv_indices, kv_last_page_len, num_qo_heads,
                     num_kv_heads, head_dim, page_size, causal=True, q_data_type=torch.bfloat16)
        o = wrapper.run(q, cache[layer])            # q [qo_indptr[-1], num_qo_heads, head_dim]

    Request b's queries are rows qo_indptr[b] .. qo_indptr[b+1] of q and are the last qo_len
    tokens of its kv_len (the K/V of the new tokens are in the cache already: append first).
    Custom masks (plan(custom_mask=...) or plan(packed_custom_mask=...), tree attention /
    speculative verification) become the attnd plan's custom mask. The workspace, backend and
    the *_buf arguments (custom_mask_buf and mask_indptr_buf included: FlashInfer's CUDA-graph
    buffers) are accepted and not used; use_cuda_graph=True and variant_owns_mask=True raise
    NotImplementedError. attnd_context: see BatchDecodeWithPagedKVCacheWrapper.
    """

    _api = "BatchPrefillWithPagedKVCacheWrapper"

    def __init__(self, float_workspace_buffer, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf=None, paged_kv_indptr_buf=None, paged_kv_indices_buf=None,
                 paged_kv_last_page_len_buf=None, custom_mask_buf=None, mask_indptr_buf=None,
                 backend: str = "auto", jit_args=None, jit_kwargs=None,
                 variant_owns_mask: bool = False, max_total_num_rows: Optional[int] = None, *,
                 attnd_context=None):
        if variant_owns_mask:
            raise NotImplementedError(f"{self._api}: variant_owns_mask=True (a custom JIT "
                                      "variant's own mask) is not supported by attnd; pass the "
                                      "mask to plan() as custom_mask / packed_custom_mask")
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

        custom_mask (flattened bool, sum_b qo_len_b * kv_len_b elements: each request's
        [qo_len_b, kv_len_b] block in order) or packed_custom_mask (uint8, which wins when both
        are given: request b's packbits(..., bitorder="little") at byte sum_{c<b} qo_len_c *
        kv_len_c, where FlashInfer 0.7.4's kernel reads it; see _mapping.custom_mask_wire): as in
        FlashInfer, the mask mode is then CUSTOM and ``causal`` is ignored (the attnd plan runs
        with causal=False and the mask); window_left and logits_soft_cap still apply.
        """
        _m.reject_unsupported(self._api + ".plan", dict(
            prefix_len_ptr=prefix_len_ptr, token_pos_in_items_ptr=token_pos_in_items_ptr,
            token_pos_in_items_len=token_pos_in_items_len, max_item_len_ptr=max_item_len_ptr,
            use_token_head_sf=use_token_head_sf), _ITEMS_UNSUPPORTED)
        if head_dim_vo is not None and int(head_dim_vo) != int(head_dim_qk):
            raise NotImplementedError(f"{self._api}.plan: head_dim_vo={head_dim_vo} != "
                                      f"head_dim_qk={head_dim_qk}; attnd has one head_dim")
        q_dtype, kv_dtype = check_dtypes(self._api + ".plan", q_data_type, kv_data_type,
                                         o_data_type)
        hq, hkv, d = _m.check_heads(num_qo_heads, num_kv_heads, head_dim_qk)
        table = _m.page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                              page_size, qo_indptr)
        mask = _m.custom_mask_wire(
            self._api + ".plan", [table.qo_indptr[b + 1] - table.qo_indptr[b]
                                  for b in range(table.batch_size)],
            table.kv_lens, custom_mask, packed_custom_mask)
        self._set_spec(Spec(
            kind="prefill", table=table, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d,
            q_dtype=q_dtype, kv_dtype=kv_dtype, causal=bool(causal) and mask is None,
            pos_encoding=_m.pos_encoding(pos_encoding_mode), window_left=_m.window(window_left),
            logits_soft_cap=_m.soft_cap(logits_soft_cap),
            sm_scale=None if sm_scale is None else float(sm_scale),
            rope_scale=None if rope_scale is None else float(rope_scale),
            rope_theta=None if rope_theta is None else float(rope_theta), custom_mask=mask))

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


class _RaggedSpec(NamedTuple):
    """What BatchPrefillWithRaggedKVCacheWrapper.plan() fixed."""

    layout: _m.RaggedLayout
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    options: Dict[str, Any]  # attnd.BatchPrefillRaggedWrapper.plan's keyword arguments


class BatchPrefillWithRaggedKVCacheWrapper:
    """Batch prefill / append attention over K/V passed as tensors (no paged cache), through the
    daemon's RunRagged (attnd.BatchPrefillRaggedWrapper on the context's session):

        wrapper = attnd.flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim, causal=True)
        o = wrapper.run(q, k, v)   # q [qo_indptr[-1], Hq, D]; k, v [kv_indptr[-1], Hkv, D]

    Request b's queries are rows qo_indptr[b]:qo_indptr[b+1] of q, its keys and values rows
    kv_indptr[b]:kv_indptr[b+1] of k and v; its queries are the last qo_len of its kv_len tokens
    (bottom-right causal alignment, as FlashInfer). q, k, v, out and lse travel zero-copy (CUDA
    IPC buffer slices) and the daemon writes o (and lse) in place; kv_layout="HND" (k, v
    [Hkv, kv_indptr[-1], D]) costs one copy of k and v per run (attnd reads NHD rows). The
    workspace, backend and *_buf arguments are accepted and not used; use_cuda_graph=True raises
    NotImplementedError. attnd_context: see BatchDecodeWithPagedKVCacheWrapper.
    """

    _api = "BatchPrefillWithRaggedKVCacheWrapper"

    def __init__(self, float_workspace_buffer, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf=None, kv_indptr_buf=None, custom_mask_buf=None,
                 mask_indptr_buf=None, backend: str = "auto", jit_args=None, jit_kwargs=None,
                 variant_owns_mask: bool = False, *, attnd_context=None):
        if kv_layout not in ("NHD", "HND"):
            raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")
        if use_cuda_graph:
            raise NotImplementedError(
                f"{self._api}: use_cuda_graph=True: attnd's run() is a call to the daemon, which a "
                "CUDA graph cannot capture; construct the wrapper with use_cuda_graph=False")
        if custom_mask_buf is not None or mask_indptr_buf is not None or variant_owns_mask:
            raise NotImplementedError(f"{self._api}: custom masks are not supported by attnd's "
                                      "ragged prefill (RunRagged); BatchPrefillWithPagedKVCache"
                                      "Wrapper takes them")
        if jit_args is not None or jit_kwargs:
            raise NotImplementedError(f"{self._api}: custom JIT kernels (jit_args/jit_kwargs) are "
                                      "FlashInfer's own; attnd runs its built-in variants")
        self._float_workspace_buffer = float_workspace_buffer
        self._int_workspace_buffer = None
        self._kv_layout = kv_layout
        self._backend = backend
        self._context_arg = attnd_context
        self._context = None
        self._spec: Optional[_RaggedSpec] = None
        self._inner = None

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return False

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        """Kept for FlashInfer's API; attnd owns its workspace, so the buffers are not used."""
        self._float_workspace_buffer = float_workspace_buffer
        self._int_workspace_buffer = int_workspace_buffer

    @property
    def attnd_context(self):
        if self._context is None:
            from attnd.flashinfer._context import get_context

            self._context = self._context_arg or get_context()
        return self._context

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
        """Plans a ragged prefill / append batch (see FlashInfer's documentation for every
        argument). Checked here (ValueError naming the field); the daemon holds nothing between
        runs (each run carries the batch's layout, RunRagged)."""
        self._spec = None
        _m.reject_unsupported(self._api + ".plan", dict(
            custom_mask=custom_mask, packed_custom_mask=packed_custom_mask,
            prefix_len_ptr=prefix_len_ptr, token_pos_in_items_ptr=token_pos_in_items_ptr,
            token_pos_in_items_len=token_pos_in_items_len, max_item_len_ptr=max_item_len_ptr,
            use_token_head_sf=use_token_head_sf), _MASK_ITEMS_UNSUPPORTED)
        if head_dim_vo is not None and int(head_dim_vo) != int(head_dim_qk):
            raise NotImplementedError(f"{self._api}.plan: head_dim_vo={head_dim_vo} != "
                                      f"head_dim_qk={head_dim_qk}; attnd has one head_dim")
        q_dtype, _ = check_dtypes(self._api + ".plan", q_data_type, kv_data_type, o_data_type)
        hq, hkv, d = _m.check_heads(num_qo_heads, num_kv_heads, head_dim_qk)
        window = _m.window(window_left)
        self._spec = _RaggedSpec(
            layout=_m.ragged_layout(qo_indptr, kv_indptr), num_qo_heads=hq, num_kv_heads=hkv,
            head_dim=d, dtype=q_dtype, options=dict(
                causal=bool(causal), sm_scale=None if sm_scale is None else float(sm_scale),
                pos_encoding=_m.pos_encoding(pos_encoding_mode),
                rope_theta=None if rope_theta is None else float(rope_theta),
                rope_scale=None if rope_scale is None else float(rope_scale),
                logits_soft_cap=_m.soft_cap(logits_soft_cap),
                window_left=window if window is not None else -1))
        self._inner = None

    begin_forward = plan

    def _inner_wrapper(self):
        if self._inner is None:
            import attnd

            spec = self._spec
            self._inner = attnd.BatchPrefillRaggedWrapper(self.attnd_context.session).plan(
                spec.layout.qo_indptr, spec.layout.kv_indptr, spec.num_qo_heads,
                spec.num_kv_heads, spec.head_dim, **spec.options)
        return self._inner

    def run(self, q, k, v, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None,
            o_scale: Optional[float] = None, out=None, lse=None, return_lse: bool = False,
            lse_base: str = "log2", lse_layout: str = "NH", enable_pdl: Optional[bool] = None,
            kv_cache_sf=None):
        """Prefill attention of q [qo_indptr[-1], num_qo_heads, head_dim] over k, v
        [kv_indptr[-1], num_kv_heads, head_dim] (NHD; HND: [num_kv_heads, kv_indptr[-1],
        head_dim]).

        Returns o (q's dtype; into ``out`` when given) and with return_lse the LSE in
        ``lse_base`` ("log2" default, or "ln") and ``lse_layout`` ("NH" [rows, heads], or "HN"),
        into ``lse`` when given. q_scale, k_scale, v_scale and o_scale are FlashInfer's fp8
        calibration scales; with 16-bit inputs its fa2/fa3 ragged kernels do not apply them,
        and neither does attnd (it runs 16-bit inputs only).
        """
        if args:
            raise NotImplementedError(f"{self._api}.run: extra positional arguments are for "
                                      "FlashInfer's custom JIT kernels")
        _m.reject_unsupported(self._api + ".run", dict(kv_cache_sf=kv_cache_sf),
                              dict(kv_cache_sf=None))
        if self._spec is None:
            raise RuntimeError(f"{self._api}.run() before plan()")
        _m.check_lse_options(lse_base, lse_layout)
        spec = self._spec
        arrays = _a.arrays_for(q)
        if arrays.capturing():
            raise RuntimeError(f"{self._api}.run() cannot be captured in a CUDA graph: it is a "
                               "call to the attnd daemon")
        if self._kv_layout == "HND":
            k, v = arrays.swap01(k), arrays.swap01(v)
        rows, hq, d = spec.layout.qo_tokens, spec.num_qo_heads, spec.head_dim
        kv_shape = (spec.layout.kv_tokens, spec.num_kv_heads, d)
        for name, t, shape in (("q", q, (rows, hq, d)), ("k", k, kv_shape), ("v", v, kv_shape)):
            _check_array(self._api, name, arrays, t, shape, spec.dtype)
        if out is not None:
            _check_array(self._api, "out", arrays, out, (rows, hq, d), spec.dtype,
                         contiguous=True)
        lse_shape = (rows, hq) if lse_layout == "NH" else (hq, rows)
        if return_lse and lse is not None:
            _check_array(self._api, "lse", arrays, lse, lse_shape, "float32", contiguous=True)
        ctx = self.attnd_context
        inner = self._inner_wrapper()
        direct = _a.in_place(inner.session, q)  # the daemon writes out / lse itself
        lse_nat = None
        if return_lse and direct:
            lse_nat = lse if lse is not None and lse_layout == "NH" else arrays.empty(
                (rows, hq), q, float32=True)
        result = inner.run(q, k, v, out=out if direct else None, lse_out=lse_nat,
                           return_lse=return_lse, completion=_a.completion_for(ctx, inner.session,
                                                                               q))
        o, lse_nat = result if return_lse else (result, None)
        if out is not None and o is not out:
            arrays.copy_(out, o)
            o = out
        if not return_lse:
            return o
        return o, _a.finish_lse(arrays, lse_nat, lse_base, lse_layout, lse)

    run_return_lse = functools.partialmethod(run, return_lse=True)


def _check_array(api: str, name: str, arrays, t, shape, dtype: str,
                 contiguous: bool = False) -> None:
    if tuple(getattr(t, "shape", ())) != tuple(shape):
        raise _m.AttndFlashInferError(f"{api}: {name} has shape {tuple(getattr(t, 'shape', ()))}"
                                      f", expected {tuple(shape)}")
    got = arrays.dtype(t)
    if got != dtype:
        raise _m.AttndFlashInferError(f"{api}: {name} is {got}, planned {dtype}")
    if contiguous and not arrays.contiguous(t):
        raise _m.AttndFlashInferError(f"{api}: {name} must be contiguous (attnd writes it densely)")


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

    custom_mask ([qo_len, kv_len] bool, True = visible) or packed_custom_mask (its
    packbits(..., bitorder="little"), which wins): the mask mode is then CUSTOM and ``causal`` is
    ignored, as in FlashInfer. The K/V are copied into a scratch pool of the context first (one
    device copy per call). Returns o [qo_len, num_qo_heads, head_dim] (q's dtype) and with
    return_lse the base-2 LSE [qo_len, num_qo_heads].
    """
    from attnd.flashinfer._single import single_attention

    api = "single_prefill_with_kv_cache"
    _m.reject_unsupported(api, dict(scale_q=scale_q, scale_k=scale_k, scale_v=scale_v,
                                    kv_cache_sf=kv_cache_sf),
                          dict(scale_q=None, scale_k=None, scale_v=None, kv_cache_sf=None))
    if o_dtype is not None and _m.dtype_name(o_dtype) != _m.dtype_name(q.dtype):
        raise NotImplementedError(f"{api}: o_dtype={o_dtype} differs from q's dtype; attnd writes "
                                  "o in q's dtype")
    mask = None
    if custom_mask is not None or packed_custom_mask is not None:
        for name, t in (("q", q), ("k", k)):
            if len(getattr(t, "shape", ())) != 3:
                raise _m.AttndFlashInferError(f"{api}: {name} must be a 3-D CUDA tensor")
        qo_len = int(q.shape[0])
        kv_len = int(k.shape[1] if kv_layout == "HND" else k.shape[0])
        mask = _m.custom_mask_wire(api, [qo_len], [kv_len], custom_mask, packed_custom_mask)
    return single_attention(
        api, "prefill", q, k, v, kv_layout=kv_layout, causal=bool(causal) and mask is None,
        pos_encoding_mode=pos_encoding_mode, window_left=window_left,
        logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale,
        rope_theta=rope_theta, q_scale=None, k_scale=k_scale, v_scale=v_scale,
        return_lse=return_lse, attnd_context=attnd_context, custom_mask=mask)


single_prefill_with_kv_cache_return_lse = functools.partial(single_prefill_with_kv_cache,
                                                            return_lse=True)
