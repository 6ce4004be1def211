"""``flashinfer.cascade`` on attnd: merge_state, merge_state_in_place, merge_states (the daemon's
MergeState / MergeStates commands), MultiLevelCascadeAttentionWrapper (not available yet).

FlashInfer's LSEs are base 2, attnd's wire API takes natural-log ones: each function sends its
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


class MultiLevelCascadeAttentionWrapper:
    """FlashInfer's cascade wrapper: not mapped yet. attnd's own API has cascade plans
    (``cascade_levels=`` on attnd.BatchDecodeWrapper.plan / BatchPrefillWrapper.plan and
    Session.create_plan). Constructing it raises NotImplementedError."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "MultiLevelCascadeAttentionWrapper: the FlashInfer drop-in has no cascade wrapper yet. "
            "Use attnd's cascade plans (cascade_levels= on attnd.BatchDecodeWrapper.plan, "
            "attnd.BatchPrefillWrapper.plan or Session.create_plan), or run the levels separately "
            "with return_lse=True and combine them with merge_state")
