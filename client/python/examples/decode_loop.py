#!/usr/bin/env python3
"""A decode loop over a toy random "model" whose attention runs in attnd.

The model: `num_layers` layers, each with random projections Wq, Wk, Wv, Wo of a hidden vector
(numpy, float32). A batch of sequences is prefilled with their prompts, then decoded token by
token; every layer's attention (with RoPE) is done by the daemon through BatchPrefillWrapper (the
prompts) and attnd.DecodeBatch (the decode steps: one plan that lives across steps and changes by
page-table deltas) over a paged KV-cache pool. Each attention output is checked against
attnd.reference (float64 numpy), and so is the final hidden state of every step.

    build/bin/attnd --listen=unix:///tmp/attnd.sock --backend=cpu &   # from the repository root
    python client/python/examples/decode_loop.py --target unix:///tmp/attnd.sock
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import attnd
from attnd import reference


class ToyModel:
    """hidden [tokens, hidden] -> (RMS norm) -> q [tokens, Hq, D], k/v [tokens, Hkv, D];
    attention output o [tokens, Hq, D] -> residual update of hidden."""

    def __init__(self, num_layers, hidden, num_qo_heads, num_kv_heads, head_dim, seed=0):
        rng = np.random.default_rng(seed)
        s = np.float32(1.0 / np.sqrt(hidden))
        self.layers = []
        for _ in range(num_layers):
            self.layers.append(dict(
                wq=rng.standard_normal((hidden, num_qo_heads * head_dim)).astype(np.float32) * s,
                wk=rng.standard_normal((hidden, num_kv_heads * head_dim)).astype(np.float32) * s,
                wv=rng.standard_normal((hidden, num_kv_heads * head_dim)).astype(np.float32) * s,
                wo=rng.standard_normal((num_qo_heads * head_dim, hidden)).astype(np.float32) * s))
        self.hq, self.hkv, self.d = num_qo_heads, num_kv_heads, head_dim

    def qkv(self, layer, h):
        w = self.layers[layer]
        n = h.shape[0]
        h = h / np.sqrt((h * h).mean(axis=-1, keepdims=True) + 1e-6)  # RMS norm, as real models
        return ((h @ w["wq"]).reshape(n, self.hq, self.d), (h @ w["wk"]).reshape(n, self.hkv, self.d),
                (h @ w["wv"]).reshape(n, self.hkv, self.d))

    def out(self, layer, h, o):
        return h + (o.reshape(h.shape[0], -1).astype(np.float32) @ self.layers[layer]["wo"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None, help="daemon address (default $ATTND_TARGET or unix:///tmp/attnd.sock)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--kv-dtype", default="float32", choices=["float32", "float16"])
    args = ap.parse_args()

    hq, hkv, d, hidden = 8, 2, 64, 128
    model = ToyModel(args.layers, hidden, hq, hkv, d)
    rng = np.random.default_rng(1)
    prompts = [int(n) for n in rng.integers(5, 40, size=args.batch)]
    rope = dict(pos_encoding="rope_llama", rope_theta=10000.0)
    tol = 2e-4 if args.kv_dtype == "float32" else 5e-3

    with attnd.Client(args.target) as client:
        info = client.server_info()
        print(f"attnd {info.version} backend={info.backend} device={info.device!r}")
        with client.session("decode-loop") as sess:
            pool = sess.create_pool(f"decode-loop-{int(time.time() * 1e3) % 10**9}",
                                    num_layers=args.layers, num_kv_heads=hkv, head_dim=d,
                                    page_size=args.page_size, kv_dtype=args.kv_dtype,
                                    num_pages=args.batch * (64 // args.page_size + 4))
            print(pool)
            pages = [[] for _ in prompts]
            lens = [0] * len(prompts)
            # float64 copies of every layer's cache, for the reference (as stored: kv dtype)
            cache_k = [[np.zeros((0, hkv, d)) for _ in prompts] for _ in range(args.layers)]
            cache_v = [[np.zeros((0, hkv, d)) for _ in prompts] for _ in range(args.layers)]
            store = np.float16 if args.kv_dtype == "float16" else np.float32

            def grow(new):
                for b, n in enumerate(new):
                    need = pool.pages_for(lens[b] + n) - len(pages[b])
                    if need > 0:
                        pages[b] += pool.allocate(need)
                    lens[b] += n
                indptr, indices, last = [0], [], []
                for b in range(len(prompts)):
                    used = pool.pages_for(lens[b])
                    indices += pages[b][:used]
                    indptr.append(len(indices))
                    last.append(lens[b] - (used - 1) * pool.page_size)
                return indptr, indices, last

            def layer_pass(wrapper, h, qo_indptr, causal):
                worst = 0.0
                for layer in range(args.layers):
                    q, k, v = model.qkv(layer, h)
                    o = wrapper.run(q, layer, k=k, v=v)
                    for b in range(len(prompts)):
                        lo, hi = qo_indptr[b], qo_indptr[b + 1]
                        cache_k[layer][b] = np.concatenate([cache_k[layer][b], k[lo:hi].astype(store)])
                        cache_v[layer][b] = np.concatenate([cache_v[layer][b], v[lo:hi].astype(store)])
                    ref, _ = reference.batch_attention(q, qo_indptr, cache_k[layer], cache_v[layer],
                                                       causal=causal, rope=True, rope_theta=1e4)
                    worst = max(worst, float(np.abs(o - ref).max()))
                    h = model.out(layer, h, o)
                return h, worst

            # Prefill: all prompts in one batch.
            qo_indptr = np.concatenate([[0], np.cumsum(prompts)]).astype(int)
            table = grow(prompts)
            prefill = attnd.BatchPrefillWrapper(pool).plan(*table, qo_indptr, num_qo_heads=hq,
                                                           causal=True, **rope)
            h = rng.standard_normal((qo_indptr[-1], hidden)).astype(np.float32)
            t0 = time.perf_counter()
            h, err = layer_pass(prefill, h, qo_indptr, causal=True)
            prefill.delete()
            print(f"prefill {sum(prompts)} tokens ({prompts}): {1e3 * (time.perf_counter() - t0):.1f} ms, "
                  f"max |o - ref| = {err:.2e}")
            ok = err < tol

            # Decode: the last hidden state of each sequence is the next token's input.
            last_rows = qo_indptr[1:] - 1
            x = h[last_rows]
            # The decode batch is one plan across steps (attnd.DecodeBatch: each step sends only
            # the page-table changes, UpdatePlan deltas; it takes a new page at page boundaries).
            decode = attnd.DecodeBatch(pool, num_qo_heads=hq, **rope)
            for b in range(len(prompts)):
                decode.join(pages[b][:pool.pages_for(lens[b])], lens[b], owns_pages=False)
            ones = np.arange(len(prompts) + 1)
            for step in range(args.steps):
                decode.step()
                lens = [decode.kv_len(handle) for handle in decode.handles]
                t0 = time.perf_counter()
                x, err = layer_pass(decode.wrapper, x, ones, causal=False)
                ok &= err < tol
                print(f"decode step {step}: lens {lens}, {1e3 * (time.perf_counter() - t0):.1f} ms, "
                      f"max |o - ref| = {err:.2e}")
            decode.close()
            pool.delete()
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
