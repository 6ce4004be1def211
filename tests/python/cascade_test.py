"""Cascade (shared-prefix) plans from Python (CreatePlanRequest.cascade_levels): the
``cascade_levels=`` argument of Session.create_plan, BatchDecodeWrapper.plan and
BatchPrefillWrapper.plan (dicts or 4-tuples), against the float64 reference over each request's
concatenated keys (shared prefix pages, then its own), with the prefix forked to another session;
bad levels refused with the field named."""

from __future__ import annotations

import numpy as np
import pytest

import attnd
from attention_reference import reference_batch

HQ, HKV, D, PAGE = 8, 2, 64, 4


def _fill(sess, pool, pages, rng):
    """Writes random K/V (float32 pool) into every token of `pages`; returns (k, v)."""
    n = len(pages) * PAGE
    k = rng.standard_normal((n, HKV, D)).astype(np.float32)
    v = rng.standard_normal((n, HKV, D)).astype(np.float32)
    w = attnd.BatchPrefillWrapper(pool)
    w.plan([0, len(pages)], pages, [PAGE], [0, n], num_qo_heads=HQ)
    w.run(np.zeros((n, HQ, D), np.float32), 0, k=k, v=v)
    return k, v


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_cascade_decode_and_prefill_match_the_reference(client, unique_name, stream):
    rng = np.random.default_rng(71)
    with client.session(stream=stream) as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=64)
        prefix, sub_a, sub_b = pool.allocate(3), pool.allocate(2), pool.allocate(1)
        own = [pool.allocate(2) for _ in range(3)]
        kv = {id(p): _fill(sess, pool, p, rng) for p in [prefix, sub_a, sub_b] + own}
        own_last = [3, 4, 1]

        def keys(b, subs):
            parts = [kv[id(prefix)], kv[id(subs[b])]]
            ko, vo = kv[id(own[b])]
            n = PAGE + own_last[b]
            return (np.concatenate([p[0] for p in parts] + [ko[:n]]),
                    np.concatenate([p[1] for p in parts] + [vo[:n]]))

        subs = [sub_a, sub_a, sub_b]  # level 1: requests 0 and 1 share sub_a, request 2 sub_b
        indptr = np.array([0, 2, 4, 6], np.int32)
        indices = np.concatenate(own).astype(np.int32)
        for kind in ("decode", "prefill"):
            qo = np.array([0, 1, 2, 3] if kind == "decode" else [0, 3, 4, 6], np.int32)
            levels = [
                dict(qo_indptr=[0, qo[-1]], kv_indptr=[0, 3], kv_indices=prefix,
                     kv_last_page_len=[PAGE]),
                (np.array([0, qo[2], qo[3]]), [0, 2, 3], sub_a + sub_b, [PAGE, PAGE]),
            ]
            q = rng.standard_normal((qo[-1], HQ, D)).astype(np.float32)
            if kind == "decode":
                w = attnd.BatchDecodeWrapper(pool)
                w.plan(indptr, indices, own_last, num_qo_heads=HQ, logits_soft_cap=10.0,
                       cascade_levels=levels)
            else:
                w = attnd.BatchPrefillWrapper(pool)
                w.plan(indptr, indices, own_last, qo, num_qo_heads=HQ, causal=True,
                       logits_soft_cap=10.0, cascade_levels=levels)
            assert w.qo_tokens == qo[-1]
            o, lse = w.run(q, 0, return_lse=True)
            ks, vs = zip(*(keys(b, subs) for b in range(3)))
            ref_o, ref_lse = reference_batch(q, qo, list(ks), list(vs),
                                             causal=(kind == "prefill"), soft_cap=10.0)
            np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse, ref_lse, atol=1e-4, rtol=1e-5)

        # The low-level call takes the same levels; the prefix forked to another session works
        # there too, while a session holding none of it is refused by name.
        with client.session(stream=stream) as other:
            mine = other.attach_pool(unique_name)
            sess.fork_pages(pool.pool_id, prefix, target_grant=mine.fork_grant)
            own_o = mine.allocate(1)
            resp = other.create_plan(pool.pool_id, "decode", HQ, [0, 1], own_o, [1],
                                     cascade_levels=[([0, 1], [0, 3], prefix, [PAGE])])
            assert resp.qo_tokens == 1
            with client.session(stream=stream) as third:
                pages = third.attach_pool(unique_name).allocate(1)
                with pytest.raises(attnd.AttndError) as err:
                    third.create_plan(pool.pool_id, "decode", HQ, [0, 1], pages, [1],
                                      cascade_levels=[([0, 1], [0, 3], prefix, [PAGE])])
                assert err.value.code.name == "PERMISSION_DENIED"
                assert f"cascade_levels[0].kv_indices[0]={prefix[0]}" in str(err.value)


def test_bad_levels_name_the_field(client, unique_name):
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=8)
        prefix, own = pool.allocate(1), pool.allocate(1)
        with pytest.raises(attnd.AttndError) as err:
            sess.create_plan(pool.pool_id, "decode", HQ, [0, 1], own, [1],
                             cascade_levels=[([0, 1], [0, 1], prefix, [PAGE + 1])])
        assert err.value.code.name == "INVALID_ARGUMENT"
        assert "cascade_levels[0].kv_last_page_len[0]=5 is outside 1..page_size (4)" in str(
            err.value)
        with pytest.raises(ValueError, match=r"cascade_levels\[0\]: unknown keys \['kv'\]"):
            sess.create_plan(pool.pool_id, "decode", HQ, [0, 1], own, [1],
                             cascade_levels=[dict(kv=[0])])
        with pytest.raises(attnd.AttndError) as err:
            w = attnd.BatchDecodeWrapper(pool)
            w.plan([0, 1], own, [1], num_qo_heads=HQ,
                   cascade_levels=[([0, 1], [0, 1], prefix, [PAGE])])
            w.run(np.zeros((1, HQ, D), np.float32), 0, pos_encoding="rope_llama")
        assert "options.pos_encoding" in str(err.value)
