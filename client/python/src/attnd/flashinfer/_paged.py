"""What the paged decode, prefill and cascade wrappers share: the plan they keep, one attnd plan
per pool they run on, and run() itself (checks, the attnd Run, LSE base and layout, v_scale)."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

from attnd.flashinfer import _mapping as _m
from attnd.flashinfer._arrays import TorchArrays, finish_lse
from attnd.flashinfer._context import Context, get_context, peek_context


class Spec(NamedTuple):
    """Everything plan() fixed: the page table, the geometry, the dtypes, the options."""

    kind: str                      # "decode" or "prefill" (attnd's AttentionKind)
    table: _m.PageTable
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    q_dtype: str
    kv_dtype: str
    causal: bool
    pos_encoding: str
    window_left: Optional[int]
    logits_soft_cap: Optional[float]
    sm_scale: Optional[float]
    rope_scale: Optional[float]
    rope_theta: Optional[float]
    # prefill: the custom mask in attnd's wire form (_mapping.custom_mask_wire), None = none
    custom_mask: Optional[bytes] = None
    # a cascade plan's shared levels, outermost first (_mapping.cascade_tables: each a table
    # whose "requests" are the level's groups of query rows); () = an ordinary plan
    cascade_levels: Tuple[_m.PageTable, ...] = ()

    @property
    def max_page(self) -> int:
        """The largest page id the plan names, its shared levels' included."""
        return max(t.max_page for t in (self.table,) + self.cascade_levels)


def check_dtypes(api: str, q_data_type: Any, kv_data_type: Any, o_data_type: Any):
    q = _m.dtype_name(q_data_type)
    kv = _m.dtype_name(kv_data_type, default=q)
    o = _m.dtype_name(o_data_type, default=q)
    if o != q:
        raise NotImplementedError(f"{api}: o_data_type={o} differs from q_data_type={q}; attnd "
                                  "writes o in q's dtype")
    if kv != q:
        raise NotImplementedError(f"{api}: kv_data_type={kv} differs from q_data_type={q}; attnd's "
                                  "CUDA kernels take q in the KV cache's dtype (fp16 or bf16)")
    return q, kv


