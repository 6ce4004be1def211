"""Custom masks (CreatePlanRequest.custom_mask; tree / speculative-decoding verification) from
Python: the ``custom_mask=`` argument of Session.create_plan, BatchPrefillWrapper.plan and the
asyncio twins, in every form the client takes (per-request boolean arrays, nested lists, the
packed bytes, a uint8 array), against the float64 reference of tests/python/attention_reference.py
with the mask applied (AND with causal and the window; a row that sees no key: o = 0, lse = -inf,
or the sink with sinks).

Cases: random trees on a prefix (row i sees the prefix and its ancestors), random masks with
empty rows and lengths that cross byte and 32-bit word boundaries, the mask with GQA / MHA, RoPE,
soft cap, window, causal, sinks and sm_scale, cascade plans (the mask covers each request's own
pages, the shared prefix stays visible), several layers with appends. Refusals: a packed mask of
the wrong length (INVALID_ARGUMENT naming custom_mask), a decode plan with a mask, client-side
shape errors; nothing changes (the wrapper keeps its plan and defaults, the session's other plans
still run)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attnd
import attnd.aio
import attnd.reference
from attention_reference import reference_batch, tree_mask, tree_parents
from paged_helpers import PagedBatch

HQ, HKV, D, PAGE = 8, 2, 32, 4
SINKS = np.array([0.5, -1.0, 2.5, -4.0, 0.0, 1.5, -0.5, 3.0], np.float32)  # [HQ]
TOL = dict(atol=2e-5, rtol=1e-4)
LSE_TOL = dict(atol=1e-4, rtol=1e-5)


# --- masks ------------------------------------------------------------------------------------

def packed(masks):
    """The wire form, written out independently of attnd.pack_custom_mask."""
    return b"".join(np.packbits(np.asarray(m, bool).reshape(-1), bitorder="little").tobytes()
                    for m in masks)


def with_sinks(o, lse, sinks):
    """The reference (o, lse) with attention sinks folded in (as in sinks_test.py)."""
    lse_s = np.logaddexp(lse, sinks[None, :].astype(np.float64))
    keep = np.where(np.isneginf(lse), 0.0, np.exp(lse - lse_s))
    return o * keep[..., None], lse_s


# --- a batch in a pool ------------------------------------------------------------------------

class Batch:
    """Requests with kv_lens tokens of random K/V (float32 pool), every layer written; the
    prefill plan of their last qo_lens tokens is made by the tests."""

    def __init__(self, sess, name, kv_lens, *, rng, hkv=HKV, num_layers=1, hq=HQ,
                 extra_pages=0):
        self.sess = sess
        self.hq, self.hkv = hq, hkv
        pages = sum(-(-n // PAGE) for n in kv_lens) + 8 + extra_pages
        self.pool = sess.create_pool(name, num_layers=num_layers, num_kv_heads=hkv, head_dim=D,
                                     page_size=PAGE, kv_dtype="float32", num_pages=pages)
        self.paged = PagedBatch(self.pool, len(kv_lens))
        self.paged.grow(list(kv_lens))
        self.kv_lens = list(kv_lens)
        indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
        fill = attnd.BatchPrefillWrapper(self.pool)
        fill.plan(*self.table(), indptr, num_qo_heads=hq)
        for layer in range(num_layers):
            k = rng.standard_normal((indptr[-1], hkv, D)).astype(np.float32)
            v = rng.standard_normal((indptr[-1], hkv, D)).astype(np.float32)
            fill.append_kv(k, v, layer)
            self.paged.record(layer, indptr, k, v)
        fill.delete()

    def table(self):
        return self.paged.table()

    def keys(self, layer=0):
        return self.paged.k[layer], self.paged.v[layer]


def qo_indptr_of(qo_lens):
    return np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)


def queries(rng, rows, hq=HQ):
    return rng.standard_normal((rows, hq, D)).astype(np.float32)


# --- the packed form ----------------------------------------------------------------------------

def test_pack_custom_mask_is_numpy_packbits_little():
    m0 = np.array([[1, 0, 0], [0, 1, 1]], bool)       # bits 1,0,0,0,1,1 -> 0b110001
    m1 = np.ones((3, 3), bool)                         # 9 bits -> 0xff, 0x01
    assert attnd.pack_custom_mask([m0]) == bytes([0b110001])
    assert attnd.pack_custom_mask([m0, m1]) == bytes([0b110001, 0xFF, 0x01])
    assert attnd.pack_custom_mask([m0.astype(np.uint8), m1.tolist()]) == packed([m0, m1])
    rng = np.random.default_rng(1)
    ms = [rng.random((q, k)) < 0.4 for q, k in ((5, 37), (1, 1), (9, 70), (0, 12))]
    assert attnd.pack_custom_mask(ms) == packed(ms)
    assert len(attnd.pack_custom_mask(ms)) == sum(-(-q * k // 8) for q, k in
                                                  ((5, 37), (1, 1), (9, 70), (0, 12)))
    assert "pack_custom_mask" in attnd.__all__
    with pytest.raises(ValueError, match=r"custom_mask\[0\] must be a \[qo_len, kv_len\] array"):
        attnd.pack_custom_mask([np.ones(4, bool)])
    with pytest.raises(ValueError, match=r"custom_mask\[1\] must hold booleans"):
        attnd.pack_custom_mask([m0, np.full((2, 2), 2)])
    with pytest.raises(ValueError, match="list of per-request"):
        attnd.pack_custom_mask(m1)


def test_request_forms_and_client_side_checks():
    from attnd import _requests as rq

    m = [np.eye(2, 5, 3, dtype=bool), np.ones((1, 4), bool)]
    want = packed(m)
    for form in (m, tuple(m), [x.tolist() for x in m], want, bytearray(want),
                 np.frombuffer(want, np.uint8)):
        req = rq.create_plan_request("p", 2, HQ, [0, 2, 3], [0, 1, 2], [1, 4], [0, 2, 3],
                                     custom_mask=form)
        assert req.custom_mask == want
    assert rq.create_plan_request("p", 2, HQ, [0, 1], [0], [1], [0, 1]).custom_mask == b""
    with pytest.raises(ValueError, match="custom_mask has 1 per-request masks; the batch has 2"):
        rq.custom_mask_bytes(m[:1], [0, 2, 3])
    with pytest.raises(ValueError, match=r"custom_mask\[1\] has 1 rows; request 1 has qo_len=2"):
        rq.custom_mask_bytes(m, [0, 2, 4])
    with pytest.raises(ValueError, match=r"custom_mask\[0\] has 5 columns; request 0 has kv_len=6"):
        rq.custom_mask_bytes(m, [0, 2, 3], kv_lens=[6, 4])
    with pytest.raises(ValueError, match="packed bytes .* or a list"):
        rq.custom_mask_bytes(np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="packed bytes .* or a list"):
        rq.custom_mask_bytes(np.zeros(3, np.int32))


# --- against the reference ----------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_tree_masks_match_the_reference(client, unique_name, stream):
    rng = np.random.default_rng(81)
    prefixes, nodes = [13, 0, 29, 5], [7, 5, 9, 1]
    kv_lens = [p + n for p, n in zip(prefixes, nodes)]
    with client.session(stream=stream) as sess:
        batch = Batch(sess, unique_name, kv_lens, rng=rng)
        masks = [tree_mask(tree_parents(rng, n), p) for p, n in zip(prefixes, nodes)]
        qo = qo_indptr_of(nodes)
        q = queries(rng, qo[-1])
        ks, vs = batch.keys()
        ref_o, ref_lse = reference_batch(q, qo, ks, vs, custom_masks=masks)
        w = attnd.BatchPrefillWrapper(batch.pool)
        results = []
        for form in (masks, [m.tolist() for m in masks], packed(masks),
                     np.frombuffer(packed(masks), np.uint8)):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=form)
            assert (w.qo_tokens, w.kv_tokens) == (qo[-1], sum(kv_lens))
            o, lse = w.run(q, 0, return_lse=True)
            np.testing.assert_allclose(o, ref_o, **TOL)
            np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)
            results.append(o)
        assert all(np.array_equal(r, results[0]) for r in results[1:])
        # A tree mask lies inside the causal one: causal on gives the same attention.
        o_c = w.run(q, 0, causal=True)
        np.testing.assert_allclose(o_c, ref_o, **TOL)
        # The low-level call takes the same mask; without one the plan is dense again.
        resp = sess.create_plan(batch.pool.pool_id, "prefill", HQ, *batch.table(), qo,
                                custom_mask=masks)
        assert resp.qo_tokens == qo[-1]
        sess.delete_plan(resp.plan_id)
        w.plan(*batch.table(), qo, num_qo_heads=HQ)
        dense = w.run(q, 0)
        np.testing.assert_allclose(dense, reference_batch(q, qo, ks, vs)[0], **TOL)
        assert not np.allclose(dense, ref_o, atol=1e-3)


def test_random_masks_with_empty_rows(client, unique_name):
    rng = np.random.default_rng(82)
    # kv lengths that end inside a byte and cross 32-bit words (33, 64, 70); a dense request.
    qo_lens, kv_lens = [5, 1, 9, 3, 4], [33, 1, 70, 64, 9]
    with client.session() as sess:
        batch = Batch(sess, unique_name, kv_lens, rng=rng)
        masks = []
        for b, (n, kv) in enumerate(zip(qo_lens, kv_lens)):
            m = rng.random((n, kv)) < (0.5 if b % 2 == 0 else 0.1)
            masks.append(m)
        masks[0][2] = False          # an empty row in the middle
        masks[2][0] = False          # and one at the start of a request
        masks[2][8] = False
        masks[1][0] = True           # a one-key request
        masks[4][:] = True           # dense: as without a mask
        qo = qo_indptr_of(qo_lens)
        empty = [qo[b] + i for b, m in enumerate(masks) for i in range(len(m)) if not m[i].any()]
        q = queries(rng, qo[-1])
        ks, vs = batch.keys()
        w = attnd.BatchPrefillWrapper(batch.pool)
        w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=masks)
        o, lse = w.run(q, 0, return_lse=True)
        ref_o, ref_lse = reference_batch(q, qo, ks, vs, custom_masks=masks)
        np.testing.assert_allclose(o, ref_o, **TOL)
        np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)
        assert len(empty) >= 3
        for r in empty:
            np.testing.assert_array_equal(o[r], 0.0)
            assert np.all(np.isneginf(lse[r]))
        # Causal with the mask: the AND of both (some more rows lose keys).
        o, lse = w.run(q, 0, return_lse=True, causal=True)
        ref_o, ref_lse = reference_batch(q, qo, ks, vs, custom_masks=masks, causal=True)
        np.testing.assert_allclose(o, ref_o, **TOL)
        np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)


OPTION_CASES = {
    "mha": dict(hkv=HQ),
    "gqa8": dict(hkv=1),
    "rope": dict(run=dict(pos_encoding="rope_llama", rope_theta=1e4, rope_offsets=[3, 0, 11]),
                 ref=dict(rope=True, rope_theta=1e4), rope_offsets=[3, 0, 11]),
    "softcap-scale": dict(run=dict(logits_soft_cap=5.0, sm_scale=0.3),
                          ref=dict(soft_cap=5.0, sm_scale=0.3)),
    "window": dict(run=dict(window_left=6), ref=dict(window_left=6)),
    "window-causal": dict(run=dict(window_left=4, causal=True),
                          ref=dict(window_left=4, causal=True)),
    "causal": dict(run=dict(causal=True), ref=dict(causal=True)),
    "sinks": dict(sinks=True),
    "sinks-causal-softcap": dict(sinks=True, run=dict(causal=True, logits_soft_cap=4.0),
                                 ref=dict(causal=True, soft_cap=4.0)),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_mask_with_attention_options(client, unique_name, case):
    spec = OPTION_CASES[case]
    rng = np.random.default_rng(83 + sorted(OPTION_CASES).index(case))
    hkv = spec.get("hkv", HKV)
    qo_lens, kv_lens = [6, 8, 3], [21, 8, 40]  # append, a prefill without prefix, append
    with client.session() as sess:
        batch = Batch(sess, unique_name, kv_lens, rng=rng, hkv=hkv)
        masks = [tree_mask(tree_parents(rng, 6), 15), rng.random((8, 8)) < 0.6,
                 rng.random((3, 40)) < 0.3]
        masks[1][5] = False  # an empty row
        qo = qo_indptr_of(qo_lens)
        q = queries(rng, qo[-1])
        ks, vs = batch.keys()
        w = attnd.BatchPrefillWrapper(batch.pool)
        w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=masks)
        run_opts = dict(spec.get("run", {}))
        sinks = SINKS if spec.get("sinks") else None
        o, lse = w.run(q, 0, return_lse=True, sinks=sinks, **run_opts)
        ref_o, ref_lse = reference_batch(q, qo, ks, vs, custom_masks=masks,
                                         rope_offsets=spec.get("rope_offsets"),
                                         **spec.get("ref", {}))
        if sinks is not None:
            ref_o, ref_lse = with_sinks(ref_o, ref_lse, SINKS)
        np.testing.assert_allclose(o, ref_o, **TOL)
        np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)
        row = qo[1] + 5  # the empty row: o = 0, lse = -inf (the sink with sinks)
        np.testing.assert_array_equal(o[row], 0.0)
        if sinks is not None:
            np.testing.assert_allclose(lse[row], SINKS, rtol=1e-6)
        else:
            assert np.all(np.isneginf(lse[row]))


def test_plan_defaults_with_the_mask(client, unique_name):
    """Options given to plan() are run()'s defaults with a mask too (causal and window here)."""
    rng = np.random.default_rng(90)
    with client.session() as sess:
        batch = Batch(sess, unique_name, [30], rng=rng)
        mask = [rng.random((7, 30)) < 0.5]
        qo = qo_indptr_of([7])
        q = queries(rng, 7)
        ks, vs = batch.keys()
        w = attnd.BatchPrefillWrapper(batch.pool)
        w.plan(*batch.table(), qo, num_qo_heads=HQ, causal=True, window_left=9, custom_mask=mask)
        o = w.run(q, 0)
        ref = reference_batch(q, qo, ks, vs, custom_masks=mask, causal=True, window_left=9)[0]
        np.testing.assert_allclose(o, ref, **TOL)


