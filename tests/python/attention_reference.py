"""The tests' own float64 attention reference, written row by row from the shared semantics
(independent of attnd.reference, which the examples use).

One request: q [qo_len, Hq, D], k, v [kv_len, Hkv, D]; query row i sits at kv position
kv_len - qo_len + i. Returns o [qo_len, Hq, D] and lse [qo_len, Hq] (natural log), float64.
custom_mask (optional, [qo_len, kv_len] bool): row i sees key j only where it is True, on top of
causal and the window; a row that sees no key gets o = 0 and lse = -inf.
"""

from __future__ import annotations

import math

import numpy as np


def rope_rotate(vec: np.ndarray, pos: float, theta: float, scale: float) -> np.ndarray:
    """Rotate-half RoPE of one head vector [D] at position `pos`."""
    d = vec.shape[0]
    half = d // 2
    out = np.empty(d, dtype=np.float64)
    for i in range(half):
        angle = (pos / scale) * theta ** (-2.0 * i / d)
        c, s = math.cos(angle), math.sin(angle)
        out[i] = vec[i] * c - vec[i + half] * s
        out[i + half] = vec[i + half] * c + vec[i] * s
    return out


def reference_attention(q, k, v, *, causal=False, sm_scale=None, soft_cap=0.0, window_left=-1,
                        rope=False, rope_theta=1e4, rope_scale=1.0, rope_offset=0,
                        custom_mask=None):
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    qo_len, hq, d = q.shape
    kv_len, hkv, _ = k.shape
    assert hq % hkv == 0 and kv_len >= qo_len
    group = hq // hkv
    scale = sm_scale if sm_scale else 1.0 / math.sqrt(d)
    o = np.zeros((qo_len, hq, d))
    lse = np.full((qo_len, hq), -np.inf)
    for i in range(qo_len):
        p = kv_len - qo_len + i
        lo = max(0, p - window_left) if window_left is not None and window_left >= 0 else 0
        hi = p if causal else kv_len - 1
        keys = [j for j in range(kv_len) if lo <= j <= hi and
                (custom_mask is None or bool(custom_mask[i][j]))]
        for h in range(hq):
            kh = h // group
            qv = q[i, h]
            if rope:
                qv = rope_rotate(qv, p + rope_offset, rope_theta, rope_scale)
            if not keys:
                continue
            logits = []
            for j in keys:
                kv_ = k[j, kh]
                if rope:
                    kv_ = rope_rotate(kv_, j + rope_offset, rope_theta, rope_scale)
                s = float(np.dot(qv, kv_)) * scale
                if soft_cap and soft_cap > 0:
                    s = soft_cap * math.tanh(s / soft_cap)
                logits.append(s)
            logits = np.array(logits)
            m = logits.max()
            w = np.exp(logits - m)
            o[i, h] = (w[:, None] * v[keys, kh]).sum(axis=0) / w.sum()
            lse[i, h] = m + math.log(w.sum())
    return o, lse


def reference_batch(q, qo_indptr, ks, vs, rope_offsets=None, custom_masks=None, **opts):
    """q [qo_indptr[-1], Hq, D]; ks[b], vs[b] [kv_len_b, Hkv, D]; custom_masks: None or one
    [qo_len_b, kv_len_b] bool array per request -> (o, lse) stacked like q."""
    os_, ls_ = [], []
    for b in range(len(ks)):
        off = 0 if rope_offsets is None else int(rope_offsets[b])
        mask = None if custom_masks is None else custom_masks[b]
        o, l = reference_attention(q[qo_indptr[b]:qo_indptr[b + 1]], ks[b], vs[b],
                                   rope_offset=off, custom_mask=mask, **opts)
        os_.append(o)
        ls_.append(l)
    return np.concatenate(os_), np.concatenate(ls_)


def tree_parents(rng, n):
    """A random tree of n nodes in topological order: node 0 the root, parent(i) < i."""
    return [-1] + [int(rng.integers(0, i)) for i in range(1, n)]


def tree_mask(parents, prefix):
    """Speculative decoding's tree verification mask, [n, prefix + n] bool for n = len(parents)
    nodes after a prefix: row i sees the prefix and prefix + j for j = i or an ancestor of i."""
    n = len(parents)
    m = np.zeros((n, prefix + n), bool)
    m[:, :prefix] = True
    for i in range(n):
        j = i
        while j >= 0:
            m[i, prefix + j] = True
            j = parents[j]
    return m
