"""Merging attention states through the Python client (Session.merge_state, merge_states,
merge_state_in_place; asyncio too) against a float64 merge: every dtype, empty (-inf) and absent
states, the natural-log LSE that run(return_lse=True) returns, shared-memory slices, in place,
and bad input as typed errors naming the field."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

import attnd
import attnd.aio
from paged_helpers import from_wire, round_to, wire


def naive_merge(v, s):
    """float64 merge over axis 1: v [n, states, h, d], s [n, states, h] -> ([n, h, d], [n, h])."""
    v = np.asarray(v, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    n, _, h, d = v.shape
    out_v = np.zeros((n, h, d))
    out_s = np.full((n, h), -np.inf)
    if s.shape[1] == 0:
        return out_v, out_s
    m = s.max(axis=1)  # [n, h]
    finite = np.isfinite(m)
    safe_m = np.where(finite, m, 0.0)
    w = np.where(np.isfinite(s), np.exp(s - safe_m[:, None, :]), 0.0)  # [n, states, h]
    total = w.sum(axis=1)
    out_s = np.where(finite, safe_m + np.log(np.where(finite, total, 1.0)), -np.inf)
    wn = np.where(finite[:, None, :], w / np.where(finite, total, 1.0)[:, None, :], 0.0)
    out_v = np.einsum("nih,nihd->nhd", wn, np.where(np.isfinite(s)[..., None], v, 0.0))
    return out_v, out_s


TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_merge_state_and_merge_states(client, dtype, stream):
    rng = np.random.default_rng(21)
    n, h, d = 5, 3, 16
    va = round_to(rng.standard_normal((n, h, d)), dtype)
    vb = round_to(rng.standard_normal((n, h, d)), dtype)
    sa = rng.uniform(-20, 20, (n, h)).astype(np.float32)
    sb = rng.uniform(-20, 20, (n, h)).astype(np.float32)
    sa[0, 0] = -np.inf
    sa[1, 1] = sb[1, 1] = -np.inf
    sa[2, 2] = sb[2, 2] = 0.0
    ref_v, ref_s = naive_merge(np.stack([va, vb], 1), np.stack([sa, sb], 1))
    wire_dtype = "bfloat16" if dtype == "bfloat16" else None
    with client.session(stream=stream) as sess:
        v, s = sess.merge_state(wire(va, dtype), sa, wire(vb, dtype), sb, dtype=wire_dtype)
        assert v.shape == (n, h, d) and s.dtype == np.float32 and s.shape == (n, h)
        np.testing.assert_allclose(from_wire(v, dtype), ref_v, atol=TOL[dtype], rtol=TOL[dtype])
        np.testing.assert_allclose(s, ref_s, atol=1e-5, rtol=1e-6)
        assert s[1, 1] == -np.inf and np.all(from_wire(v, dtype)[1, 1] == 0)
        # natural log: ln(e^0 + e^0) = ln 2 (a base-2 LSE would be 1)
        assert s[2, 2] == pytest.approx(math.log(2.0), abs=1e-6)

        vm, sm = sess.merge_states(wire(np.stack([va, vb], 1), dtype), np.stack([sa, sb], 1),
                                   dtype=wire_dtype)
        assert np.array_equal(vm, v) and np.array_equal(sm, s)
        only_v = sess.merge_states(wire(np.stack([va, vb], 1), dtype), np.stack([sa, sb], 1),
                                   dtype=wire_dtype, return_s=False)
        assert np.array_equal(only_v, v)


def test_many_and_no_states(client):
    rng = np.random.default_rng(22)
    n, h, d = 4, 2, 8
    with client.session() as sess:
        for states in (1, 6, 0):
            v = rng.standard_normal((n, states, h, d)).astype(np.float32)
            s = rng.uniform(-5, 5, (n, states, h)).astype(np.float32)
            if states:
                s[0, :, 1] = -np.inf  # every state of row 0, head 1 empty
                v[0, :, 1] = np.nan  # never read as a number
            got_v, got_s = sess.merge_states(v, s)
            ref_v, ref_s = naive_merge(v, s)
            np.testing.assert_allclose(got_v, ref_v, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(got_s, ref_s, atol=1e-5)
            if states == 0:
                assert np.all(got_v == 0) and np.all(got_s == -np.inf)
            else:
                assert got_s[0, 1] == -np.inf and np.all(got_v[0, 1] == 0)


def test_torch_cpu_tensors(client):
    """torch CPU tensors in, torch tensors out (bfloat16 included)."""
    torch = pytest.importorskip("torch")
    h, d = 2, 8
    with client.session() as sess:
        tv = torch.randn(3, 2, h, d, dtype=torch.bfloat16)
        ts = torch.randn(3, 2, h)
        out_v, out_s = sess.merge_states(tv, ts)
        assert isinstance(out_v, torch.Tensor) and out_v.dtype == torch.bfloat16
        ref_v, ref_s = naive_merge(tv.float().numpy(), ts.numpy())
        np.testing.assert_allclose(out_v.float().numpy(), ref_v, atol=1e-2, rtol=1e-2)
        np.testing.assert_allclose(out_s.numpy(), ref_s, atol=1e-5)


def test_runs_over_parts_of_the_kv_merge_into_the_run_over_all(client, unique_name):
    """run(return_lse=True) returns the natural-log LSE that merge_state takes."""
    rng = np.random.default_rng(23)
    hq, hkv, d, page = 4, 2, 64, 8
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=hkv, head_dim=d,
                                page_size=page, kv_dtype="float32", num_pages=8)
        pages = pool.allocate(3)
        fill = attnd.BatchPrefillWrapper(pool)
        fill.plan([0, 3], pages, [page], [0, 3 * page], num_qo_heads=hq)
        fill.run(rng.standard_normal((3 * page, hq, d)).astype(np.float32), 0,
                 k=rng.standard_normal((3 * page, hkv, d)).astype(np.float32),
                 v=rng.standard_normal((3 * page, hkv, d)).astype(np.float32))
        q = rng.standard_normal((4, hq, d)).astype(np.float32)

        def run(ids):
            w = attnd.BatchPrefillWrapper(pool)
            w.plan([0, len(ids)], ids, [page], [0, 4], num_qo_heads=hq, logits_soft_cap=20.0)
            return w.run(q, 0, return_lse=True)

        o1, l1 = run(pages[:1])
        o2, l2 = run(pages[1:])
        o, lse = run(pages)
        v, s = sess.merge_state(o1, l1, o2, l2)
        np.testing.assert_allclose(v, o, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s, lse, atol=1e-5, rtol=1e-6)
        # merge_state_in_place on plain arrays: the result is copied into them
        o1c, l1c = o1.copy(), l1.copy()
        assert sess.merge_state_in_place(o1c, l1c, o2, l2) is None
        assert np.array_equal(o1c, v) and np.array_equal(l1c, s)


def test_shared_memory_slices_and_in_place(client):
    rng = np.random.default_rng(24)
    n, h, d = 3, 2, 8
    with client.session() as sess:
        buf = sess.shared_buffer(1 << 16)
        va = buf.array((n, h, d), np.float16)
        sa = buf.array((n, h), np.float32, offset=1024)
        vb = buf.array((n, h, d), np.float16, offset=2048)
        sb = buf.array((n, h), np.float32, offset=3072)
        vo = buf.array((n, h, d), np.float16, offset=4096)
        so = buf.array((n, h), np.float32, offset=5120)
        va[...] = rng.standard_normal(va.shape)
        vb[...] = rng.standard_normal(vb.shape)
        sa[...] = rng.uniform(-3, 3, sa.shape)
        sb[...] = rng.uniform(-3, 3, sb.shape)
        expected_v, expected_s = sess.merge_state(np.array(va), np.array(sa), np.array(vb),
                                                  np.array(sb))
        vo.fill(np.nan)
        so.fill(np.nan)
        got_v, got_s = sess.merge_state(va, sa, vb, sb, v_out=vo, s_out=so)
        assert got_v is vo and got_s is so
        assert np.array_equal(vo, expected_v) and np.array_equal(so, expected_s)
        # in place: the daemon writes (va, sa) in the buffer
        sess.merge_state_in_place(va, sa, vb, sb)
        assert np.array_equal(va, expected_v) and np.array_equal(sa, expected_s)
        # an output that partly overlaps an input is refused, naming both
        with pytest.raises(attnd.InvalidArgument, match=r"v_out \(buffer .* overlaps v_b"):
            sess.merge_state(va, sa, vb, sb, v_out=buf.array((n, h, d), np.float16, offset=2048 + 32))
        # outputs outside the session's shared buffers are refused on the client
        with pytest.raises(ValueError):
            sess.merge_state(va, sa, vb, sb, v_out=np.empty_like(vo))


def test_bad_input_names_the_field(client):
    with client.session() as sess:
        v = np.zeros((2, 2, 6), np.float32)
        s = np.zeros((2, 2), np.float32)
        with pytest.raises(attnd.InvalidArgument, match=r"head_dim=6 must be a multiple of 4"):
            sess.merge_state(v, s, v, s)
        v = np.zeros((2, 2, 8), np.float32)
        with pytest.raises(attnd.InvalidArgument, match=r"v_b.shape=\[2,1,8\], expected \[2,2,8\]"):
            sess.merge_state(v, s, v[:, :1], s)
        with pytest.raises(attnd.InvalidArgument, match=r"s_b.shape=\[2\], expected \[2,2\]"):
            sess.merge_state(v, s, v, s[:, 0])
        with pytest.raises(ValueError, match="v_b is float16, the first v is float32"):
            sess.merge_state(v, s, v.astype(np.float16), s)  # refused before sending
        with pytest.raises(ValueError, match="num_states"):
            sess.merge_states(v, s)  # rank 3: refused before sending
        # the session still works
        assert sess.merge_state(v, s, v, s)[1].shape == (2, 2)


def test_asyncio_merges(daemon):
    async def main():
        async with attnd.aio.AsyncClient(daemon.target) as client:
            async with client.session() as sess:
                v = np.ones((2, 3, 2, 4), np.float32)
                s = np.zeros((2, 3, 2), np.float32)
                got_v, got_s = await sess.merge_states(v, s)
                assert np.allclose(got_v, 1.0) and np.allclose(got_s, math.log(3.0))
                a, b = np.array(v[:, 0]), np.array(v[:, 1]) * 3
                merged = await sess.merge_state(a, s[:, 0], b, s[:, 1], return_s=False)
                assert np.allclose(merged, 2.0)
                sa = np.array(s[:, 0])
                await sess.merge_state_in_place(a, sa, b, s[:, 1])
                assert np.allclose(a, 2.0) and np.allclose(sa, math.log(2.0))

    asyncio.run(main())