def test_cascade_plan_mask_covers_the_last_level(client, unique_name):
    rng = np.random.default_rng(84)
    prefix_len = 3 * PAGE
    nodes = [5, 7, 2]  # each request's own pages hold its tree of draft tokens only
    with client.session() as sess:
        batch = Batch(sess, unique_name, nodes, rng=rng, extra_pages=3)
        prefix = batch.pool.allocate(3)
        pk = rng.standard_normal((prefix_len, HKV, D)).astype(np.float32)
        pv = rng.standard_normal((prefix_len, HKV, D)).astype(np.float32)
        fill = attnd.BatchPrefillWrapper(batch.pool)
        fill.plan([0, 3], prefix, [PAGE], [0, prefix_len], num_qo_heads=HQ)
        fill.append_kv(pk, pv, 0)
        fill.delete()
        masks = [tree_mask(tree_parents(rng, n), 0) for n in nodes]
        masks[1][3] = False  # a row without own keys still sees the shared prefix
        qo = qo_indptr_of(nodes)
        levels = [dict(qo_indptr=[0, qo[-1]], kv_indptr=[0, 3], kv_indices=prefix,
                       kv_last_page_len=[PAGE])]
        q = queries(rng, qo[-1])
        ks, vs = batch.keys()
        full_k = [np.concatenate([pk.astype(np.float64), k]) for k in ks]
        full_v = [np.concatenate([pv.astype(np.float64), v]) for v in vs]
        full_masks = [np.hstack([np.ones((n, prefix_len), bool), m]) for n, m in zip(nodes, masks)]
        w = attnd.BatchPrefillWrapper(batch.pool)
        for causal in (False, True):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, causal=causal, logits_soft_cap=6.0,
                   cascade_levels=levels, custom_mask=masks)
            assert w.kv_tokens == sum(nodes)  # the own pages only
            o, lse = w.run(q, 0, return_lse=True)
            ref_o, ref_lse = reference_batch(q, qo, full_k, full_v, custom_masks=full_masks,
                                             causal=causal, soft_cap=6.0)
            np.testing.assert_allclose(o, ref_o, **TOL)
            np.testing.assert_allclose(lse, ref_lse, **LSE_TOL)
            assert np.all(np.isfinite(lse))
        # The mask's columns are the own pages': one spanning the prefix too is refused.
        with pytest.raises(ValueError, match=r"custom_mask\[0\] has 17 columns; request 0 has "
                                             r"kv_len=5"):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, cascade_levels=levels,
                   custom_mask=full_masks)
        with pytest.raises(attnd.InvalidArgument, match="custom_mask has"):
            sess.create_plan(batch.pool.pool_id, "prefill", HQ, *batch.table(), qo,
                             cascade_levels=levels, custom_mask=packed(full_masks))