class PagedWrapperBase:
    """Plan state and run() of the paged wrappers (not public)."""

    _api = "wrapper"

    def _init_common(self, float_workspace_buffer, kv_layout: str, use_cuda_graph: bool,
                     backend: str, jit_args, jit_kwargs, attnd_context: Optional[Context]):
        _m.check_kv_layout(kv_layout)
        if use_cuda_graph:
            raise NotImplementedError(
                f"{self._api}: use_cuda_graph=True: attnd's run() is a call to the daemon, which a "
                "CUDA graph cannot capture; construct the wrapper with use_cuda_graph=False")
        if jit_args is not None or jit_kwargs:
            raise NotImplementedError(f"{self._api}: custom JIT kernels (jit_args/jit_kwargs) are "
                                      "FlashInfer's own; attnd runs its built-in variants")
        self._float_workspace_buffer = float_workspace_buffer
        self._int_workspace_buffer = None
        self._kv_layout = kv_layout
        self._backend = backend
        self._requested_backend = backend
        self._context_arg = attnd_context
        self._context: Optional[Context] = None
        self._spec: Optional[Spec] = None
        self._inner: Dict[Any, Any] = {}  # pool key -> planned attnd wrapper

    # FlashInfer's public bits that callers read
    @property
    def is_cuda_graph_enabled(self) -> bool:
        return False

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffer=None) -> None:
        """Kept for FlashInfer's API; attnd owns its workspace, so the buffers are not used."""
        self._float_workspace_buffer = float_workspace_buffer
        self._int_workspace_buffer = int_workspace_buffer

    @property
    def attnd_context(self) -> Context:
        if self._context is None:
            self._context = self._context_arg or get_context()
        return self._context

    # -- plans ---------------------------------------------------------------------------------
    def _set_spec(self, spec: Spec) -> None:
        self._drop_inner()
        self._spec = spec
        ctx = self._context or self._context_arg or peek_context()
        if ctx is None:  # no context yet, so no pool either: the plan is made at run()
            return
        found = ctx.candidates(spec.num_kv_heads, spec.head_dim, spec.table.page_size,
                               spec.kv_dtype)
        if len(found) == 1:  # only one pool fits: plan now, so a bad table fails in plan()
            self._context = ctx
            try:
                self._inner_for(found[0])
            except BaseException:
                self._spec = None
                raise

    def _inner_for(self, view):
        key = view.layout.key
        inner = self._inner.get(key)
        if inner is not None:
            return inner
        import attnd

        spec = self._spec
        t = spec.table
        if spec.max_page >= view.layout.num_pages:
            raise _m.AttndFlashInferError(
                f"{self._api}: the plan names page {spec.max_page}, the pool has "
                f"{view.layout.num_pages} pages")
        ctx = self.attnd_context
        levels = [dict(qo_indptr=lv.qo_indptr, kv_indptr=lv.kv_indptr, kv_indices=lv.kv_indices,
                       kv_last_page_len=lv.kv_last_page_len) for lv in spec.cascade_levels]
        if spec.kind == "decode":
            inner = attnd.BatchDecodeWrapper(view.pool, ipc_method=ctx.ipc_method)
            inner.plan(t.kv_indptr, t.kv_indices, t.kv_last_page_len, spec.num_qo_heads,
                       cascade_levels=levels)
        else:
            inner = attnd.BatchPrefillWrapper(view.pool, ipc_method=ctx.ipc_method)
            inner.plan(t.kv_indptr, t.kv_indices, t.kv_last_page_len, t.qo_indptr,
                       spec.num_qo_heads, causal=spec.causal, custom_mask=spec.custom_mask,
                       cascade_levels=levels)
        self._inner[key] = inner
        return inner

    def _drop_inner(self) -> None:
        inner, self._inner = self._inner, {}
        for w in inner.values():
            w.delete()

    def delete(self) -> None:
        """attnd extension: deletes the daemon-side plans now (otherwise they live until the next
        plan() of this wrapper or the end of the context's session)."""
        self._drop_inner()
        self._spec = None

    def _require_spec(self) -> Spec:
        if self._spec is None:
            raise RuntimeError(f"{self._api}.run() before plan()")
        return self._spec

    # -- run -----------------------------------------------------------------------------------
    def _run(self, q, paged_kv_cache, *, out=None, lse=None, return_lse: bool = False,
             lse_base: str = "log2", lse_layout: str = "NH", q_scale=None, k_scale=None,
             v_scale=None, window_left=None):
        spec = self._require_spec()
        _m.check_lse_options(lse_base, lse_layout)
        import torch

        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{self._api}.run() cannot be captured in a CUDA graph: it is a "
                               "call to the attnd daemon")
        ctx = self.attnd_context
        view, resolved = ctx.resolve(paged_kv_cache)
        _m.check_plan_against_cache(self._api, spec.table, spec.num_kv_heads, spec.head_dim,
                                    spec.kv_dtype, resolved, max_page=spec.max_page)
        rows = spec.table.qo_tokens
        _check_tensor(self._api, "q", q, (rows, spec.num_qo_heads, spec.head_dim), spec.q_dtype)
        if out is not None:
            _check_tensor(self._api, "out", out, tuple(q.shape), spec.q_dtype, contiguous=True)
        lse_nat = None
        if return_lse:
            if lse is not None and lse_layout == "NH":
                _check_tensor(self._api, "lse", lse, (rows, spec.num_qo_heads), "float32",
                              contiguous=True)
                lse_nat = lse
            else:
                if lse is not None:
                    _check_tensor(self._api, "lse", lse, (spec.num_qo_heads, rows), "float32",
                                  contiguous=True)
                lse_nat = torch.empty((rows, spec.num_qo_heads), dtype=torch.float32,
                                      device=q.device)
        inner = self._inner_for(view)
        result = inner.run(q, resolved.layer, out=out, lse_out=lse_nat, return_lse=return_lse,
                           completion=ctx.completion,
                           **self._run_options(q_scale, k_scale, window_left))
        o, lse_nat = result if return_lse else (result, None)
        scale = _m.v_scale_for(v_scale)
        if scale is not None:
            o.mul_(scale)
        if not return_lse:
            return o
        return o, finish_lse(TorchArrays(), lse_nat, lse_base, lse_layout, lse)

    def _run_options(self, q_scale=None, k_scale=None, window_left=None) -> Dict[str, Any]:
        """The attention options of a run of the plan (attnd's Run keyword arguments): the
        planned ones, q_scale / k_scale folded into sm_scale, window_left overriding the plan's
        when given."""
        spec = self._require_spec()
        window = spec.window_left if window_left is None else _m.window(window_left)
        return dict(causal=spec.causal,
                    sm_scale=_m.sm_scale_for(spec.sm_scale, spec.head_dim, q_scale, k_scale),
                    pos_encoding=spec.pos_encoding, rope_theta=spec.rope_theta,
                    rope_scale=spec.rope_scale, logits_soft_cap=spec.logits_soft_cap,
                    window_left=window if window is not None else -1)


def _check_tensor(api: str, name: str, t, shape, dtype: str, contiguous: bool = False) -> None:
    from attnd import tensors as _t
    from attnd.ipc import is_cuda_tensor

    if not is_cuda_tensor(t):
        raise _m.AttndFlashInferError(f"{api}: {name} must be a CUDA torch tensor, got "
                                      f"{type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise _m.AttndFlashInferError(f"{api}: {name} has shape {tuple(t.shape)}, expected "
                                      f"{tuple(shape)}")
    try:
        got = _t.dtype_name(t.dtype)
    except ValueError:
        got = str(t.dtype)
    if got != dtype:
        raise _m.AttndFlashInferError(f"{api}: {name} is {got}, planned {dtype}")
    if contiguous and not t.is_contiguous():
        raise _m.AttndFlashInferError(f"{api}: {name} must be contiguous (attnd writes it densely)")
