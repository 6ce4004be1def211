"""attnd.DecodeBatch (client/python/src/attnd/steps.py): an engine's decode batch as one plan that
lives across steps (UpdatePlan deltas). Over many steps -- every request growing by one token
(into a new page at page boundaries), one leaving, one joining -- each layer's run equals, bit
for bit on the CPU backend, a plan created from scratch with the batch's table; a refused step
changes nothing (its pages given back) and the batch goes on; close() frees the pages it owns."""

from __future__ import annotations

import numpy as np
import pytest

import attnd

HQ, HKV, D, PAGE, LAYERS = 8, 2, 32, 4, 2


def _prefill(pool, pages, kv_len, rng):
    """Random K/V in the first kv_len tokens of `pages`, every layer."""
    w = attnd.BatchPrefillWrapper(pool)
    w.plan([0, len(pages)], pages, [kv_len - (len(pages) - 1) * PAGE], [0, kv_len],
           num_qo_heads=HQ)
    for layer in range(LAYERS):
        w.run(np.zeros((kv_len, HQ, D), np.float32), layer,
              k=rng.standard_normal((kv_len, HKV, D)).astype(np.float32),
              v=rng.standard_normal((kv_len, HKV, D)).astype(np.float32))
    w.delete()


def _prefilled(pool, kv_len, rng):
    pages = pool.allocate((kv_len + PAGE - 1) // PAGE)
    _prefill(pool, pages, kv_len, rng)
    return pages


def _fresh_run(pool, batch, layer, q):
    """The same attention through a plan made from scratch from the batch's table."""
    tables = [batch.pages(h) for h in batch.handles]
    lens = [batch.kv_len(h) for h in batch.handles]
    indptr = np.cumsum([0] + [len(t) for t in tables])
    last = [n - (len(t) - 1) * PAGE for n, t in zip(lens, tables)]
    w = attnd.BatchDecodeWrapper(pool)
    w.plan(indptr, [p for t in tables for p in t], last, num_qo_heads=HQ,
           pos_encoding="rope_llama")
    o = w.run(q, layer)
    w.delete()
    return o


def test_a_batch_lives_across_steps_and_matches_fresh_plans(client, unique_name):
    rng = np.random.default_rng(3)
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=LAYERS, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=96)
        free_at_start = pool.describe().free_pages
        batch = attnd.DecodeBatch(pool, num_qo_heads=HQ, pos_encoding="rope_llama")
        a = batch.join(_prefilled(pool, 3, rng), 3)
        b = batch.join(_prefilled(pool, 8, rng), 8)  # full pages: grows into a new page at once
        c = batch.join(_prefilled(pool, 5, rng), 5)
        late = None
        for step in range(12):
            if step == 5:
                batch.leave(b)
            if step == 7:
                late = batch.join(_prefilled(pool, 6, rng), 6)
            batch.step()
            assert batch.wrapper.batch_size == len(batch.handles)
            n = len(batch.handles)
            for layer in range(LAYERS):
                q = rng.standard_normal((n, HQ, D)).astype(np.float32)
                k = rng.standard_normal((n, HKV, D)).astype(np.float32)
                v = rng.standard_normal((n, HKV, D)).astype(np.float32)
                o = batch.run(layer, q, k, v)
                np.testing.assert_array_equal(o, _fresh_run(pool, batch, layer, q))
        assert batch.handles == [a, c, late]
        assert batch.kv_len(a) == 3 + 12 and batch.kv_len(late) == 6 + 5
        assert len(batch.pages(a)) == (3 + 12 + PAGE - 1) // PAGE
        plan_id = batch.wrapper.plan_id
        assert batch.steps == 12
        batch.close()
        assert batch.wrapper.plan_id is None
        with pytest.raises(attnd.AttndError):
            sess.delete_plan(plan_id)
        assert pool.describe().free_pages == free_at_start


def test_a_refused_step_changes_nothing(client, unique_name):
    rng = np.random.default_rng(4)
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=LAYERS, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=32)
        batch = attnd.DecodeBatch(pool, num_qo_heads=HQ)
        a = batch.join(_prefilled(pool, 4, rng), 4)  # its next token needs a new page
        batch.step()
        before = (batch.handles, batch.pages(a), batch.kv_len(a), pool.describe().free_pages)
        bad = batch.join([31], 2, owns_pages=False)  # a page this session does not hold
        with pytest.raises(attnd.AttndError, match=r"deltas\[1\]\.join\.kv_indices\[0\]=31"):
            batch.step()
        assert (batch.handles, batch.pages(a), batch.kv_len(a),
                pool.describe().free_pages) == before
        batch.leave(bad)
        batch.step()  # goes on
        assert batch.kv_len(a) == 6
        n = len(batch.handles)
        q = rng.standard_normal((n, HQ, D)).astype(np.float32)
        o = batch.run(0, q, np.zeros((n, HKV, D), np.float32), np.ones((n, HKV, D), np.float32))
        assert np.isfinite(o).all()
        batch.close()


def test_join_checks_its_pages(client, unique_name):
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=8)
        batch = attnd.DecodeBatch(pool, num_qo_heads=HQ)
        with pytest.raises(ValueError, match=r"kv_len=9 needs 3 pages of 4 tokens, got 2"):
            batch.join([0, 1], 9)
        with pytest.raises(KeyError):
            batch.leave(7)
