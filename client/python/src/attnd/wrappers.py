"""FlashInfer-style batch attention wrappers: ``plan()`` once per batch, ``run()`` once per layer.

Decode (one query token per request):

    wrapper = attnd.BatchDecodeWrapper(pool)
    wrapper.plan(kv_indptr, kv_indices, kv_last_page_len, num_qo_heads=32)
    for layer in range(num_layers):
        o = wrapper.run(q, layer, k=k_new, v=v_new)   # appends k/v, then attends
        # q: [batch, num_qo_heads, head_dim]; k_new, v_new: [batch, num_kv_heads, head_dim]
        # o: [batch, num_qo_heads, head_dim] in q's dtype

Prefill / append (qo_len tokens per request, the last qo_len tokens of each sequence):

    wrapper = attnd.BatchPrefillWrapper(pool)
    wrapper.plan(kv_indptr, kv_indices, kv_last_page_len, qo_indptr, num_qo_heads=32, causal=True)
    o, lse = wrapper.run(q, layer, k=k, v=v, return_lse=True)
    # q: [qo_indptr[-1], num_qo_heads, head_dim]; lse: [qo_indptr[-1], num_qo_heads] float32

Page table (CSR): request b uses pages kv_indices[kv_indptr[b]:kv_indptr[b+1]] in order and its
last page holds kv_last_page_len[b] tokens (1..page_size), so kv_len[b] =
(num_pages_b - 1) * page_size + kv_last_page_len[b]. kv_len counts the tokens appended by this
step's run(k=, v=) too: plan the lengths *after* the append.

Tensors: numpy arrays (and CPU torch tensors) travel inline; the outputs come back as new arrays
(torch tensors for torch input; bfloat16 as uint16 bits for numpy). CUDA torch tensors travel
zero-copy through CUDA IPC when the daemon supports it: their allocations are registered once per
session, ``out``/``lse_out`` may name preallocated outputs, and run() returns when the daemon has
written them. k/v are converted to the pool's kv dtype on the client, except on FP8 pools:
there float32/float16/bfloat16 k/v travel as they are and the daemon quantizes them with the
pool's scales (fp8(x / scale), round to nearest even, saturating), while fp8 k/v of the pool's
format (torch float8 tensors, ml_dtypes float8 or numpy uint8 bits) travel as they are; see
BatchDecodeWrapper.run.

Attention options (plan() sets defaults, run() may override any of them):
    causal (prefill), sm_scale (None = 1/sqrt(head_dim)), pos_encoding ("none" | "rope_llama"),
    rope_theta (None = 1e4), rope_scale (None = 1), rope_offsets ([batch] ints added to positions),
    logits_soft_cap (None/0 = off), window_left (None/-1 = no window; a lower bound only, as in
    FlashInfer: keys below position p - window_left are hidden, the upper bound is causal's).

Custom masks (prefill plans: BatchPrefillWrapper.plan(custom_mask=...), tree / speculative
verification): one boolean [qo_len_b, kv_len_b] array per request, or the packed bytes
(attnd.pack_custom_mask); applied together with causal and the window.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from attnd import _requests as _rq
from attnd.errors import AttndError
from attnd.v1 import attnd_pb2 as pb

__all__ = ["BatchDecodeWrapper", "BatchPrefillWrapper", "BatchPrefillRaggedWrapper"]


class _Unset:
    def __repr__(self) -> str:
        return "<plan default>"


UNSET: Any = _Unset()


class PlanState:
    """What the sync and asyncio wrappers share: the plan and the option defaults."""

    kind: str = ""

    def __init__(self, pool, *, zero_copy: Optional[bool] = None, ipc_method: str = "driver"):
        self.pool = pool
        self.session = pool.session
        self.zero_copy = zero_copy
        self.ipc_method = ipc_method
        self.plan_id: Optional[str] = None
        self.batch_size = 0
        self.qo_tokens = 0
        self.kv_tokens = 0
        self.defaults: Dict[str, Any] = dict(
            causal=False, sm_scale=None, pos_encoding="none", rope_theta=None, rope_scale=None,
            rope_offsets=None, logits_soft_cap=None, window_left=None)

    def _plan_request(self, kv_indptr, kv_indices, kv_last_page_len, qo_indptr, num_qo_heads,
                      options: Dict[str, Any], cascade_levels=None,
                      custom_mask=None) -> pb.CreatePlanRequest:
        """The CreatePlanRequest; the option defaults change only once the plan is made
        (_planned), so a refused plan() changes nothing."""
        self._pending_defaults = {k: v for k, v in options.items() if v is not UNSET}
        kind = pb.ATTENTION_KIND_DECODE if self.kind == "decode" else pb.ATTENTION_KIND_PREFILL
        kv_lens = None
        if isinstance(custom_mask, (list, tuple)):
            kv_lens = _kv_lens(kv_indptr, kv_last_page_len, self.pool.page_size)
        return _rq.create_plan_request(self.pool.pool_id, kind, num_qo_heads, kv_indptr,
                                       kv_indices, kv_last_page_len, qo_indptr, cascade_levels,
                                       custom_mask, kv_lens)

    def _planned(self, resp: pb.CreatePlanResponse) -> None:
        self.defaults.update(getattr(self, "_pending_defaults", {}))
        self._pending_defaults = {}
        self.plan_id = resp.plan_id
        self.batch_size = int(resp.batch_size)
        self.qo_tokens = int(resp.qo_tokens)
        self.kv_tokens = int(resp.kv_tokens)

    def _require_plan(self) -> str:
        if self.plan_id is None:
            raise RuntimeError(f"{type(self).__name__}.run() before plan()")
        return self.plan_id

    def _options(self, overrides: Dict[str, Any], return_lse: bool) -> pb.AttentionOptions:
        merged = dict(self.defaults)
        merged.update({k: v for k, v in overrides.items() if v is not UNSET})
        return _rq.attention_options(return_lse=return_lse, **merged)

    def _tensors(self, q, k, v, out, lse_out, return_lse, q_dtype, cuda_ipc: bool, sinks=None):
        zero_copy = cuda_ipc if self.zero_copy is None else (self.zero_copy and cuda_ipc)
        return _rq.TensorPlan(q, k, v, kv_dtype=self.pool.kv_dtype_enum, out=out, lse_out=lse_out,
                              return_lse=return_lse, q_dtype=q_dtype, zero_copy=zero_copy,
                              ipc_method=self.ipc_method,
                              shared_buffers=getattr(self.session, "shared_buffers", ()),
                              sinks=sinks)

    @staticmethod
    def _needs_ipc_check(*tensors) -> bool:
        from attnd.ipc import is_cuda_tensor

        return any(t is not None and is_cuda_tensor(t) for t in tensors)


def _kv_lens(kv_indptr, kv_last_page_len, page_size: int):
    """Each request's kv_len from its page table, or None when the table is malformed (the
    daemon then refuses the plan, naming the field)."""
    indptr = _rq.int32_list("kv_indptr", kv_indptr)
    last = _rq.int32_list("kv_last_page_len", kv_last_page_len)
    if len(indptr) != len(last) + 1:
        return None
    return [(indptr[b + 1] - indptr[b] - 1) * int(page_size) + last[b] for b in range(len(last))]


class _SyncWrapper(PlanState):
    def _create(self, req: pb.CreatePlanRequest) -> None:
        old = self.plan_id
        self._planned(self.session.call("create_plan", req))
        if old is not None:
            self._delete_quietly(old)

    def _delete_quietly(self, plan_id: str) -> None:
        try:
            self.session.delete_plan(plan_id)
        except AttndError:
            pass  # the session may be gone; the daemon releases its plans with it

    def run(self, q, layer: int, k=None, v=None, *, out=None, lse_out=None,
            return_lse: bool = False, q_dtype: Any = None, causal: Any = UNSET,
            sm_scale: Any = UNSET, pos_encoding: Any = UNSET, rope_theta: Any = UNSET,
            rope_scale: Any = UNSET, rope_offsets: Any = UNSET, logits_soft_cap: Any = UNSET,
            window_left: Any = UNSET, completion: str = "sync", sinks: Any = None):
        """One layer of attention over the planned batch (appending k/v first when given).

        Args:
            q: [qo_tokens, num_qo_heads, head_dim], float32/float16/bfloat16 (numpy: bfloat16 as
                uint16 bits with ``q_dtype="bfloat16"``; torch: any of the three).
            layer: 0 .. pool.num_layers - 1.
            k, v: optional [qo_tokens, num_kv_heads, head_dim]: the new tokens' keys/values,
                written to their kv positions before attention. 16/32-bit pools: converted to
                the pool's dtype on the client. FP8 pools: float32/float16/bfloat16 (numpy
                float32/float16, float64 sent as float32, ml_dtypes.bfloat16; torch tensors of
                those, CPU or CUDA) are sent in their own dtype and quantized by the daemon with
                the pool's scales, x8 = fp8(x / scale) (round to nearest even, saturating);
                already-quantized fp8 of the pool's format (torch float8_e4m3fn / float8_e5m2,
                ml_dtypes float8 arrays, numpy uint8 bits) is stored as it is. k and v of two
                float dtypes are both sent as float32 (exact: the same fp8 values); fp8 k with
                float v (or the reverse), the other fp8 format, numpy uint16 (no k/v dtype hint:
                use ml_dtypes.bfloat16 or torch.bfloat16) or other dtypes raise ValueError.
            out, lse_out: preallocated o [qo_tokens, num_qo_heads, head_dim] (q's dtype) and
                lse [qo_tokens, num_qo_heads] float32 for the daemon to write: CUDA tensors, or
                numpy arrays inside a session.shared_buffer() (see attnd.shm).
            return_lse: also return the natural-log LSE of each row's logits.
            causal, sm_scale, ...: override the plan's attention options for this call.
            sinks: optional attention sinks of this layer (gpt-oss), [num_qo_heads] float32
                (numpy, a list, or a torch tensor; a CUDA tensor travels zero-copy): head h's
                softmax also has the logit sinks[h] (in the units of the scaled, soft-capped
                logits), which has no value. The returned lse then includes it (the LSE of the
                whole softmax); a row that sees no key gets o = 0, lse = sinks[h].
            completion: "sync" (default): returns when o is written. "async" (CUDA tensors on a
                CUDA daemon, wire API 0.2): no CPU synchronization; the daemon waits on an event
                recorded on the current stream, and the current stream waits on the daemon's
                completion event, so later work on that stream sees o.

        Returns:
            o, or (o, lse) with return_lse.
        """
        plan_id = self._require_plan()
        opts = self._options(dict(causal=causal, sm_scale=sm_scale, pos_encoding=pos_encoding,
                                  rope_theta=rope_theta, rope_scale=rope_scale,
                                  rope_offsets=rope_offsets, logits_soft_cap=logits_soft_cap,
                                  window_left=window_left), return_lse)
        ipc = self.session.cuda_ipc if self._needs_ipc_check(q, k, v, sinks) else False
        tp = self._tensors(q, k, v, out, lse_out, return_lse, q_dtype, ipc, sinks)
        self.session._resolve_slices(tp)
        req = tp.run_request(plan_id, layer, opts)
        return tp.outputs(self._send("run", req, tp, completion))

    def _send(self, command: str, req, tp, completion: str):
        """Sends a Run/AppendKv (see attnd.Session._send_tensors for ``completion``)."""
        return self.session._send_tensors(command, req, tp, completion)

    def append_kv(self, k, v, layer: int, *, completion: str = "sync") -> None:
        """Writes the new tokens' k, v [qo_tokens, num_kv_heads, head_dim] into the planned
        pages of ``layer`` (row j of request b goes to kv position kv_len[b] - qo_len[b] + i).

        k/v dtypes as for run(k=, v=): converted to the pool's dtype on 16/32-bit pools; on FP8
        pools float32/float16/bfloat16 are quantized by the daemon with the pool's scales and fp8
        of the pool's format is stored as it is."""
        plan_id = self._require_plan()
        ipc = self.session.cuda_ipc if self._needs_ipc_check(k, v) else False
        tp = self._tensors(None, k, v, None, None, False, None, ipc)
        self.session._resolve_slices(tp)
        req = tp.append_request(plan_id, layer)
        self._send("append_kv", req, tp, completion)

    def delete(self) -> None:
        """Deletes the plan (releasing its page references)."""
        if self.plan_id is not None:
            plan_id, self.plan_id = self.plan_id, None
            self._delete_quietly(plan_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


class BatchDecodeWrapper(_SyncWrapper):
    """Batched paged decode: one query token per request, not masked (it is the last token).

    Args:
        pool: the attnd.Pool whose pages the plans name.
        zero_copy: None (default) = use CUDA IPC for CUDA tensors when the daemon supports it;
            False = always copy through the host.
        ipc_method: "driver" or "torch" (see attnd.ipc).
    """

    kind = "decode"

    def plan(self, kv_indptr, kv_indices, kv_last_page_len, num_qo_heads: int, *,
             sm_scale: Any = UNSET, pos_encoding: Any = UNSET, rope_theta: Any = UNSET,
             rope_scale: Any = UNSET, rope_offsets: Any = UNSET, logits_soft_cap: Any = UNSET,
             window_left: Any = UNSET, cascade_levels: Any = None) -> "BatchDecodeWrapper":
        """Plans a decode batch (replacing this wrapper's previous plan).

        Args:
            kv_indptr: [batch_size + 1] int, kv_indptr[0] = 0.
            kv_indices: [kv_indptr[-1]] page ids held by this session.
            kv_last_page_len: [batch_size] int in 1..page_size.
            num_qo_heads: multiple of the pool's num_kv_heads (GQA).
            sm_scale ... window_left: attention defaults for run().
            cascade_levels: a cascade (shared-prefix) plan's shared levels (see
                Session.create_plan); the table given is then each request's own pages.
        """
        self._create(self._plan_request(
            kv_indptr, kv_indices, kv_last_page_len, None, num_qo_heads,
            dict(sm_scale=sm_scale, pos_encoding=pos_encoding, rope_theta=rope_theta,
                 rope_scale=rope_scale, rope_offsets=rope_offsets,
                 logits_soft_cap=logits_soft_cap, window_left=window_left),
            cascade_levels))
        return self


class BatchPrefillWrapper(_SyncWrapper):
    """Batched paged prefill / append: qo_len query tokens per request, which are the last
    qo_len tokens of its sequence (kv_len >= qo_len; kv_len > qo_len appends to a cached prefix).

    Args: as BatchDecodeWrapper.
    """

    kind = "prefill"

    def plan(self, kv_indptr, kv_indices, kv_last_page_len, qo_indptr, num_qo_heads: int, *,
             causal: Any = UNSET, sm_scale: Any = UNSET, pos_encoding: Any = UNSET,
             rope_theta: Any = UNSET, rope_scale: Any = UNSET, rope_offsets: Any = UNSET,
             logits_soft_cap: Any = UNSET, window_left: Any = UNSET,
             cascade_levels: Any = None, custom_mask: Any = None) -> "BatchPrefillWrapper":
        """Plans a prefill batch (replacing this wrapper's previous plan; a refused plan() keeps
        the previous plan and defaults).

        Args:
            kv_indptr, kv_indices, kv_last_page_len: the page table, as for decode.
            qo_indptr: [batch_size + 1] int: request b's query rows are
                qo_indptr[b] .. qo_indptr[b+1] of q.
            num_qo_heads: multiple of the pool's num_kv_heads.
            causal: query i sees kv positions <= its own (default False, as FlashInfer).
            sm_scale ... window_left: attention defaults for run().
            cascade_levels: as for BatchDecodeWrapper.plan.
            custom_mask: a custom mask (tree / speculative verification) the plan keeps for all
                its runs: a list of per-request boolean [qo_len_b, kv_len_b] arrays (True =
                query row i sees kv position j; row i is at kv position kv_len_b - qo_len_b + i),
                checked against the plan's shapes and packed here, or the packed wire form
                (bytes or a 1-D uint8 array, attnd.pack_custom_mask / FlashInfer's
                packed_custom_mask). A run sees a key when the mask, causal (if set) and the
                window (if set) all allow it; a row that sees no key gets o = 0, lse = -inf (the
                sink with sinks). With cascade_levels the mask covers each request's own pages
                (kv_len_b counts only them); the shared levels stay fully visible.
        """
        self._create(self._plan_request(
            kv_indptr, kv_indices, kv_last_page_len, qo_indptr, num_qo_heads,
            dict(causal=causal, sm_scale=sm_scale, pos_encoding=pos_encoding,
                 rope_theta=rope_theta, rope_scale=rope_scale, rope_offsets=rope_offsets,
                 logits_soft_cap=logits_soft_cap, window_left=window_left),
            cascade_levels, custom_mask))
        return self


class BatchPrefillRaggedWrapper:
    """Prefill/append attention over K/V passed as tensors, no pool (FlashInfer's
    BatchPrefillWithRaggedKVCacheWrapper): ``plan()`` keeps the batch's layout and options on the
    client, ``run(q, k, v)`` sends them with the tensors (RunRagged); the daemon holds nothing
    between runs. Works with a session of either client: with an asyncio session, ``await`` run.

        w = attnd.BatchPrefillRaggedWrapper(sess)
        w.plan(qo_indptr, kv_indptr, num_qo_heads=32, num_kv_heads=8, head_dim=128, causal=True)
        o = w.run(q, k, v)   # q [qo_indptr[-1], 32, 128]; k, v [kv_indptr[-1], 8, 128]
    """

    def __init__(self, session):
        self.session = session
        self.qo_indptr = None
        self.kv_indptr = None
        self.shape = None
        self.defaults: Dict[str, Any] = {}

    def plan(self, qo_indptr, kv_indptr, num_qo_heads: Optional[int] = None,
             num_kv_heads: Optional[int] = None, head_dim: Optional[int] = None, *,
             causal: bool = False, sm_scale: Any = None, pos_encoding: Any = "none",
             rope_theta: Any = None, rope_scale: Any = None, rope_offsets: Any = None,
             logits_soft_cap: Any = None, window_left: Any = None):
        """The batch: request b's query rows qo_indptr[b]:qo_indptr[b+1] and keys
        kv_indptr[b]:kv_indptr[b+1]; the head counts and head_dim, when given, are checked
        against the tensors of each run (the daemon checks them anyway)."""
        self.qo_indptr = _rq.int32_list("qo_indptr", qo_indptr)
        self.kv_indptr = _rq.int32_list("kv_indptr", kv_indptr)
        self.shape = (num_qo_heads, num_kv_heads, head_dim)
        self.defaults = dict(causal=causal, sm_scale=sm_scale, pos_encoding=pos_encoding,
                             rope_theta=rope_theta, rope_scale=rope_scale,
                             rope_offsets=rope_offsets, logits_soft_cap=logits_soft_cap,
                             window_left=window_left)
        return self

    def run(self, q, k, v, *, out=None, lse_out=None, return_lse: bool = False,
            q_dtype: Any = None, completion: str = "sync", **overrides):
        """o, or (o, lse) with return_lse; the options of plan() unless overridden here."""
        if self.qo_indptr is None:
            raise RuntimeError("BatchPrefillRaggedWrapper.run() before plan()")
        hq, hkv, d = self.shape
        for name, x, want in (("q", q, (hq, d)), ("k", k, (hkv, d)), ("v", v, (hkv, d))):
            got = tuple(int(n) for n in getattr(x, "shape", ())[1:])
            if any(w is not None for w in want) and len(got) == 2 and any(
                    w is not None and w != g for w, g in zip(want, got)):
                raise ValueError(f"{name} has heads/head_dim {got}, plan() said {want}")
        options = dict(self.defaults)
        options.update(overrides)
        return self.session.run_ragged(q, k, v, self.qo_indptr, self.kv_indptr, out=out,
                                       lse_out=lse_out, return_lse=return_lse, q_dtype=q_dtype,
                                       completion=completion, **options)