def test_layers_and_appends_keep_the_mask(client, unique_name):
    """The plan carries the mask for every layer; run(k=, v=) appends first, then attends."""
    rng = np.random.default_rng(85)
    prefixes, nodes = [9, 17], [6, 4]
    with client.session() as sess:
        batch = Batch(sess, unique_name, prefixes, rng=rng, num_layers=2, extra_pages=4)
        batch.paged.grow(nodes)
        masks = [tree_mask(tree_parents(rng, n), p) for p, n in zip(prefixes, nodes)]
        qo = qo_indptr_of(nodes)
        w = attnd.BatchPrefillWrapper(batch.pool)
        w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=masks)
        for layer in (1, 0):
            q = queries(rng, qo[-1])
            k = rng.standard_normal((qo[-1], HKV, D)).astype(np.float32)
            v = rng.standard_normal((qo[-1], HKV, D)).astype(np.float32)
            o = w.run(q, layer, k=k, v=v)
            batch.paged.record(layer, qo, k, v)
            ks, vs = batch.keys(layer)
            np.testing.assert_allclose(o, reference_batch(q, qo, ks, vs, custom_masks=masks)[0],
                                       **TOL)


def test_async_session_and_wrapper_take_masks(daemon, unique_name):
    rng = np.random.default_rng(86)
    kv_lens, nodes = [12, 20], [5, 8]
    masks = [tree_mask(tree_parents(rng, n), kv - n) for kv, n in zip(kv_lens, nodes)]
    qo = qo_indptr_of(nodes)
    q = queries(rng, qo[-1])
    k = rng.standard_normal((sum(kv_lens), HKV, D)).astype(np.float32)
    v = rng.standard_normal((sum(kv_lens), HKV, D)).astype(np.float32)
    kv_indptr = qo_indptr_of(kv_lens)

    async def main():
        async with attnd.aio.AsyncClient(daemon.target, timeout=60) as client:
            async with client.session("masks") as sess:
                pool = await sess.create_pool(unique_name, num_layers=1, num_kv_heads=HKV,
                                              head_dim=D, page_size=PAGE, kv_dtype="float32",
                                              num_pages=16)
                pages = await pool.allocate(8)
                table = ([0, 3, 8], pages, [kv_lens[0] - 2 * PAGE, kv_lens[1] - 4 * PAGE])
                fill = pool.prefill_wrapper()
                await fill.plan(*table, kv_indptr, num_qo_heads=HQ)
                await fill.append_kv(k, v, 0)
                w = pool.prefill_wrapper()
                await w.plan(*table, qo, num_qo_heads=HQ, custom_mask=masks)
                o1 = await w.run(q, 0)
                resp = await sess.create_plan(pool.pool_id, "prefill", HQ, *table, qo,
                                              custom_mask=packed(masks))
                assert resp.qo_tokens == qo[-1]
                with pytest.raises(attnd.InvalidArgument, match="custom_mask"):
                    await sess.create_plan(pool.pool_id, "prefill", HQ, *table, qo,
                                           custom_mask=packed(masks)[:-1])
                return o1

    o = asyncio.run(main())
    ks = [k[kv_indptr[b]:kv_indptr[b + 1]] for b in range(2)]
    vs = [v[kv_indptr[b]:kv_indptr[b + 1]] for b in range(2)]
    np.testing.assert_allclose(o, reference_batch(q, qo, ks, vs, custom_masks=masks)[0], **TOL)


