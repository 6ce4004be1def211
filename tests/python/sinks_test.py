"""Attention sinks (RunRequest.sinks / RunRaggedRequest.sinks, gpt-oss's learned sink logits):
the ``sinks=`` argument of Session.run_ragged, BatchPrefillWrapper.run / BatchDecodeWrapper.run
and the asyncio session, numpy and torch, against the float64 reference; bad sinks refused with
the field named.

With sinks, head h's softmax has one more logit sinks[h] with no value, so from the reference
without sinks (o, lse): lse_s = logaddexp(lse, sinks[h]) and o_s = o * exp(lse - lse_s); a row
that sees no key (lse = -inf) gets o = 0 and lse = sinks[h]."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attnd
import attnd.aio
from attention_reference import reference_batch
from paged_helpers import PagedBatch

HQ, HKV, D = 4, 2, 64
SINKS = np.array([0.5, -1.0, 2.5, -4.0], np.float32)  # [HQ]


def with_sinks(o, lse, sinks):
    """The reference (o, lse) [rows, HQ, D] / [rows, HQ] with sinks folded in."""
    lse_s = np.logaddexp(lse, sinks[None, :].astype(np.float64))
    keep = np.where(np.isneginf(lse), 0.0, np.exp(lse - lse_s))
    return o * keep[..., None], lse_s


def _ragged(rng):
    qo = np.array([0, 6, 7, 10], np.int32)  # append, a decode-like row, prefill
    kv = np.array([0, 12, 19, 22], np.int32)
    q = rng.standard_normal((qo[-1], HQ, D)).astype(np.float32)
    k = rng.standard_normal((kv[-1], HKV, D)).astype(np.float32)
    v = rng.standard_normal((kv[-1], HKV, D)).astype(np.float32)
    return qo, kv, q, k, v


def _reference(qo, kv, q, k, v, **opts):
    n = len(qo) - 1
    o, lse = reference_batch(q, qo, [k[kv[b]:kv[b + 1]] for b in range(n)],
                             [v[kv[b]:kv[b + 1]] for b in range(n)], **opts)
    return with_sinks(o, lse, SINKS)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_run_ragged_with_sinks_matches_the_reference(client, stream):
    rng = np.random.default_rng(61)
    qo, kv, q, k, v = _ragged(rng)
    with client.session(stream=stream) as sess:
        for sinks in (SINKS, SINKS.tolist(), SINKS.astype(np.float64)):
            o, lse = sess.run_ragged(q, k, v, qo, kv, return_lse=True, causal=True,
                                     window_left=5, logits_soft_cap=8.0, sinks=sinks)
            ref_o, ref_lse = _reference(qo, kv, q, k, v, causal=True, window_left=5,
                                        soft_cap=8.0)
            np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse, ref_lse, atol=1e-4, rtol=1e-5)
        # A row that sees no key (2 query rows over 1 key, causal: row 0 is at position -1):
        # o = 0 and lse = the sink.
        o, lse = sess.run_ragged(q[:2], k[:1], v[:1], [0, 2], [0, 1], return_lse=True,
                                 causal=True, sinks=SINKS)
        np.testing.assert_array_equal(o[0], 0.0)
        np.testing.assert_allclose(lse[0], SINKS, rtol=1e-6)
        assert np.all(np.isfinite(o[1])) and np.all(lse[1] > SINKS)
        # The ragged wrapper passes sinks= through to the session.
        wrapper = attnd.BatchPrefillRaggedWrapper(sess)
        wrapper.plan(qo, kv, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, causal=True)
        o2 = wrapper.run(q, k, v, sinks=SINKS)
        np.testing.assert_allclose(o2, _reference(qo, kv, q, k, v, causal=True)[0], atol=2e-5,
                                   rtol=1e-4)


def test_paged_runs_with_sinks_prefill_and_decode(client, unique_name):
    rng = np.random.default_rng(62)
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=2, num_kv_heads=HKV, head_dim=D,
                                page_size=16, kv_dtype="float32", num_pages=16)
        batch = PagedBatch(pool, 2)
        batch.grow([20, 33])
        indptr = np.array([0, 20, 53], np.int32)
        prefill = attnd.BatchPrefillWrapper(pool)
        prefill.plan(*batch.table(), indptr, num_qo_heads=HQ, causal=True)
        q = rng.standard_normal((53, HQ, D)).astype(np.float32)
        k = rng.standard_normal((53, HKV, D)).astype(np.float32)
        v = rng.standard_normal((53, HKV, D)).astype(np.float32)
        o, lse = prefill.run(q, 1, k, v, return_lse=True, sinks=SINKS)
        batch.record(1, indptr, k, v)
        ref_o, ref_lse = reference_batch(q, indptr, batch.k[1], batch.v[1], causal=True)
        ref_o, ref_lse = with_sinks(ref_o, ref_lse, SINKS)
        np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(lse, ref_lse, atol=1e-4, rtol=1e-5)

        decode = attnd.BatchDecodeWrapper(pool)
        decode.plan(*batch.table(), num_qo_heads=HQ)
        qd = rng.standard_normal((2, HQ, D)).astype(np.float32)
        od, lsed = decode.run(qd, 1, return_lse=True, sinks=SINKS)
        ref_o, ref_lse = reference_batch(qd, np.array([0, 1, 2], np.int32),
                                         batch.k[1], batch.v[1],
                                         causal=False)
        ref_o, ref_lse = with_sinks(ref_o, ref_lse, SINKS)
        np.testing.assert_allclose(od, ref_o, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(lsed, ref_lse, atol=1e-4, rtol=1e-5)
        # Without sinks= the run is the plain softmax again.
        plain = decode.run(qd, 1)
        assert not np.allclose(plain, od, atol=1e-4)


def test_sinks_as_torch_tensors(client):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(63)
    qo, kv, q, k, v = _ragged(rng)
    with client.session() as sess:
        for sinks in (torch.from_numpy(SINKS), torch.from_numpy(SINKS).to(torch.bfloat16)):
            o = sess.run_ragged(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                qo, kv, causal=True, sinks=sinks)
            expect = SINKS if sinks.dtype == torch.float32 else sinks.float().numpy()
            n = len(qo) - 1
            ref_o, ref_lse = reference_batch(q, qo, [k[kv[b]:kv[b + 1]] for b in range(n)],
                                             [v[kv[b]:kv[b + 1]] for b in range(n)], causal=True)
            np.testing.assert_allclose(o.numpy(), with_sinks(ref_o, ref_lse, expect)[0],
                                       atol=2e-5, rtol=1e-4)


def test_async_session_takes_sinks(daemon):
    rng = np.random.default_rng(64)
    qo, kv, q, k, v = _ragged(rng)

    async def main():
        async with attnd.aio.AsyncClient(daemon.target, timeout=60) as client:
            async with client.session("sinks") as sess:
                return await sess.run_ragged(q, k, v, qo, kv, causal=True, return_lse=True,
                                             sinks=SINKS)

    o, lse = asyncio.run(main())
    ref_o, ref_lse = _reference(qo, kv, q, k, v, causal=True)
    np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (SINKS[:3], "sinks.shape=[3], expected [4]"),
    (np.array([0.0, np.nan, 0.0, 0.0], np.float32), "sinks[1]=nan must be finite"),
    (np.array([0.0, 0.0, np.inf, 0.0], np.float32), "sinks[2]=inf must be finite"),
    (np.zeros((2, 2), np.float32), "sinks.shape=[2,2], expected [4]"),
])
def test_bad_sinks_are_refused_by_name(client, bad, message):
    rng = np.random.default_rng(65)
    qo, kv, q, k, v = _ragged(rng)
    with client.session() as sess:
        with pytest.raises(attnd.InvalidArgument, match=message.replace("[", r"\[")):
            sess.run_ragged(q, k, v, qo, kv, causal=True, sinks=bad)
        sess.run_ragged(q, k, v, qo, kv, causal=True, sinks=SINKS)  # the session carries on
