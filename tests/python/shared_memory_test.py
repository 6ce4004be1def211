"""Zero-copy numpy through POSIX shared memory (the CPU daemon reads and writes the client's
buffer): inputs and outputs as buffer slices, checked against the reference and against the
inline path; bad slices give typed errors."""

from __future__ import annotations

import numpy as np
import pytest

import attnd
import attnd.aio
from attention_reference import reference_batch


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_shared_memory_decode(client, unique_name, stream):
    assert client.server_info().shared_memory
    rng = np.random.default_rng(9)
    B, hq, hkv, d = 3, 4, 2, 64
    with client.session(stream=stream) as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=hkv, head_dim=d,
                                page_size=16, kv_dtype="float16", num_pages=8)
        pages = pool.allocate(3)
        buf = sess.shared_buffer(1 << 20)
        assert buf.buffer_id and buf.fd >= 0
        # a sealed memfd: nobody can shrink it under the daemon
        import fcntl, os
        assert fcntl.fcntl(buf.fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            os.ftruncate(buf.fd, 0)
        # staging layout in the buffer: q | k | v | o | lse
        q = buf.array((B, hq, d), np.float16)
        k = buf.array((B, hkv, d), np.float16, offset=q.nbytes)
        v = buf.array((B, hkv, d), np.float16, offset=q.nbytes + k.nbytes)
        o = buf.array((B, hq, d), np.float16, offset=q.nbytes + 2 * k.nbytes)
        lse = buf.array((B, hq), np.float32, offset=2 * q.nbytes + 2 * k.nbytes)
        dec = attnd.BatchDecodeWrapper(pool)
        ks = [np.zeros((0, hkv, d)) for _ in range(B)]
        vs = [np.zeros((0, hkv, d)) for _ in range(B)]
        for step in range(3):
            dec.plan([0, 1, 2, 3], pages, [step + 1] * B, num_qo_heads=hq)
            q[...] = rng.standard_normal(q.shape)
            k[...] = rng.standard_normal(k.shape)
            v[...] = rng.standard_normal(v.shape)
            o.fill(np.nan)
            lse.fill(np.nan)
            got_o, got_lse = dec.run(q, 0, k=k, v=v, out=o, lse_out=lse, return_lse=True)
            assert got_o is o and got_lse is lse
            for b in range(B):
                ks[b] = np.concatenate([ks[b], k[b:b + 1].astype(np.float64)])
                vs[b] = np.concatenate([vs[b], v[b:b + 1].astype(np.float64)])
            ref_o, ref_lse = reference_batch(q.astype(np.float64), np.arange(B + 1), ks, vs)
            np.testing.assert_allclose(o.astype(np.float64), ref_o, atol=3e-3, rtol=3e-3)
            np.testing.assert_allclose(lse, ref_lse, atol=2e-3, rtol=2e-3)
            # the same inputs inline give bit-identical outputs
            inline_o = dec.run(np.array(q), 0)
            assert inline_o.dtype == np.float16 and np.array_equal(inline_o, o)
        # an output outside any shared buffer is refused on the client
        with pytest.raises(ValueError):
            dec.run(q, 0, out=np.empty_like(o))
        sess.release_shared_buffer(buf)
        assert not sess.shared_buffers


def test_shared_memory_bad_slice_is_out_of_range(client, unique_name):
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64,
                                page_size=16, kv_dtype="float32", num_pages=2)
        buf = sess.shared_buffer(4096)
        dec = attnd.BatchDecodeWrapper(pool).plan([0, 1], pool.allocate(1), [1], num_qo_heads=1)
        from attnd.v1 import attnd_pb2 as pb
        req = pb.RunRequest(plan_id=dec.plan_id, layer=0)
        req.q.dtype = pb.DTYPE_FLOAT32
        req.q.shape.extend([1, 1, 64])
        req.q.buffer.buffer_id = buf.buffer_id
        req.q.buffer.offset_bytes = 4096 - 128  # 256 bytes needed, 128 left
        with pytest.raises(attnd.OutOfRange) as e:
            sess.call("run", req)
        assert "exceeds the size" in e.value.message
        with pytest.raises(attnd.NotFound):
            sess.unregister_buffer("no-such-buffer")


def test_async_shared_memory(daemon, unique_name):
    import asyncio

    async def main():
        async with attnd.aio.AsyncClient(daemon.target) as client:
            async with client.session() as sess:
                pool = await sess.create_pool(unique_name, num_layers=1, num_kv_heads=1,
                                              head_dim=64, page_size=16, kv_dtype="float32",
                                              num_pages=2)
                pages = await pool.allocate(1)
                buf = await sess.shared_buffer(8192)
                q = buf.array((1, 2, 64), np.float32)
                o = buf.array((1, 2, 64), np.float32, offset=q.nbytes)
                q[...] = 1.0
                dec = attnd.aio.AsyncBatchDecodeWrapper(pool)
                await dec.plan([0, 1], pages, [1], num_qo_heads=2)
                kv = np.full((1, 1, 64), 0.25, np.float32)
                got = await dec.run(q, 0, k=kv, v=kv * 2, out=o)
                assert got is o
                np.testing.assert_allclose(o, 0.5)  # one key: o = v
            assert not sess.shared_buffers  # released with the session

    asyncio.run(main())
