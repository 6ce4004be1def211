"""A plain numpy (float64) reference of the attention attnd computes, for checking results.

Semantics (the project's shared definition): the qo_len query rows of a request are the last
qo_len tokens of its kv_len-token sequence (row i at kv position kv_len - qo_len + i);
s = (q . k) * sm_scale, soft cap s = cap * tanh(s / cap), then the mask (causal: keys at positions
<= the query's; window_left >= 0: keys at positions >= p - window_left; a custom mask
[qo_len, kv_len]: the keys it marks True; a key is visible when all of them allow it), softmax in
float64. A row that sees no key gives o = 0, lse = -inf. GQA: query head h uses kv head h // group.
RoPE ("rope_llama", rotate-half): q and k are rotated by (position + rope_offset) / rope_scale.
Attention sinks (gpt-oss, one logit per query head, no value): they join each row's softmax, so
lse includes them and a row that sees no key gives o = 0, lse = sinks[h].
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

__all__ = ["apply_rope", "attention", "batch_attention"]


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float = 1e4,
               scale: float = 1.0) -> np.ndarray:
    """Rotate-half RoPE. x: [n, heads, D]; positions: [n]. Returns float64 [n, heads, D]."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    half = d // 2
    freq = theta ** (-2.0 * np.arange(half, dtype=np.float64) / d)           # [D/2]
    angle = (np.asarray(positions, dtype=np.float64)[:, None] / scale) * freq  # [n, D/2]
    cos = np.cos(angle)[:, None, :]
    sin = np.sin(angle)[:, None, :]
    lo, hi = x[..., :half], x[..., half:]
    return np.concatenate([lo * cos - hi * sin, hi * cos + lo * sin], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False,
              sm_scale: Optional[float] = None, logits_soft_cap: float = 0.0,
              window_left: int = -1, rope: bool = False, rope_theta: float = 1e4,
              rope_scale: float = 1.0, rope_offset: int = 0,
              custom_mask: Optional[np.ndarray] = None,
              sinks: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One request. q: [qo_len, Hq, D]; k, v: [kv_len, Hkv, D] (kv_len >= qo_len).

    custom_mask: optional bool [qo_len, kv_len] (True = query row i sees key j), applied with
    causal and the window. sinks: optional [Hq] sink logits (in the units of the scaled,
    soft-capped logits).

    Returns (o [qo_len, Hq, D] float64, lse [qo_len, Hq] float64)."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    qo_len, hq, d = q.shape
    kv_len, hkv, _ = k.shape
    group = hq // hkv
    scale = 1.0 / np.sqrt(d) if not sm_scale else float(sm_scale)
    q_pos = np.arange(qo_len) + (kv_len - qo_len)
    k_pos = np.arange(kv_len)
    if rope:
        q = apply_rope(q, q_pos + rope_offset, rope_theta, rope_scale)
        k = apply_rope(k, k_pos + rope_offset, rope_theta, rope_scale)
    k = np.repeat(k, group, axis=1)   # [kv_len, Hq, D]
    v = np.repeat(v, group, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) * scale  # [Hq, qo_len, kv_len]
    if logits_soft_cap and logits_soft_cap > 0:
        s = logits_soft_cap * np.tanh(s / logits_soft_cap)
    visible = np.ones((qo_len, kv_len), dtype=bool)
    if causal:
        visible &= k_pos[None, :] <= q_pos[:, None]
    if window_left is not None and window_left >= 0:
        visible &= k_pos[None, :] >= q_pos[:, None] - window_left
    if custom_mask is not None:
        cm = np.asarray(custom_mask, dtype=bool)
        if cm.shape != (qo_len, kv_len):
            raise ValueError(f"custom_mask has shape {cm.shape}, expected {(qo_len, kv_len)}")
        visible &= cm
    s = np.where(visible[None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)                       # [Hq, qo_len, 1]
    if sinks is not None:
        sink = np.asarray(sinks, dtype=np.float64).reshape(hq, 1, 1)
        m = np.maximum(m, sink)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m_safe)
    denom = p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        denom = denom + np.exp(sink - m_safe)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.einsum("hqk,khd->qhd", np.where(denom > 0, p / denom, 0.0), v)
        lse = (np.log(denom) + m_safe)[..., 0].T  # [qo_len, Hq]
    lse = np.where(denom[..., 0].T > 0, lse, -np.inf)
    return o, lse


def batch_attention(q: np.ndarray, qo_indptr, ks, vs, rope_offsets=None, custom_masks=None,
                    **options):
    """A batch: q [qo_indptr[-1], Hq, D]; ks[b], vs[b]: [kv_len_b, Hkv, D]; custom_masks: None
    or one bool [qo_len_b, kv_len_b] array per request (what attnd.pack_custom_mask packs).

    Returns (o, lse) stacked like q."""
    outs, lses = [], []
    for b in range(len(ks)):
        lo, hi = int(qo_indptr[b]), int(qo_indptr[b + 1])
        off = int(rope_offsets[b]) if rope_offsets is not None else 0
        mask = custom_masks[b] if custom_masks is not None else None
        o, lse = attention(q[lo:hi], ks[b], vs[b], rope_offset=off, custom_mask=mask, **options)
        outs.append(o)
        lses.append(lse)
    return np.concatenate(outs), np.concatenate(lses)
