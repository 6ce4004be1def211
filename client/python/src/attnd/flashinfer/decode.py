"""``flashinfer.decode`` on attnd: BatchDecodeWithPagedKVCacheWrapper, single_decode_with_kv_cache.

Same names, constructor, plan()/run() signatures, layouts and semantics as FlashInfer 0.7.4;
what differs is listed in client/python/README.md ("FlashInfer drop-in").
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from attnd.flashinfer import _mapping as _m
from attnd.flashinfer._paged import PagedWrapperBase, Spec, check_dtypes

__all__ = ["BatchDecodeWithPagedKVCacheWrapper", "CUDAGraphBatchDecodeWithPagedKVCacheWrapper",
           "single_decode_with_kv_cache"]

_DECODE_PLAN_UNSUPPORTED = dict(window_right=0, use_token_head_sf=False)
_DECODE_RUN_UNSUPPORTED = dict(sinks=None, skip_softmax_threshold_scale_factor=None,
                               kv_cache_sf=None)


class BatchDecodeWithPagedKVCacheWrapper(PagedWrapperBase):
    """Batch decode over a paged KV cache that is an attnd pool.

        cache = attnd.flashinfer.allocate_paged_kv_cache(num_layers, max_num_pages, page_size,
                                                         num_kv_heads, head_dim, torch.float16)
        wrapper = attnd.flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                     page_size, pos_encoding_mode="NONE", q_data_type=torch.float16)
        o = wrapper.run(q, cache[layer])            # q [batch, num_qo_heads, head_dim]

    ``float_workspace_buffer``, ``backend`` and ``use_tensor_cores`` are accepted and not used
    (attnd owns its workspace and picks its kernels); ``use_cuda_graph=True`` raises
    NotImplementedError. ``attnd_context`` (attnd extension): the Context whose pools the caches
    are (default: attnd.flashinfer.get_context()).
    """

    _api = "BatchDecodeWithPagedKVCacheWrapper"

    def __init__(self, float_workspace_buffer, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 use_tensor_cores: bool = False, paged_kv_indptr_buffer=None,
                 paged_kv_indices_buffer=None, paged_kv_last_page_len_buffer=None,
                 backend: str = "auto", jit_args=None, jit_kwargs=None, *, attnd_context=None):
        self._init_common(float_workspace_buffer, kv_layout, use_cuda_graph, backend, jit_args,
                          jit_kwargs, attnd_context)
        self._use_tensor_cores = bool(use_tensor_cores)

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    def plan(self, indptr, indices, last_page_len, num_qo_heads: int, num_kv_heads: int,
             head_dim: int, page_size: int, pos_encoding_mode: str = "NONE",
             window_left: int = -1, logits_soft_cap: Optional[float] = None,
             q_data_type: Any = "float16", kv_data_type: Any = None, o_data_type: Any = None,
             data_type: Any = None, sm_scale: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             non_blocking: bool = True, block_tables=None, seq_lens=None,
             fixed_split_size: Optional[int] = None, disable_split_kv: bool = False,
             q_len_per_req: int = 1, *, window_right: int = 0, is_causal: Optional[bool] = None,
             use_token_head_sf: bool = False) -> None:
        """Plans a decode batch (see FlashInfer's documentation for every argument).

        indptr [batch + 1], indices [indptr[-1]] and last_page_len [batch] (int tensors, on any
        device, or lists) are the page table; the pages are the cache's. The plan is checked here
        (ValueError naming the field); the daemon-side plan is made here when one pool of the
        context fits the geometry, else at the first run() on each pool.

        q_len_per_req > 1 (speculative verification) runs as attnd prefill of q_len_per_req
        tokens per request, causal unless is_causal=False.
        """
        _m.reject_unsupported(self._api + ".plan", dict(window_right=window_right,
                                                        use_token_head_sf=use_token_head_sf),
                              _DECODE_PLAN_UNSUPPORTED)
        if data_type is not None:
            q_data_type = data_type if q_data_type is None else q_data_type
            kv_data_type = data_type if kv_data_type is None else kv_data_type
        q_dtype, kv_dtype = check_dtypes(self._api + ".plan", q_data_type, kv_data_type,
                                         o_data_type)
        hq, hkv, d = _m.check_heads(num_qo_heads, num_kv_heads, head_dim)
        n = int(q_len_per_req)
        table = _m.page_table(indptr, indices, last_page_len, page_size, q_len_per_req=n)
        causal = bool(is_causal if is_causal is not None else n > 1)
        self._set_spec(Spec(
            kind="decode" if n == 1 else "prefill", table=table, num_qo_heads=hq,
            num_kv_heads=hkv, head_dim=d, q_dtype=q_dtype, kv_dtype=kv_dtype,
            causal=causal if n > 1 else False, pos_encoding=_m.pos_encoding(pos_encoding_mode),
            window_left=_m.window(window_left), logits_soft_cap=_m.soft_cap(logits_soft_cap),
            sm_scale=None if sm_scale is None else float(sm_scale),
            rope_scale=None if rope_scale is None else float(rope_scale),
            rope_theta=None if rope_theta is None else float(rope_theta)))

    begin_forward = plan

    def run(self, q, paged_kv_cache, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out=None, lse=None,
            return_lse: bool = False, enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks=None, q_len_per_req: Optional[int] = None,
            skip_softmax_threshold_scale_factor: Optional[float] = None, kv_cache_sf=None):
        """Decode attention of q [batch * q_len_per_req, num_qo_heads, head_dim] over
        paged_kv_cache (cache[layer] of an attnd pool: [max_num_pages, 2, page_size,
        num_kv_heads, head_dim], or the (k_cache, v_cache) halves).

        Returns o [batch, num_qo_heads, head_dim] in q's dtype (written into ``out`` when given),
        and with return_lse the base-2 log-sum-exp [batch, num_qo_heads] float32 (into ``lse``).
        """
        if args:
            raise NotImplementedError(f"{self._api}.run: extra positional arguments are for "
                                      "FlashInfer's custom JIT kernels")
        _m.reject_unsupported(self._api + ".run", dict(
            sinks=sinks, skip_softmax_threshold_scale_factor=skip_softmax_threshold_scale_factor,
            kv_cache_sf=kv_cache_sf), _DECODE_RUN_UNSUPPORTED)
        spec = self._require_spec()
        if q_len_per_req is not None:
            planned = spec.table.qo_tokens // spec.table.batch_size
            if int(q_len_per_req) != planned:
                raise ValueError(f"{self._api}.run: q_len_per_req={q_len_per_req}, planned "
                                 f"{planned} (set it in plan())")
        return self._run(q, paged_kv_cache, out=out, lse=lse, return_lse=return_lse,
                         q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                         window_left=window_left)

    run_return_lse = functools.partialmethod(run, return_lse=True)


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """FlashInfer's CUDA-graph decode wrapper: not available (a run is a call to the daemon)."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "CUDAGraphBatchDecodeWithPagedKVCacheWrapper: attnd's run() is a call to the daemon, "
            "which a CUDA graph cannot capture; use BatchDecodeWithPagedKVCacheWrapper")


