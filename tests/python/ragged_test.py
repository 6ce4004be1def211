"""Attention over K/V passed as tensors, no pool (RunRagged): Session.run_ragged and
attnd.BatchPrefillRaggedWrapper (asyncio too) against the tests' float64 reference, with causal
masks, windows, soft cap and RoPE offsets; shared-memory slices; bad input as typed errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attnd
import attnd.aio
from attention_reference import reference_batch
from paged_helpers import from_wire, round_to, wire

HQ, HKV, D = 4, 2, 64
QO_LENS, KV_LENS = [5, 1, 9], [12, 7, 9]  # append, a decode-like row, prefill
TOL = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


def _batch(rng, dtype):
    qo = np.concatenate([[0], np.cumsum(QO_LENS)]).astype(np.int32)
    kv = np.concatenate([[0], np.cumsum(KV_LENS)]).astype(np.int32)
    q = round_to(rng.standard_normal((qo[-1], HQ, D)), dtype)
    k = round_to(rng.standard_normal((kv[-1], HKV, D)), dtype)
    v = round_to(rng.standard_normal((kv[-1], HKV, D)), dtype)
    return qo, kv, q, k, v


def _reference(qo, kv, q, k, v, **opts):
    ks = [k[kv[b]:kv[b + 1]] for b in range(len(QO_LENS))]
    vs = [v[kv[b]:kv[b + 1]] for b in range(len(QO_LENS))]
    return reference_batch(q, qo, ks, vs, **opts)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_run_ragged_matches_the_reference(client, dtype, stream):
    rng = np.random.default_rng(41)
    qo, kv, q, k, v = _batch(rng, dtype)
    q_dtype = "bfloat16" if dtype == "bfloat16" else None
    with client.session(stream=stream) as sess:
        for opts, ref_opts in [
            (dict(causal=True), dict(causal=True)),
            (dict(causal=True, window_left=4, logits_soft_cap=10.0),
             dict(causal=True, window_left=4, soft_cap=10.0)),
            (dict(causal=True, pos_encoding="rope_llama", rope_theta=5e5, rope_offsets=[3, 0, 7]),
             dict(causal=True, rope=True, rope_theta=5e5, rope_offsets=[3, 0, 7])),
        ]:
            o, lse = sess.run_ragged(wire(q, dtype), wire(k, dtype), wire(v, dtype), qo, kv,
                                     return_lse=True, q_dtype=q_dtype, **opts)
            ref_o, ref_lse = _reference(qo, kv, q, k, v, **ref_opts)
            np.testing.assert_allclose(from_wire(o, dtype), ref_o, atol=TOL[dtype],
                                       rtol=TOL[dtype])
            np.testing.assert_allclose(lse, ref_lse, atol=2e-3, rtol=2e-3)


def test_wrapper_plan_once_run_per_layer_and_merge(client):
    rng = np.random.default_rng(42)
    qo, kv, q, k, v = _batch(rng, "float32")
    with client.session() as sess:
        w = attnd.BatchPrefillRaggedWrapper(sess).plan(qo, kv, HQ, HKV, D, causal=True)
        for _ in range(2):  # a plan serves any number of runs
            o = w.run(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32))
            ref_o, _ = _reference(qo, kv, q, k, v, causal=True)
            np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=2e-5)
        with pytest.raises(ValueError, match="plan"):
            w.run(q[:, :2].astype(np.float32), k.astype(np.float32), v.astype(np.float32))
        # Non-causal runs over two parts of one request's keys merge into the run over all.
        one = attnd.BatchPrefillRaggedWrapper(sess)
        q1 = q[:4].astype(np.float32)
        k1, v1 = k[:12].astype(np.float32), v[:12].astype(np.float32)
        o_all, l_all = one.plan([0, 4], [0, 12]).run(q1, k1, v1, return_lse=True)
        o_a, l_a = one.plan([0, 4], [0, 5]).run(q1, k1[:5], v1[:5], return_lse=True)
        o_b, l_b = one.plan([0, 4], [0, 7]).run(q1, k1[5:], v1[5:], return_lse=True)
        merged, s = sess.merge_state(o_a, l_a, o_b, l_b)
        np.testing.assert_allclose(merged, o_all, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s, l_all, atol=1e-5, rtol=1e-6)


def test_shared_memory_and_asyncio(client, daemon):
    rng = np.random.default_rng(43)
    qo, kv, q, k, v = _batch(rng, "float16")
    with client.session() as sess:
        buf = sess.shared_buffer(1 << 18)
        qs = buf.array(q.shape, np.float16)
        ks = buf.array(k.shape, np.float16, offset=qs.nbytes)
        vs = buf.array(v.shape, np.float16, offset=qs.nbytes + ks.nbytes)
        os_ = buf.array(q.shape, np.float16, offset=qs.nbytes + 2 * ks.nbytes)
        qs[...], ks[...], vs[...] = q, k, v
        os_.fill(np.nan)
        got = sess.run_ragged(qs, ks, vs, qo, kv, out=os_, causal=True)
        assert got is os_
        inline = sess.run_ragged(np.array(qs), np.array(ks), np.array(vs), qo, kv, causal=True)
        assert np.array_equal(inline, os_)

    async def main():
        async with attnd.aio.AsyncClient(daemon.target) as ac:
            async with ac.session() as s:
                w = attnd.BatchPrefillRaggedWrapper(s).plan(qo, kv, causal=True)
                return await w.run(q.astype(np.float16), k.astype(np.float16),
                                   v.astype(np.float16))

    assert np.array_equal(asyncio.run(main()), inline)


def test_bad_input_names_the_field(client):
    rng = np.random.default_rng(44)
    qo, kv, q, k, v = _batch(rng, "float32")
    q, k, v = q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)
    with client.session() as sess:
        with pytest.raises(attnd.InvalidArgument, match=r"kv_indptr\[3\]=27 must equal k.shape\[0\]=28"):
            sess.run_ragged(q, k, v, qo, kv - np.array([0, 0, 0, 1], np.int32))
        with pytest.raises(attnd.InvalidArgument, match=r"num_kv_heads=3 does not divide"):
            sess.run_ragged(q, np.zeros((28, 3, D), np.float32), np.zeros((28, 3, D), np.float32),
                            qo, kv)
        with pytest.raises(attnd.InvalidArgument, match=r"options.rope_offsets has 2"):
            sess.run_ragged(q, k, v, qo, kv, pos_encoding="rope_llama", rope_offsets=[1, 2])
        assert sess.run_ragged(q, k, v, qo, kv).shape == q.shape  # the session carries on
