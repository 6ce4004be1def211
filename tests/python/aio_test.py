"""The asyncio client (attnd.aio) against a real daemon: health, pools, prefill + decode vs the
reference, typed errors, concurrent sessions on one event loop."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

import attnd
import attnd.aio
from attention_reference import reference_batch


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_async_prefill_and_decode(daemon, unique_name, stream):
    async def main():
        rng = np.random.default_rng(21)
        async with attnd.aio.AsyncClient(daemon.target, timeout=60) as client:
            assert await client.health() == "SERVING"
            assert (await client.server_info()).backend == "cpu"
            async with client.session("aio", stream=stream) as sess:
                pool = await sess.create_pool(unique_name, num_layers=1, num_kv_heads=2,
                                              head_dim=64, page_size=16, kv_dtype="float32",
                                              num_pages=8)
                pages = await pool.allocate(2)
                assert pool.free_pages == 6
                # prefill 20 tokens (causal), then decode one more
                pre = attnd.aio.AsyncBatchPrefillWrapper(pool)
                await pre.plan([0, 2], pages, [4], [0, 20], num_qo_heads=4, causal=True)
                q = rng.standard_normal((20, 4, 64)).astype(np.float32)
                k = rng.standard_normal((20, 2, 64)).astype(np.float32)
                v = rng.standard_normal((20, 2, 64)).astype(np.float32)
                o, lse = await pre.run(q, 0, k=k, v=v, return_lse=True)
                ref_o, ref_lse = reference_batch(q, [0, 20], [k], [v], causal=True)
                np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
                np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=1e-4)
                await pre.delete()

                dec = attnd.aio.AsyncBatchDecodeWrapper(pool)
                await dec.plan([0, 2], pages, [5], num_qo_heads=4)
                q1 = rng.standard_normal((1, 4, 64)).astype(np.float32)
                k1 = rng.standard_normal((1, 2, 64)).astype(np.float32)
                v1 = rng.standard_normal((1, 2, 64)).astype(np.float32)
                o1 = await dec.run(q1, 0, k=k1, v=v1)
                ref1, _ = reference_batch(q1, [0, 1], [np.concatenate([k, k1])],
                                          [np.concatenate([v, v1])])
                np.testing.assert_allclose(o1, ref1, atol=2e-5, rtol=1e-4)
                await dec.delete()
                assert await pool.free(pages) == 8

    run(main())


def test_async_errors(daemon, unique_name):
    async def main():
        async with attnd.aio.AsyncClient(daemon.target) as client:
            async with client.session() as sess:
                with pytest.raises(attnd.NotFound) as e:
                    await sess.describe_pool("nope")
                assert e.value.code == grpc.StatusCode.NOT_FOUND
                pool = await sess.create_pool(unique_name, num_layers=1, num_kv_heads=1,
                                              head_dim=64, page_size=16, num_pages=2)
                with pytest.raises(attnd.ResourceExhausted):
                    await pool.allocate(3)
                with pytest.raises(attnd.InvalidArgument):
                    await attnd.aio.AsyncBatchDecodeWrapper(pool).plan(
                        [0, 1], await pool.allocate(1), [0], num_qo_heads=1)
                # the stream still serves after errors
                assert (await pool.describe()).num_pages == 2
                # (while the pool exists: it is released with its last session)
                unary = await client.session(stream=False)
                with pytest.raises(attnd.AlreadyExists):
                    await unary.create_pool(unique_name, num_layers=1, num_kv_heads=1,
                                            head_dim=64, page_size=16, num_pages=1)
                await unary.close()
        bad = attnd.aio.AsyncClient(daemon.target + ".missing", retries=1, backoff=0.01)
        with pytest.raises(attnd.Unavailable):
            await bad.server_info()
        await bad.close()

    run(main())


def test_async_concurrent_sessions(daemon, unique_name):
    """Several stream sessions on one loop, each with its own pool, run at the same time."""

    async def worker(client, idx):
        rng = np.random.default_rng(idx)
        async with client.session(f"w{idx}") as sess:
            pool = await sess.create_pool(f"{unique_name}_{idx}", num_layers=1, num_kv_heads=1,
                                          head_dim=64, page_size=16, kv_dtype="float32",
                                          num_pages=2)
            pages = await pool.allocate(1)
            dec = attnd.aio.AsyncBatchDecodeWrapper(pool)
            ks, vs = [], []
            for n in range(1, 6):
                await dec.plan([0, 1], pages, [n], num_qo_heads=2)
                q = rng.standard_normal((1, 2, 64)).astype(np.float32)
                ks.append(rng.standard_normal((1, 1, 64)).astype(np.float32))
                vs.append(rng.standard_normal((1, 1, 64)).astype(np.float32))
                o = await dec.run(q, 0, k=ks[-1], v=vs[-1])
                ref, _ = reference_batch(q, [0, 1], [np.concatenate(ks)], [np.concatenate(vs)])
                np.testing.assert_allclose(o, ref, atol=2e-5, rtol=1e-4)
            return idx

    async def main():
        async with attnd.aio.AsyncClient(daemon.target, timeout=60) as client:
            done = await asyncio.gather(*(worker(client, i) for i in range(4)))
            assert sorted(done) == [0, 1, 2, 3]

    run(main())