def single_decode_with_kv_cache(q, k, v, kv_layout: str = "NHD", pos_encoding_mode: str = "NONE",
                                use_tensor_cores: bool = False, q_scale: Optional[float] = None,
                                k_scale: Optional[float] = None, v_scale: Optional[float] = None,
                                window_left: int = -1, logits_soft_cap: Optional[float] = None,
                                sm_scale: Optional[float] = None,
                                rope_scale: Optional[float] = None,
                                rope_theta: Optional[float] = None, return_lse: bool = False, *,
                                attnd_context=None):
    """Decode attention of one request: q [num_qo_heads, head_dim] over k, v [kv_len,
    num_kv_heads, head_dim] (NHD; HND [num_kv_heads, kv_len, head_dim] is accepted too).

    attnd runs attention over its pools only, so k and v are first copied into a scratch pool of
    the context (one device copy of the K/V per call); then a one-request decode plan runs. Returns
    o [num_qo_heads, head_dim] (q's dtype) and with return_lse the base-2 LSE [num_qo_heads].
    """
    from attnd.flashinfer._single import single_attention

    qq = q.unsqueeze(0) if q.dim() == 2 else q
    res = single_attention(
        "single_decode_with_kv_cache", "decode", qq, k, v, kv_layout=kv_layout, causal=False,
        pos_encoding_mode=pos_encoding_mode, window_left=window_left,
        logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale,
        rope_theta=rope_theta, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
        return_lse=return_lse, attnd_context=attnd_context)
    if return_lse:
        o, lse = res
        return o.squeeze(0), lse.squeeze(0)
    return res.squeeze(0)
