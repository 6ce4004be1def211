"""``flashinfer.cascade`` on attnd: merge_state, merge_state_in_place, merge_states (the daemon's
MergeState / MergeStates commands) and MultiLevelCascadeAttentionWrapper (an attnd cascade plan:
CreatePlanRequest.cascade_levels, whose levels the daemon runs and merges itself).

The merges: FlashInfer's LSEs are base 2, attnd's wire API takes natural-log ones: each sends its
input LSEs multiplied by ln 2 (new float32 tensors of [seq_len, (num_states,) num_heads], the only
copies made) and turns the merged LSE back into base 2 in place (times log2 e). The v tensors
travel zero-copy as CUDA IPC buffer slices and the daemon writes the merged v and s in place, on
the context's session (attnd_context, else the default context), with its completion mode.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from attnd.flashinfer import _arrays as _a
from attnd.flashinfer import _mapping as _m
from attnd.flashinfer._context import Context, get_context
from attnd.flashinfer._paged import PagedWrapperBase, Spec, check_dtypes

__all__ = ["merge_state", "merge_state_in_place", "merge_states",
           "MultiLevelCascadeAttentionWrapper"]


def _check(name: str, v, s, v_dims: int) -> None:
    v_shape, s_shape = tuple(getattr(v, "shape", ())), tuple(getattr(s, "shape", ()))
    if len(v_shape) != v_dims or s_shape != v_shape[:-1]:
        raise ValueError(f"{name}: v {v_shape} and s {s_shape} do not match "
                         f"(v [{'seq_len, num_states, ' if v_dims == 4 else 'seq_len, '}num_heads, "
                         "head_dim], s without head_dim)")


def _target(attnd_context: Optional[Context], lead):
    """(operations, session, completion) of a merge whose first tensor is ``lead``."""
    arrays = _a.arrays_for(lead)
    ctx = attnd_context or get_context()
    sess = ctx.session
    return arrays, sess, _a.completion_for(ctx, sess, lead)


def merge_state(v_a, s_a, v_b, s_b, *, attnd_context: Optional[Context] = None
                ) -> Tuple[Any, Any]:
    """Merges the states (v_a, s_a) and (v_b, s_b) of two disjoint KV segments.

    v_*: [seq_len, num_heads, head_dim] float16/bfloat16 (float32 too); s_*: [seq_len, num_heads]
    base-2 LSE (what run(..., return_lse=True) returns; other float dtypes are read as float32).
    Returns (v [seq_len, num_heads, head_dim] in v_a's dtype, s [seq_len, num_heads] float32
    base-2 LSE), new tensors: the state of the segments together. v_b of another dtype is
    converted to v_a's first.
    """
    _check("merge_state", v_a, s_a, 3)
    _check("merge_state", v_b, s_b, 3)
    if tuple(v_a.shape) != tuple(v_b.shape):
        raise ValueError(f"merge_state: v_a {tuple(v_a.shape)} and v_b {tuple(v_b.shape)} differ")
    arrays, sess, completion = _target(attnd_context, v_a)
    v, s = sess.merge_state(v_a, _a.to_ln(arrays, s_a), arrays.cast_like(v_b, v_a),
                            _a.to_ln(arrays, s_b), completion=completion)
    return v, _a.to_log2_(arrays, s)


def merge_state_in_place(v, s, v_other, s_other, mask: Optional[Any] = None, *,
                         attnd_context: Optional[Context] = None) -> None:
    """Merges (v_other, s_other) into (v, s) in place; with ``mask`` ([seq_len] bool), only the
    rows where it is True (the others keep their bytes).

    Without a mask, with v and s contiguous and s float32, the daemon merges into v and s
    themselves: s is turned into a natural-log LSE in place first (times ln 2) and the merged one
    back into base 2 (times log2 e); if the daemon refuses the merge, s is turned back, which
    can leave it one float32 rounding away from its old value. Otherwise (a mask, or v / s not
    contiguous or s not float32) the merge goes into new tensors that are copied into the chosen
    rows of v and s.
    """
    _check("merge_state_in_place", v, s, 3)
    _check("merge_state_in_place", v_other, s_other, 3)
    if tuple(v.shape) != tuple(v_other.shape):
        raise ValueError(f"merge_state_in_place: v {tuple(v.shape)} and v_other "
                         f"{tuple(v_other.shape)} differ")
    arrays, sess, completion = _target(attnd_context, v)
    v_other = arrays.cast_like(v_other, v)
    s_other_ln = _a.to_ln(arrays, s_other)
    if mask is None and arrays.contiguous(v) and arrays.contiguous(s) and arrays.is_float32(s):
        arrays.scale_(s, _m.LN2)
        try:
            sess.merge_state_in_place(v, s, v_other, s_other_ln, completion=completion)
        finally:
            _a.to_log2_(arrays, s)  # the merged s, or (after an error) s as it was
        return
    if mask is not None and tuple(getattr(mask, "shape", ())) != tuple(v.shape[:1]):
        raise ValueError(f"merge_state_in_place: mask {tuple(getattr(mask, 'shape', ()))} must "
                         f"be [seq_len] = [{v.shape[0]}]")
    mv, ms = sess.merge_state(v, _a.to_ln(arrays, s), v_other, s_other_ln,
                              completion=completion)
    arrays.write_rows(v, mv, mask)
    arrays.write_rows(s, _a.to_log2_(arrays, ms), mask)


def merge_states(v, s, *, attnd_context: Optional[Context] = None) -> Tuple[Any, Any]:
    """Merges num_states states per row and head: v [seq_len, num_states, num_heads, head_dim],
    s [seq_len, num_states, num_heads] base-2 LSE -> (v [seq_len, num_heads, head_dim] in v's
    dtype, s [seq_len, num_heads] float32 base-2 LSE), new tensors. A row and head whose states
    are all empty (s = -inf), or num_states = 0, merges to v = 0, s = -inf."""
    _check("merge_states", v, s, 4)
    arrays, sess, completion = _target(attnd_context, v)
    mv, ms = sess.merge_states(v, _a.to_ln(arrays, s), completion=completion)
    return mv, _a.to_log2_(arrays, ms)


class MultiLevelCascadeAttentionWrapper(PagedWrapperBase):
    """FlashInfer's multi-level cascade (shared-prefix) attention over a paged KV cache that is
    an attnd pool, as one attnd cascade plan (CreatePlanRequest.cascade_levels):

        wrapper = attnd.flashinfer.MultiLevelCascadeAttentionWrapper(2, workspace, "NHD")
        wrapper.plan([shared_qo_indptr, unique_qo_indptr],        # per level, outermost first
                     [shared_kv_indptr, unique_kv_indptr], [shared_kv_indices, unique_kv_indices],
                     [shared_last_page_len, unique_last_page_len], num_qo_heads, num_kv_heads,
                     head_dim, page_size, q_data_type=torch.float16)
        o = wrapper.run(q, cache[layer])           # q [qo_indptr_arr[-1][-1], Hq, D]

    FlashInfer plans each level l as a prefill batch of its own: qo_indptr_arr[l] splits the
    query rows into that level's groups, group g attending the level's pages
    paged_kv_indices_arr[l][paged_kv_indptr_arr[l][g] ..], causal (``causal``) on the last level
    only, then merges the levels' states. Here levels 0 .. L-2 become the attnd plan's
    cascade_levels (their groups and page tables, outermost first) and level L-1 the plan's own
    table (the requests: their own pages and query rows; a decode plan when every request has
    one query row, else a prefill plan with ``causal``); the daemon runs the levels and merges
    them. The result is attention of each request over its groups' pages, level 0 first, then
    its own pages, the shared levels fully visible (FlashInfer's semantics).

    attnd's cascade rules, checked at plan() before anything is sent (ValueError naming the
    argument and entry, or NotImplementedError): every group of a shared level has at least one
    page; each shared level's qo_indptr runs over all the query rows and its entries are
    request boundaries of the last level (a group holds whole requests); a shared level names no
    page holding query tokens of the last level (the pages appends write: levels are read
    only); at most 16 shared levels (num_levels <= 17); with num_levels > 1,
    pos_encoding_mode="ROPE_LLAMA" and window_left >= 0 are refused (FlashInfer applies them
    per level, with each level's own positions; attnd's cascade plans take neither). The
    last level follows the paged wrappers' rules (every request at least one page, qo_len <=
    kv_len of its own pages). num_levels=1 is an ordinary plan (RoPE and windows allowed).

    run(q, paged_kv_cache) returns o (q's dtype), as FlashInfer's; ``out=``, ``lse=`` and
    ``return_lse=True`` (the merged base-2 LSE [rows, num_qo_heads]) are attnd extensions with
    the paged wrappers' meaning. The workspace and the *_buf_arr CUDA-graph buffers are accepted
    and not used; use_cuda_graph=True and kv_layout="HND" raise NotImplementedError.
    attnd_context: see BatchDecodeWithPagedKVCacheWrapper.
    """

    _api = "MultiLevelCascadeAttentionWrapper"

    def __init__(self, num_levels, float_workspace_buffer, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf_arr=None,
                 paged_kv_indptr_buf_arr=None, paged_kv_indices_buf_arr=None,
                 paged_kv_last_page_len_buf_arr=None, *, attnd_context=None):
        n = int(num_levels)
        if n < 1:
            raise _m.AttndFlashInferError(f"{self._api}: num_levels={n} must be >= 1")
        if n > _m.MAX_SHARED_LEVELS + 1:
            raise NotImplementedError(
                f"{self._api}: num_levels={n}: attnd's cascade plans take at most "
                f"{_m.MAX_SHARED_LEVELS} shared levels (num_levels <= {_m.MAX_SHARED_LEVELS + 1})")
        self._init_common(float_workspace_buffer, kv_layout, use_cuda_graph, "auto", None, None,
                          attnd_context)
        self._num_levels = n

    def reset_workspace_buffer(self, float_workspace_buffer, int_workspace_buffers) -> None:
        """Kept for FlashInfer's API (one int workspace per level); attnd owns its workspace,
        so the buffers are not used."""
        self._float_workspace_buffer = float_workspace_buffer
        self._int_workspace_buffer = int_workspace_buffers

    def plan(self, qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr,
             paged_kv_last_page_len, num_qo_heads: int, num_kv_heads: int, head_dim: int,
             page_size: int, causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
             window_left: int = -1, logits_soft_cap: Optional[float] = None,
             rope_scale: Optional[float] = None, rope_theta: Optional[float] = None,
             q_data_type: Any = "float16", kv_data_type: Any = None) -> None:
        """Plans the cascade (see FlashInfer's documentation for every argument): each of the
        four lists has num_levels entries (int tensors on any device, or lists), level 0
        outermost, and every qo_indptr_arr[l] ends at the batch's query rows.

        sm_scale and logits_soft_cap apply to every level, causal to the last. Checked here
        (see the class documentation); the daemon-side plan is made here when one pool of the
        context fits the geometry, else at the first run() on each pool.
        """
        api = self._api + ".plan"
        q_dtype, kv_dtype = check_dtypes(api, q_data_type, kv_data_type, None)
        hq, hkv, d = _m.check_heads(num_qo_heads, num_kv_heads, head_dim)
        pos, window = _m.pos_encoding(pos_encoding_mode), _m.window(window_left)
        if self._num_levels > 1 and pos != "none":
            mode = getattr(pos_encoding_mode, "name", pos_encoding_mode)
            raise NotImplementedError(
                f"{api}: pos_encoding_mode={mode!r} with num_levels={self._num_levels}: attnd's "
                "cascade plans take no RoPE on the fly (a level does not know its keys' positions "
                "in the sequence); rotate q and k before they are written and plan with "
                "pos_encoding_mode='NONE'")
        if self._num_levels > 1 and window is not None:
            raise NotImplementedError(
                f"{api}: window_left={window} with num_levels={self._num_levels}: attnd's cascade "
                "plans take no sliding window (FlashInfer applies it within each level); use "
                "window_left=-1")
        try:
            table, levels = _m.cascade_tables(qo_indptr_arr, paged_kv_indptr_arr,
                                              paged_kv_indices_arr, paged_kv_last_page_len,
                                              page_size, self._num_levels)
        except _m.AttndFlashInferError as e:
            raise _m.AttndFlashInferError(f"{api}: {e}") from None
        decode = all(table.qo_indptr[b + 1] - table.qo_indptr[b] == 1
                     for b in range(table.batch_size))
        self._set_spec(Spec(
            kind="decode" if decode else "prefill", table=table, num_qo_heads=hq,
            num_kv_heads=hkv, head_dim=d, q_dtype=q_dtype, kv_dtype=kv_dtype,
            causal=bool(causal) and not decode,  # one row per request: causal changes nothing
            pos_encoding=pos, window_left=window, logits_soft_cap=_m.soft_cap(logits_soft_cap),
            sm_scale=None if sm_scale is None else float(sm_scale),
            rope_scale=None if rope_scale is None else float(rope_scale),
            rope_theta=None if rope_theta is None else float(rope_theta),
            cascade_levels=levels))

    begin_forward = plan

    def run(self, q, paged_kv_cache, *, out=None, lse=None, return_lse: bool = False):
        """Cascade attention of q [qo_indptr_arr[-1][-1], num_qo_heads, head_dim] over
        paged_kv_cache (cache[layer] of an attnd pool: [max_num_pages, 2, page_size,
        num_kv_heads, head_dim], or the (k_cache, v_cache) halves); every level's pages are
        pages of it.

        Returns o (q's dtype; written into ``out`` when given), and with return_lse=True (attnd
        extension, FlashInfer's run returns o only) (o, lse): the base-2 LSE of all the levels
        together, [rows, num_qo_heads] float32 (into ``lse`` when given).
        """
        return self._run(q, paged_kv_cache, out=out, lse=lse, return_lse=return_lse)

    forward = run
