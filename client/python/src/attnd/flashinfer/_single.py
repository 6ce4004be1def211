"""single_decode_with_kv_cache / single_prefill_with_kv_cache: contiguous K/V through a scratch
pool (attnd runs attention over its pools only)."""

from __future__ import annotations

from typing import Any

from attnd.flashinfer import _mapping as _m
from attnd.flashinfer._context import get_context
from attnd.flashinfer._arrays import TorchArrays, finish_lse
from attnd.flashinfer._paged import _check_tensor


def single_attention(api: str, kind: str, q, k, v, *, kv_layout: str, causal: bool,
                     pos_encoding_mode: Any, window_left: Any, logits_soft_cap: Any, sm_scale: Any,
                     rope_scale: Any, rope_theta: Any, q_scale: Any, k_scale: Any, v_scale: Any,
                     return_lse: bool, lse_base: str = "log2", attnd_context=None,
                     custom_mask: Any = None):
    """q [qo_len, Hq, D] over k, v [kv_len, Hkv, D] (NHD, or HND [Hkv, kv_len, D]).

    The K/V are copied (on the current stream) into pages 0.. of a one-layer scratch pool of the
    context, then a one-request plan of ``kind`` runs and is deleted (prefill: with
    ``custom_mask``, attnd's packed wire form, when given). Returns o [qo_len, Hq, D] and, with
    return_lse, the LSE [qo_len, Hq] in ``lse_base``.
    """
    import attnd
    from attnd import tensors as _t

    layout = kv_layout
    if layout == "HND":  # copied anyway: take the other layout's view
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    elif layout != "NHD":
        _m.check_kv_layout(layout)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t is None or not hasattr(t, "dim") or t.dim() != 3:
            raise _m.AttndFlashInferError(f"{api}: {name} must be a 3-D CUDA tensor")
    qo_len, hq, d = (int(x) for x in q.shape)
    kv_len, hkv, dk = (int(x) for x in k.shape)
    if dk != d or tuple(v.shape) != tuple(k.shape):
        raise NotImplementedError(f"{api}: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
                                  f"[kv_len, num_kv_heads, {d}] (attnd has one head_dim for q, k "
                                  "and v)")
    _m.check_heads(hq, hkv, d)
    dtype = _t.dtype_name(q.dtype)
    _check_tensor(api, "k", k, tuple(k.shape), dtype)
    _check_tensor(api, "v", v, tuple(v.shape), dtype)
    if kv_len < 1:
        raise _m.AttndFlashInferError(f"{api}: kv_len must be >= 1")
    ctx = attnd_context or get_context()
    with ctx.scratch_lock:
        view = ctx.scratch(hkv, d, dtype, kv_len)
        ps = view.layout.page_size
        pages = -(-kv_len // ps)
        table = _m.page_table([0, pages], list(range(pages)), [kv_len - (pages - 1) * ps], ps,
                              None if kind == "decode" else [0, qo_len])
        cache = view.tensor[0]
        full = kv_len // ps
        if full:
            cache[:full, 0].copy_(k[:full * ps].reshape(full, ps, hkv, d))
            cache[:full, 1].copy_(v[:full * ps].reshape(full, ps, hkv, d))
        if kv_len > full * ps:
            rest = kv_len - full * ps
            cache[full, 0, :rest].copy_(k[full * ps:])
            cache[full, 1, :rest].copy_(v[full * ps:])
        if kind == "decode":
            inner = attnd.BatchDecodeWrapper(view.pool, ipc_method=ctx.ipc_method)
            inner.plan(table.kv_indptr, table.kv_indices, table.kv_last_page_len, hq)
        else:
            inner = attnd.BatchPrefillWrapper(view.pool, ipc_method=ctx.ipc_method)
            inner.plan(table.kv_indptr, table.kv_indices, table.kv_last_page_len, table.qo_indptr,
                       hq, causal=bool(causal), custom_mask=custom_mask)
        try:
            lse_nat = None
            if return_lse:
                import torch

                lse_nat = torch.empty((qo_len, hq), dtype=torch.float32, device=q.device)
            window = _m.window(window_left)
            result = inner.run(
                q, 0, lse_out=lse_nat, return_lse=return_lse, causal=bool(causal),
                sm_scale=_m.sm_scale_for(sm_scale, d, q_scale, k_scale),
                pos_encoding=_m.pos_encoding(pos_encoding_mode), rope_theta=rope_theta,
                rope_scale=rope_scale, logits_soft_cap=_m.soft_cap(logits_soft_cap),
                window_left=window if window is not None else -1, completion=ctx.completion)
        finally:
            inner.delete()
    o, lse_nat = result if return_lse else (result, None)
    scale = _m.v_scale_for(v_scale)
    if scale is not None:
        o.mul_(scale)
    if not return_lse:
        return o
    return o, finish_lse(TorchArrays(), lse_nat, lse_base, "NH")