# --- refusals ---------------------------------------------------------------------------------

def test_bad_masks_are_refused_and_change_nothing(client, unique_name):
    rng = np.random.default_rng(87)
    qo_lens, kv_lens = [4, 6], [10, 19]
    with client.session() as sess:
        batch = Batch(sess, unique_name, kv_lens, rng=rng)
        masks = [rng.random((n, kv)) < 0.5 for n, kv in zip(qo_lens, kv_lens)]
        want = packed(masks)
        assert len(want) == 5 + 15
        qo = qo_indptr_of(qo_lens)
        q = queries(rng, qo[-1])
        w = attnd.BatchPrefillWrapper(batch.pool)
        w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=masks)
        plan_id, before = w.plan_id, w.run(q, 0)
        other = attnd.BatchPrefillWrapper(batch.pool)
        other.plan(*batch.table(), qo, num_qo_heads=HQ, causal=True)
        other_before = other.run(q, 0)

        for bad in (want[:-1], want + b"\x00", b"\x01"):
            with pytest.raises(attnd.InvalidArgument) as err:
                sess.create_plan(batch.pool.pool_id, "prefill", HQ, *batch.table(), qo,
                                 custom_mask=bad)
            assert err.value.code.name == "INVALID_ARGUMENT"
            assert f"custom_mask has {len(bad)} bytes, expected 20" in str(err.value)
        # A decode plan takes no mask.
        dec_mask = packed([np.ones((1, kv), bool) for kv in kv_lens])
        with pytest.raises(attnd.InvalidArgument,
                           match=r"custom_mask \(5 bytes\) needs kind=ATTENTION_KIND_PREFILL"):
            sess.create_plan(batch.pool.pool_id, "decode", HQ, *batch.table(),
                             custom_mask=dec_mask)
        # The wrapper keeps its plan and its defaults when plan() is refused (here with
        # causal=True and a short mask).
        with pytest.raises(attnd.InvalidArgument, match="custom_mask has 19 bytes"):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, causal=True, custom_mask=want[:-1])
        assert w.plan_id == plan_id and w.defaults["causal"] is False
        # Client-side checks, before anything is sent.
        with pytest.raises(ValueError, match=r"custom_mask\[1\] has 18 columns; request 1 has "
                                             r"kv_len=19"):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=[masks[0], masks[1][:, 1:]])
        with pytest.raises(ValueError, match=r"custom_mask\[0\] has 3 rows"):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=[masks[0][1:], masks[1]])
        with pytest.raises(ValueError, match="custom_mask has 1 per-request masks"):
            w.plan(*batch.table(), qo, num_qo_heads=HQ, custom_mask=masks[:1])
        assert w.plan_id == plan_id
        # Everything still runs as before, and new plans can be made.
        np.testing.assert_array_equal(w.run(q, 0), before)
        np.testing.assert_array_equal(other.run(q, 0), other_before)
        resp = sess.create_plan(batch.pool.pool_id, "prefill", HQ, *batch.table(), qo,
                                custom_mask=want)
        assert resp.qo_tokens == qo[-1]


