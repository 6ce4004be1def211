"""``flashinfer.cascade`` on attnd: merge_state, merge_state_in_place, merge_states (in torch, on
the caller's stream), MultiLevelCascadeAttentionWrapper (not available yet).

The merges run on the client in torch: the formula of attnd.flashinfer._mapping.merge_math,
float32 inside, base-2 LSE as FlashInfer's. (The daemon is gaining MergeState/MergeStates
commands; these functions do not need them.)
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from attnd.flashinfer import _mapping as _m

__all__ = ["merge_state", "merge_state_in_place", "merge_states",
           "MultiLevelCascadeAttentionWrapper"]


class TorchOps:
    """merge_math's operations in torch."""

    def __init__(self):
        import torch

        self.torch = torch

    def f32(self, x):
        return x.to(self.torch.float32)

    def amax1(self, x):
        return self.torch.amax(x, dim=1)

    def sum1(self, x):
        return x.sum(dim=1)

    def exp2(self, x):
        return self.torch.exp2(x)

    def log2(self, x):
        return self.torch.log2(x)

    def where(self, c, a, b):
        return self.torch.where(c, a, b)

    def isneginf(self, x):
        return self.torch.isneginf(x)

    def zeros_like(self, x):
        return self.torch.zeros_like(x)


def _check(name: str, v, s, v_dims: int) -> None:
    if v.dim() != v_dims or s.dim() != v_dims - 1 or tuple(s.shape) != tuple(v.shape[:-1]):
        raise ValueError(f"{name}: v {tuple(v.shape)} and s {tuple(s.shape)} do not match "
                         f"(v [{'seq_len, num_states, ' if v_dims == 4 else 'seq_len, '}num_heads, "
                         "head_dim], s without head_dim)")


def merge_state(v_a, s_a, v_b, s_b) -> Tuple[Any, Any]:
    """Merges the states (v_a, s_a) and (v_b, s_b) of two disjoint KV segments.

    v_*: [seq_len, num_heads, head_dim]; s_*: [seq_len, num_heads] float32, base-2 LSE (what
    run(..., return_lse=True) returns). Returns (v [seq_len, num_heads, head_dim] in v_a's dtype,
    s [seq_len, num_heads] float32): the state of the segments together.
    """
    import torch

    _check("merge_state", v_a, s_a, 3)
    _check("merge_state", v_b, s_b, 3)
    if tuple(v_a.shape) != tuple(v_b.shape):
        raise ValueError(f"merge_state: v_a {tuple(v_a.shape)} and v_b {tuple(v_b.shape)} differ")
    v, s = _m.merge_math(TorchOps(), torch.stack([v_a, v_b.to(v_a.dtype)], dim=1),
                         torch.stack([s_a.float(), s_b.float()], dim=1))
    return v.to(v_a.dtype), s


def merge_state_in_place(v, s, v_other, s_other, mask: Optional[Any] = None) -> None:
    """Merges (v_other, s_other) into (v, s) in place; with ``mask`` ([seq_len] bool), only the
    rows where it is True."""
    import torch

    _check("merge_state_in_place", v, s, 3)
    _check("merge_state_in_place", v_other, s_other, 3)
    mv, ms = _m.merge_math(TorchOps(), torch.stack([v, v_other.to(v.dtype)], dim=1),
                           torch.stack([s.float(), s_other.float()], dim=1))
    if mask is None:
        v.copy_(mv.to(v.dtype))
        s.copy_(ms.to(s.dtype))
        return
    keep = mask.to(device=v.device, dtype=torch.bool)
    v.copy_(torch.where(keep[:, None, None], mv.to(v.dtype), v))
    s.copy_(torch.where(keep[:, None], ms.to(s.dtype), s))


def merge_states(v, s) -> Tuple[Any, Any]:
    """Merges num_states states per row and head: v [seq_len, num_states, num_heads, head_dim],
    s [seq_len, num_states, num_heads] float32 base-2 LSE -> (v [seq_len, num_heads, head_dim]
    in v's dtype, s [seq_len, num_heads] float32)."""
    _check("merge_states", v, s, 4)
    mv, ms = _m.merge_math(TorchOps(), v, s)
    return mv.to(v.dtype), ms


class MultiLevelCascadeAttentionWrapper:
    """FlashInfer's cascade wrapper: not available yet (attnd has no cascade kernels; a shared
    prefix is shared through pages, ``Pool.fork``). Constructing it raises NotImplementedError."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "MultiLevelCascadeAttentionWrapper: attnd has no cascade attention yet. Share a prefix "
            "by naming the same pages in several requests of a BatchPrefill/BatchDecode plan, or "
            "run the levels separately with return_lse=True and combine them with merge_state")
