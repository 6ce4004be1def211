"""Streamed page-table updates from Python (UpdatePlan; attnd.proto PlanDelta): Session.update_plan
and its asyncio twin change a decode plan by deltas (a request grows into its last page and into
a new page, one leaves, one joins), and the updated plan's run equals, bit for bit on the CPU
backend, the run of a plan created from scratch with the resulting table; a bad delta is refused
naming its field, and the plan runs as before."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attnd
import attnd.aio
from attnd import tensors
from attnd.v1 import attnd_pb2 as pb

HQ, HKV, D, PAGE = 8, 2, 64, 4


def _fill(sess, pool, pages, rng):
    """Random K/V (float32 pool) in every token of `pages`."""
    n = len(pages) * PAGE
    w = attnd.BatchPrefillWrapper(pool)
    w.plan([0, len(pages)], pages, [PAGE], [0, n], num_qo_heads=HQ)
    w.run(np.zeros((n, HQ, D), np.float32), 0,
          k=rng.standard_normal((n, HKV, D)).astype(np.float32),
          v=rng.standard_normal((n, HKV, D)).astype(np.float32))


def _run(sess, plan_id, q):
    req = pb.RunRequest(plan_id=plan_id, layer=0, q=tensors.numpy_to_tensor(q))
    return tensors.tensor_to_numpy(sess.call("run", req).o)


def _decode_plan(sess, pool, tables, last):
    indptr = np.cumsum([0] + [len(t) for t in tables]).astype(np.int32)
    indices = np.array([p for t in tables for p in t], np.int32)
    return sess.create_plan(pool.pool_id, "decode", HQ, indptr, indices, last).plan_id


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_updates_equal_a_fresh_plan(client, unique_name, stream):
    rng = np.random.default_rng(5)
    with client.session(stream=stream) as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=HKV, head_dim=D,
                                page_size=PAGE, kv_dtype="float32", num_pages=32)
        a, b, c, extra = pool.allocate(2), pool.allocate(1), pool.allocate(2), pool.allocate(1)
        for pages in (a, b, c, extra):
            _fill(sess, pool, pages, rng)
        plan = _decode_plan(sess, pool, [a, b], [2, 3])
        q2 = rng.standard_normal((2, HQ, D)).astype(np.float32)
        before = _run(sess, plan, q2)

        # Request 0 grows by 2 tokens (its last page's 2 free slots), then by 4 more into a new
        # page; request 1 leaves; a request with pages c joins.
        shape = sess.update_plan(plan, [{"grow": {"request": 0, "num_tokens": 2, "qo_len": 1}},
                                        {"leave": {"request": 1}},
                                        {"join": {"kv_indices": c, "kv_last_page_len": 3,
                                                  "qo_len": 1}}])
        assert (shape.batch_size, shape.qo_tokens, shape.kv_tokens) == (2, 2, 8 + 7)
        shape = sess.update_plan(plan, [pb.PlanDelta(grow=pb.PlanDelta.Grow(
            request=0, num_tokens=4, new_pages=extra, qo_len=1))])
        assert shape.kv_tokens == 12 + 7
        fresh = _decode_plan(sess, pool, [a + extra, c], [4, 3])
        np.testing.assert_array_equal(_run(sess, plan, q2), _run(sess, fresh, q2))

        # A page this session does not hold: refused, naming the delta's field; nothing changed.
        with pytest.raises(attnd.AttndError) as err:
            sess.update_plan(plan, [{"grow": {"request": 1, "num_tokens": 2, "new_pages": [31],
                                              "qo_len": 1}}])
        assert err.value.code.name == "PERMISSION_DENIED"
        assert "deltas[0].grow.new_pages[0]=31" in str(err.value)
        np.testing.assert_array_equal(_run(sess, plan, q2), _run(sess, fresh, q2))
        with pytest.raises(ValueError, match=r"deltas\[0\] must be a PlanDelta or a dict"):
            sess.update_plan(plan, [{"grow": {}, "leave": {}}])
        assert before.shape == (2, HQ, D)


def test_asyncio_update_plan(daemon, unique_name):
    async def body():
        async with attnd.aio.AsyncClient(daemon.target, timeout=60) as client:
            async with client.session("aio-update") as sess:
                pool = await sess.create_pool(unique_name, num_layers=1, num_kv_heads=HKV,
                                              head_dim=D, page_size=PAGE, kv_dtype="float32",
                                              num_pages=8)
                pages, _ = await sess.allocate_pages(pool.pool_id, 2)
                plan = await sess.create_plan(pool.pool_id, "decode", HQ, [0, 1], pages[:1], [1])
                shape = await sess.update_plan(plan.plan_id, [
                    {"join": {"kv_indices": pages[1:], "kv_last_page_len": 4, "qo_len": 1}}])
                assert (shape.batch_size, shape.kv_tokens) == (2, 5)

    asyncio.run(body())
