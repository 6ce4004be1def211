"""Prefill + decode through the Python client against a real daemon (CPU backend), checked against
the tests' float64 reference (attention_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

import attnd
from attention_reference import reference_batch
from paged_helpers import PagedBatch, from_wire, wire

# (name, q/kv dtype, Hq, Hkv, head_dim, page_size, prompt lengths, options, o tolerance)
CONFIGS = [
    ("fp32_gqa2", "float32", 4, 2, 64, 16, [1, 17, 40],
     dict(), 2e-5),
    ("fp16_gqa8_rope_cap_window", "float16", 8, 1, 128, 4, [3, 9],
     dict(pos_encoding="rope_llama", rope_theta=500.0, rope_scale=2.0, logits_soft_cap=5.0,
          window_left=6), 3e-3),
    ("bf16_mha_sm_scale", "bfloat16", 2, 2, 64, 8, [5, 1, 12],
     dict(sm_scale=0.3), 2e-2),
]
LSE_TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 2e-2}


def _check(got_o, got_lse, ref_o, ref_lse, dtype, tol):
    o = from_wire(got_o, dtype)
    assert o.shape == ref_o.shape
    assert np.isfinite(o).all()
    np.testing.assert_allclose(o, ref_o, atol=tol, rtol=tol)
    if got_lse is not None:
        assert got_lse.dtype == np.float32 and got_lse.shape == ref_lse.shape
        np.testing.assert_allclose(got_lse, ref_lse, atol=LSE_TOL[dtype], rtol=LSE_TOL[dtype])


def _ref_options(opts, causal):
    return dict(causal=causal, sm_scale=opts.get("sm_scale"),
                soft_cap=opts.get("logits_soft_cap", 0.0),
                window_left=opts.get("window_left", -1),
                rope=opts.get("pos_encoding") == "rope_llama",
                rope_theta=opts.get("rope_theta", 1e4), rope_scale=opts.get("rope_scale", 1.0))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_prefill_then_decode(client, unique_name, cfg, stream):
    name, dtype, hq, hkv, d, page, prompts, opts, tol = cfg
    info = client.server_info()
    # an empty page_sizes list means any page size (kernels Backend contract)
    assert d in info.head_dims and (not info.page_sizes or page in info.page_sizes), info
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    num_layers = 2
    with client.session("attention-test", stream=stream) as sess:
        pool = sess.create_pool(unique_name, num_layers=num_layers, num_kv_heads=hkv, head_dim=d,
                                page_size=page, kv_dtype=dtype, num_pages=64)
        assert pool.kv_dtype == dtype and pool.head_dim == d
        batch = PagedBatch(pool, len(prompts))
        q_dtype = "bfloat16" if dtype == "bfloat16" else None
        rope_offsets = [3 * b for b in range(len(prompts))] if "pos_encoding" in opts else None

        # Prefill the prompts (causal), every layer appends its k/v in the same call.
        batch.grow(prompts)
        qo_indptr = np.concatenate([[0], np.cumsum(prompts)]).astype(np.int32)
        prefill = attnd.BatchPrefillWrapper(pool)
        prefill.plan(*batch.table(), qo_indptr, num_qo_heads=hq, causal=True,
                     rope_offsets=rope_offsets, **opts)
        assert prefill.batch_size == len(prompts) and prefill.qo_tokens == sum(prompts)
        n = int(qo_indptr[-1])
        for layer in range(num_layers):
            q = wire(rng.standard_normal((n, hq, d)), dtype)
            k = rng.standard_normal((n, hkv, d)).astype(np.float32)
            v = rng.standard_normal((n, hkv, d)).astype(np.float32)
            o, lse = prefill.run(q, layer, k=k, v=v, return_lse=True, q_dtype=q_dtype)
            batch.record(layer, qo_indptr, k, v)
            ref_o, ref_lse = reference_batch(from_wire(q, dtype), qo_indptr, batch.k[layer],
                                             batch.v[layer], rope_offsets=rope_offsets,
                                             **_ref_options(opts, causal=True))
            _check(o, lse, ref_o, ref_lse, dtype, tol)
        prefill.delete()

        # Decode steps: one new token per request, crossing page boundaries.
        decode = attnd.BatchDecodeWrapper(pool)
        ones = np.arange(len(prompts) + 1, dtype=np.int32)
        for step in range(5):
            batch.grow([1] * len(prompts))
            decode.plan(*batch.table(), num_qo_heads=hq, rope_offsets=rope_offsets, **opts)
            for layer in range(num_layers):
                q = wire(rng.standard_normal((len(prompts), hq, d)), dtype)
                k = rng.standard_normal((len(prompts), hkv, d)).astype(np.float32)
                v = rng.standard_normal((len(prompts), hkv, d)).astype(np.float32)
                want_lse = step % 2 == 0
                got = decode.run(q, layer, k=k, v=v, return_lse=want_lse, q_dtype=q_dtype)
                o, lse = got if want_lse else (got, None)
                batch.record(layer, ones, k, v)
                ref_o, ref_lse = reference_batch(from_wire(q, dtype), ones, batch.k[layer],
                                                 batch.v[layer], rope_offsets=rope_offsets,
                                                 **_ref_options(opts, causal=False))
                _check(o, lse, ref_o, ref_lse, dtype, tol)
        decode.delete()


def test_chunked_prefill_appends_to_cached_prefix(client, unique_name):
    """A second prefill chunk (kv_len > qo_len) sees the first chunk's cached k/v; append_kv
    separately, then run without k/v; non-causal is checked too."""
    rng = np.random.default_rng(7)
    hq, hkv, d = 4, 4, 64
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=hkv, head_dim=d,
                                page_size=16, kv_dtype="float32", num_pages=16)
        batch = PagedBatch(pool, 2)
        wrapper = attnd.BatchPrefillWrapper(pool)
        for chunk, causal in (([20, 5], True), ([7, 30], True), ([3, 2], False)):
            batch.grow(chunk)
            qo_indptr = np.array([0, chunk[0], chunk[0] + chunk[1]], np.int32)
            wrapper.plan(*batch.table(), qo_indptr, num_qo_heads=hq, causal=causal)
            n = sum(chunk)
            q = rng.standard_normal((n, hq, d)).astype(np.float32)
            k = rng.standard_normal((n, hkv, d)).astype(np.float32)
            v = rng.standard_normal((n, hkv, d)).astype(np.float32)
            wrapper.append_kv(k, v, layer=0)
            batch.record(0, qo_indptr, k, v)
            o = wrapper.run(q, 0)
            ref_o, _ = reference_batch(q, qo_indptr, batch.k[0], batch.v[0], causal=causal)
            np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
            assert o.dtype == np.float32


def test_run_options_override_plan_defaults(client, unique_name):
    rng = np.random.default_rng(11)
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64,
                                page_size=16, kv_dtype="float32", num_pages=8)
        batch = PagedBatch(pool, 1)
        batch.grow([33])
        wrapper = attnd.BatchPrefillWrapper(pool)
        indptr = np.array([0, 33], np.int32)
        wrapper.plan(*batch.table(), indptr, num_qo_heads=2, causal=True, logits_soft_cap=2.0)
        q = rng.standard_normal((33, 2, 64)).astype(np.float32)
        k = rng.standard_normal((33, 1, 64)).astype(np.float32)
        v = rng.standard_normal((33, 1, 64)).astype(np.float32)
        wrapper.append_kv(k, v, 0)
        batch.record(0, indptr, k, v)
        with_cap = wrapper.run(q, 0)
        without = wrapper.run(q, 0, logits_soft_cap=None, causal=False, window_left=4)
        ref_cap, _ = reference_batch(q, indptr, batch.k[0], batch.v[0], causal=True, soft_cap=2.0)
        ref_plain, _ = reference_batch(q, indptr, batch.k[0], batch.v[0], causal=False,
                                       window_left=4)
        np.testing.assert_allclose(with_cap, ref_cap, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(without, ref_plain, atol=2e-5, rtol=1e-4)
        assert not np.allclose(with_cap, without, atol=1e-3)


def test_fp16_kv_with_fp32_query(client, unique_name):
    """q/o float32 while the pool stores float16 (the client converts k/v to the pool dtype)."""
    rng = np.random.default_rng(5)
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=2, head_dim=64,
                                page_size=16, kv_dtype="float16", num_pages=8)
        batch = PagedBatch(pool, 3)
        batch.grow([1, 16, 17])
        wrapper = attnd.BatchDecodeWrapper(pool)
        wrapper.plan(*batch.table(), num_qo_heads=4)
        # Fill the caches with a prefill-less append: decode appends 1 token per request; the
        # rest of the rows are written by a prefill plan over the same pages first.
        pre = attnd.BatchPrefillWrapper(pool)
        indptr = np.array([0, 1, 17, 34], np.int32)
        pre.plan(*batch.table(), indptr, num_qo_heads=4)
        k = rng.standard_normal((34, 2, 64)).astype(np.float32)
        v = rng.standard_normal((34, 2, 64)).astype(np.float32)
        pre.append_kv(k, v, 0)
        batch.record(0, indptr, k, v)
        q = rng.standard_normal((3, 4, 64)).astype(np.float32)
        o, lse = wrapper.run(q, 0, return_lse=True)
        assert o.dtype == np.float32
        ref_o, ref_lse = reference_batch(q, np.arange(4), batch.k[0], batch.v[0])
        np.testing.assert_allclose(o, ref_o, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=1e-4)
        # the stored k really is float16: the float32 originals give a different answer
        exact, _ = reference_batch(q, np.arange(4), [k[0:1], k[1:17], k[17:34]],
                                   [v[0:1], v[1:17], v[17:34]])
        assert np.abs(exact - ref_o).max() > 1e-6
