#!/usr/bin/env python3
"""Two processes, one KV-cache pool: the second attaches to the pool by name and decodes on top of
a prefix the first one prefilled (shared pages, no copy).

  process A (this script): creates the pool, prefills a 32-token prompt (2 full pages).
  process B (spawned):     opens its own session, attaches to the pool by name, sends A its
                           session id.
  A: forks (ForkPages) the prompt's pages to B's session and sends B the page ids.
  B: allocates one page of its own, decodes a token over prefix + own page, checks the result
     against a numpy reference, reports back.

    build/bin/attnd --listen=unix:///tmp/attnd.sock --backend=cpu &   # from the repository root
    python client/python/examples/attach_pool.py --target unix:///tmp/attnd.sock
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys

import numpy as np

import attnd
from attnd import reference

HQ, HKV, D, PAGE = 4, 2, 64, 16
PROMPT = 32  # two full pages


def process_b(target: str, pool_name: str, conn) -> None:
    """The second process: attach by name, decode on the shared prefix."""
    with attnd.Client(target) as client, client.session("process-b") as sess:
        pool = sess.attach_pool(pool_name)
        # The fork grant lets A give this session page references, and nothing else (a session
        # id would be no credential; only B's own connection can use B's session).
        conn.send(pool.fork_grant)
        shared_pages, k_prefix, v_prefix = conn.recv()
        # The prompt fills whole pages, so the new token goes into a page of B's own (pages
        # shared with another session are read-only for appends).
        own = pool.allocate(1)
        rng = np.random.default_rng(os.getpid())
        k_new = rng.standard_normal((1, HKV, D)).astype(np.float32)
        v_new = rng.standard_normal((1, HKV, D)).astype(np.float32)
        q = rng.standard_normal((1, HQ, D)).astype(np.float32)
        kv_len = PROMPT
        dec = attnd.BatchDecodeWrapper(pool).plan(
            [0, len(shared_pages) + 1], shared_pages + own, [1], num_qo_heads=HQ)
        o, lse = dec.run(q, 0, k=k_new, v=v_new, return_lse=True)
        ref_o, ref_lse = reference.attention(q, np.concatenate([k_prefix, k_new]),
                                             np.concatenate([v_prefix, v_new]))
        err = max(float(np.abs(o - ref_o).max()), float(np.abs(lse - ref_lse).max()))
        conn.send((kv_len + 1, err, pool.describe().attached_sessions))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None)
    args = ap.parse_args()
    target = args.target or os.environ.get("ATTND_TARGET", "unix:///tmp/attnd.sock")
    pool_name = f"shared-prefix-{os.getpid()}"
    rng = np.random.default_rng(0)

    with attnd.Client(target) as client, client.session("process-a") as sess:
        pool = sess.create_pool(pool_name, num_layers=1, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=16)
        pages = pool.allocate(pool.pages_for(PROMPT))
        k = rng.standard_normal((PROMPT, HKV, D)).astype(np.float32)
        v = rng.standard_normal((PROMPT, HKV, D)).astype(np.float32)
        q = rng.standard_normal((PROMPT, HQ, D)).astype(np.float32)
        last = PROMPT - (len(pages) - 1) * PAGE
        prefill = attnd.BatchPrefillWrapper(pool).plan([0, len(pages)], pages, [last], [0, PROMPT],
                                                       num_qo_heads=HQ, causal=True)
        prefill.run(q, 0, k=k, v=v)
        prefill.delete()
        print(f"A: pool {pool.name!r} ({pool.pool_id}), prompt of {PROMPT} tokens in pages {pages}")

        ctx = mp.get_context("spawn")  # never fork a process that has gRPC channels open
        conn_a, conn_b = ctx.Pipe()
        child = ctx.Process(target=process_b, args=(target, pool_name, conn_b))
        child.start()
        def recv():  # never wait forever on a child that died
            while not conn_a.poll(0.2):
                if not child.is_alive():
                    raise RuntimeError(f"process B exited with {child.exitcode}")
            return conn_a.recv()

        b_grant = recv()
        refcounts = pool.fork(pages, b_grant)
        print(f"A: forked pages to process B's session (through its fork grant): refcounts {refcounts}")
        conn_a.send((pages, k, v))
        kv_len, err, attached = recv()
        child.join()
        print(f"B: decoded token {kv_len} over the shared prefix, max |o - ref| = {err:.2e}, "
              f"{attached} sessions attached")
        print(f"A: after B exited, pool has {pool.describe().free_pages} free pages "
              f"(B's references were released with its session)")
        ok = err < 1e-4 and child.exitcode == 0
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