# --- the numpy reference of the package ---------------------------------------------------

def test_package_reference_applies_mask_and_sinks():
    """attnd.reference (what the examples use) agrees with the tests' own reference."""
    rng = np.random.default_rng(88)
    qo_lens, kv_lens = [3, 5], [11, 5]
    qo = qo_indptr_of(qo_lens)
    q = rng.standard_normal((qo[-1], HQ, D))
    ks = [rng.standard_normal((n, HKV, D)) for n in kv_lens]
    vs = [rng.standard_normal((n, HKV, D)) for n in kv_lens]
    masks = [rng.random((3, 11)) < 0.4, rng.random((5, 5)) < 0.5]
    masks[0][1] = False
    for opts, ref_opts in ((dict(causal=True, window_left=3), dict(causal=True, window_left=3)),
                           (dict(logits_soft_cap=3.0), dict(soft_cap=3.0))):
        o, lse = attnd.reference.batch_attention(q, qo, ks, vs, custom_masks=masks, **opts)
        ro, rl = reference_batch(q, qo, ks, vs, custom_masks=masks, **ref_opts)
        np.testing.assert_allclose(o, ro, atol=1e-12)
        np.testing.assert_allclose(lse, rl, atol=1e-12)
        o, lse = attnd.reference.batch_attention(q, qo, ks, vs, custom_masks=masks, sinks=SINKS,
                                                 **opts)
        ro, rl = with_sinks(ro, rl, SINKS)
        np.testing.assert_allclose(o, ro, atol=1e-12)
        np.testing.assert_allclose(lse, rl, atol=1e-12)
    np.testing.assert_array_equal(o[1], 0.0)
    np.testing.assert_allclose(lse[1], SINKS, rtol=1e-6)
    with pytest.raises(ValueError, match="custom_mask has shape"):
        attnd.reference.attention(q[:3], ks[0], vs[0], custom_mask=masks[1])
