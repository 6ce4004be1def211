"""Test-side bookkeeping of a batch of sequences in an attnd pool: pages, lengths, and a float64
mirror of every K/V row written (rounded to the pool's dtype, as the daemon stores it)."""

from __future__ import annotations

from typing import List

import numpy as np

import attnd


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values x takes once stored as `dtype`."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.astype(np.float64)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        return attnd.bfloat16_to_float32(attnd.float32_to_bfloat16(x)).astype(np.float64)
    raise ValueError(dtype)


def wire(x: np.ndarray, dtype: str) -> np.ndarray:
    """x as the array to send for `dtype` (bfloat16 -> uint16 bits)."""
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return np.asarray(x, dtype=np.float16)
    return attnd.float32_to_bfloat16(x)


def from_wire(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return attnd.bfloat16_to_float32(x).astype(np.float64)
    return np.asarray(x, dtype=np.float64)


class PagedBatch:
    def __init__(self, pool, num_requests: int):
        self.pool = pool
        self.pages: List[List[int]] = [[] for _ in range(num_requests)]
        self.lens = [0] * num_requests
        L, H, D = pool.num_layers, pool.num_kv_heads, pool.head_dim
        self.k = [[np.zeros((0, H, D)) for _ in range(num_requests)] for _ in range(L)]
        self.v = [[np.zeros((0, H, D)) for _ in range(num_requests)] for _ in range(L)]

    @property
    def batch(self) -> int:
        return len(self.lens)

    def grow(self, new_tokens: List[int]) -> None:
        """Makes room for new_tokens[b] more tokens in request b (allocating pages)."""
        P = self.pool.page_size
        for b, n in enumerate(new_tokens):
            need = -(-(self.lens[b] + n) // P) - len(self.pages[b])
            if need > 0:
                self.pages[b] += self.pool.allocate(need)
            self.lens[b] += n

    def table(self):
        """(kv_indptr, kv_indices, kv_last_page_len) of the current lengths."""
        P = self.pool.page_size
        indptr = [0]
        indices: List[int] = []
        last = []
        for b in range(self.batch):
            n_pages = -(-self.lens[b] // P)
            indices += self.pages[b][:n_pages]
            indptr.append(len(indices))
            last.append(self.lens[b] - (n_pages - 1) * P)
        return np.array(indptr, np.int32), np.array(indices, np.int32), np.array(last, np.int32)

    def record(self, layer: int, qo_indptr, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Mirrors rows appended for `layer` (k_new/v_new as sent, [qo_tokens, Hkv, D])."""
        dt = self.pool.kv_dtype
        for b in range(self.batch):
            lo, hi = int(qo_indptr[b]), int(qo_indptr[b + 1])
            self.k[layer][b] = np.concatenate([self.k[layer][b], round_to(k_new[lo:hi], dt)])
            self.v[layer][b] = np.concatenate([self.v[layer][b], round_to(v_new[lo:hi], dt)])
            assert self.k[layer][b].shape[0] <= self.lens[b]
