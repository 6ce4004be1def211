"""FP8 pools take new K/V rows in float32 / float16 / bfloat16 and the daemon quantizes them:
x8 = fp8(x / scale) with the pool's per-layer, per-KV-head scale (float32 quotient, round to
nearest even, saturating to the largest finite value), read back as float(x8) * scale.

Every query row here sees exactly one key (decode plans whose requests hold one token each, or a
prefill plan with an identity custom mask), so its output is that key's V row exactly
(dequantized, then rounded to q's dtype), and with a one-hot q and sm_scale=1 its LSE is one
element of the key's K row. Both are checked against a numpy reference quantizer written here.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import attnd
import attnd.aio

FORMATS = ["float8_e4m3fn", "float8_e5m2"]
L, HKV, HQ, D, PAGE = 2, 2, 4, 16, 4  # GQA: query head h reads KV head h // 2
# per layer and KV head (layer-major), powers of two and not
K_SCALE = np.array([[0.5, 2.0], [3.0, 0.0625]], np.float32)
V_SCALE = np.array([[0.25, 1.5], [4.0, 0.75]], np.float32)


# --- numpy reference of the fp8 formats ----------------------------------------------------------

def fp8_decode_table(fmt: str) -> np.ndarray:
    """float64 values of the 128 non-negative codes (NaN / inf codes as NaN / inf)."""
    mbits, bias = (3, 7) if fmt == "float8_e4m3fn" else (2, 15)
    codes = np.arange(128)
    e, m = codes >> mbits, codes & ((1 << mbits) - 1)
    vals = np.where(e == 0, m * 2.0 ** (1 - bias - mbits),
                    (1 + m / 2.0 ** mbits) * 2.0 ** (e - bias))
    if fmt == "float8_e4m3fn":
        vals[0x7F] = np.nan  # e4m3fn: no inf, S.1111.111 is NaN
    else:
        vals[0x7C] = np.inf  # e5m2: IEEE-like
        vals[0x7D:] = np.nan
    return vals


def fp8_max(fmt: str) -> float:
    return 448.0 if fmt == "float8_e4m3fn" else 57344.0


def fp8_bits(x: np.ndarray, fmt: str) -> np.ndarray:
    """The fp8 codes (uint8) of float32 x: round to nearest, ties to even, saturating to
    +-max (inf too); NaN to a NaN code."""
    x = np.asarray(x, np.float32).astype(np.float64)
    table = fp8_decode_table(fmt)
    finite = int(np.flatnonzero(table == fp8_max(fmt))[0]) + 1  # codes 0 .. finite-1
    vals = table[:finite]
    a = np.minimum(np.abs(x), fp8_max(fmt))
    hi = np.clip(np.searchsorted(vals, a, side="left"), 0, finite - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - vals[lo], vals[hi] - a
    code = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(hi % 2 == 0, hi, lo)))
    code = np.where(vals[hi] == a, hi, code)
    bits = code.astype(np.uint8) | np.where(np.signbit(x), 0x80, 0).astype(np.uint8)
    nan_code = 0x7F if fmt == "float8_e4m3fn" else 0x7E
    return np.where(np.isnan(x), np.uint8(nan_code), bits).astype(np.uint8)


def fp8_value(bits: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values of fp8 codes."""
    bits = np.asarray(bits, np.uint8)
    mag = fp8_decode_table(fmt)[bits & 0x7F]
    return np.where(bits & 0x80, -mag, mag).astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray, fmt: str) -> np.ndarray:
    """What the daemon stores for rows x [tokens, HKV, D] with per-head scale [HKV]: fp8 codes
    of the float32 quotient x / scale."""
    quotient = np.asarray(x, np.float32) / scale.astype(np.float32)[None, :, None]
    return fp8_bits(quotient.astype(np.float32), fmt)


def dequantize(bits: np.ndarray, scale: np.ndarray, fmt: str) -> np.ndarray:
    """float(x8) * scale, a float32 product."""
    return fp8_value(bits, fmt) * scale.astype(np.float32)[None, :, None]


def test_reference_quantizer():
    e4, e5 = "float8_e4m3fn", "float8_e5m2"
    f = lambda x, fmt: fp8_value(fp8_bits(np.array(x, np.float32), fmt), fmt).tolist()  # noqa
    assert f([0.0, 1.0, 448.0, 449.0, 464.0, 1e30, np.inf, -1e9], e4) == \
        [0.0, 1.0, 448.0, 448.0, 448.0, 448.0, 448.0, -448.0]
    # ties to even: 1 + 1/16 lies between 1 (mantissa 0) and 1.125 (1); 1 + 3/16 -> 1.25 (2)
    assert f([1.0625, 1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 2.0 ** -9], e4) == \
        [1.0, 1.25, 0.0, 2.0 ** -8, 2.0 ** -9]
    assert f([57344.0, 61440.0, 1e6, -np.inf, 1.125, 1.375, 2.0 ** -17, 2.0 ** -16], e5) == \
        [57344.0, 57344.0, 57344.0, -57344.0, 1.0, 1.5, 0.0, 2.0 ** -16]
    assert fp8_bits(np.array([1.0], np.float32), e4)[0] == 0x38
    assert fp8_bits(np.array([-2.0], np.float32), e5)[0] == 0xC0
    assert np.isnan(fp8_value(fp8_bits(np.array([np.nan], np.float32), e4), e4)).all()
    # every finite code round-trips
    for fmt in FORMATS:
        codes = np.arange(256, dtype=np.uint8)
        vals = fp8_value(codes, fmt)
        ok = np.isfinite(vals)
        assert (fp8_bits(vals[ok], fmt) == codes[ok]).all()


# --- data --------------------------------------------------------------------------------------

def kv_rows(rng, n: int, scale: np.ndarray, fmt: str, dtype) -> np.ndarray:
    """[n, HKV, D] values over many magnitudes of each head's representable range, some beyond
    it (saturation), some tiny (subnormals / flush to 0), some exact ties, zeros, signs."""
    top = fp8_max(fmt) * scale.astype(np.float64)[None, :, None]
    x = np.sign(rng.standard_normal((n, HKV, D))) * top * 10.0 ** rng.uniform(-9, 0.5, (n, HKV, D))
    x[0, :, :4] = top[0] * np.array([1.0, 1.2, -3.0, 100.0])  # at and beyond the range
    x[0, :, 4:8] = 0.0
    # midpoints between neighbouring fp8 values (ties in the quotient when scale is a power of 2)
    x[1, :, :8] = np.array([1.0625, 1.1875, -2.125, 3.5 + 0.25 / 2, 2.0 ** -10, 24.5, 0.5, -1.0])
    x[1] *= scale.astype(np.float64)[:, None]
    if dtype == np.float16:
        x = np.clip(x, -65504.0, 65504.0)
    return x.astype(dtype)


def one_hot_q(n: int, dtype) -> np.ndarray:
    """q [n, HQ, D]: row b, every head, the unit vector along dim b % D (its logit against the
    one key is then k[b % D] exactly)."""
    q = np.zeros((n, HQ, D), np.float32)
    q[np.arange(n), :, np.arange(n) % D] = 1.0
    return q.astype(dtype)


def expected(k, v, layer: int, fmt: str, q_dtype):
    """(o, lse) of rows that each see one key: o = dequantized v (rounded to q's dtype), lse =
    the dequantized k along each row's one-hot dim (sm_scale 1)."""
    kq = dequantize(quantize(k, K_SCALE[layer], fmt), K_SCALE[layer], fmt)
    vq = dequantize(quantize(v, V_SCALE[layer], fmt), V_SCALE[layer], fmt)
    heads = np.arange(HQ) // (HQ // HKV)
    with np.errstate(over="ignore"):  # e5m2 * scale goes past float16's range: inf, as the daemon
        o = vq[:, heads, :].astype(q_dtype)
    n = k.shape[0]
    lse = kq[np.arange(n)[:, None], heads[None, :], (np.arange(n) % D)[:, None]]
    return o, lse


def check(o, lse, k, v, layer, fmt, q_dtype):
    want_o, want_lse = expected(k, v, layer, fmt, q_dtype)
    assert o.dtype == np.dtype(q_dtype) and o.shape == want_o.shape
    assert np.isfinite(o[np.isfinite(want_o)]).all()
    np.testing.assert_array_equal(o, want_o)  # inf where a float16 q's o overflows
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6, atol=0)


def fp8_pool(sess, name, fmt, num_pages=64):
    pool = sess.create_pool(name, num_layers=L, num_kv_heads=HKV, head_dim=D, page_size=PAGE,
                            kv_dtype=fmt, num_pages=num_pages, k_scale=K_SCALE,
                            v_scale=V_SCALE)
    assert pool.kv_dtype == fmt
    assert list(sess.describe_pool(pool.pool_id).v_scale) == V_SCALE.ravel().tolist()
    return pool


def single_token_decode(pool, batch: int):
    """A decode plan of ``batch`` requests, each one page holding 1 token."""
    dec = attnd.BatchDecodeWrapper(pool)
    pages = pool.allocate(batch)
    dec.plan(np.arange(batch + 1), pages, np.ones(batch, np.int32), num_qo_heads=HQ,
             sm_scale=1.0)
    return dec


# --- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("q_dtype", [np.float32, np.float16], ids=["q32", "q16"])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16], ids=["kv32", "kv16"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_run_quantizes_float_kv(client, unique_name, fmt, kv_dtype, q_dtype):
    rng = np.random.default_rng(7)
    B = 16
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, fmt)
        for layer in range(L):
            dec = single_token_decode(pool, B)
            k = kv_rows(rng, B, K_SCALE[layer], fmt, kv_dtype)
            v = kv_rows(rng, B, V_SCALE[layer], fmt, kv_dtype)
            o, lse = dec.run(one_hot_q(B, q_dtype), layer, k=k, v=v, return_lse=True)
            check(o, lse, k, v, layer, fmt, q_dtype)
            dec.delete()


@pytest.mark.parametrize("fmt", FORMATS)
def test_float64_kv_is_sent_as_float32(client, unique_name, fmt):
    rng = np.random.default_rng(8)
    B = 8
    with client.session() as sess:
        dec = single_token_decode(fp8_pool(sess, unique_name, fmt), B)
        k = kv_rows(rng, B, K_SCALE[1], fmt, np.float64)
        v = kv_rows(rng, B, V_SCALE[1], fmt, np.float64)
        o, lse = dec.run(one_hot_q(B, np.float32), 1, k=k, v=v, return_lse=True)
        check(o, lse, k.astype(np.float32), v.astype(np.float32), 1, fmt, np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_prefill_with_identity_mask_quantizes_float16_kv(client, unique_name, fmt):
    """A prefill run appending 10 tokens per request (over page boundaries); the custom mask lets
    row i see only its own key."""
    rng = np.random.default_rng(9)
    qo_len, B = 10, 2
    n = qo_len * B
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, fmt)
        per = -(-qo_len // PAGE)
        pages = pool.allocate(per * B)
        pre = attnd.BatchPrefillWrapper(pool)
        pre.plan([0, per, 2 * per], pages, [qo_len - (per - 1) * PAGE] * B, [0, qo_len, n],
                 num_qo_heads=HQ, sm_scale=1.0,
                 custom_mask=[np.eye(qo_len, dtype=bool)] * B)
        for layer in range(L):
            k = kv_rows(rng, n, K_SCALE[layer], fmt, np.float16)
            v = kv_rows(rng, n, V_SCALE[layer], fmt, np.float16)
            o, lse = pre.run(one_hot_q(n, np.float32), layer, k=k, v=v, return_lse=True)
            check(o, lse, k, v, layer, fmt, np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_append_kv_float16_then_run_reads_it_back(client, unique_name, fmt):
    rng = np.random.default_rng(10)
    B = 16
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, fmt)
        dec = single_token_decode(pool, B)
        rows = {}
        for layer in range(L):
            rows[layer] = (kv_rows(rng, B, K_SCALE[layer], fmt, np.float16),
                           kv_rows(rng, B, V_SCALE[layer], fmt, np.float16))
            dec.append_kv(*rows[layer], layer)
        for layer in range(L):
            o, lse = dec.run(one_hot_q(B, np.float16), layer, return_lse=True)
            check(o, lse, *rows[layer], layer, fmt, np.float16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_async_append_kv_float32(daemon, unique_name, fmt):
    rng = np.random.default_rng(11)
    B = 8

    async def main():
        async with attnd.aio.AsyncClient(daemon.target, timeout=60) as client:
            async with client.session("fp8-aio") as sess:
                pool = await sess.create_pool(unique_name, num_layers=L, num_kv_heads=HKV,
                                              head_dim=D, page_size=PAGE, kv_dtype=fmt,
                                              num_pages=16, k_scale=K_SCALE, v_scale=V_SCALE)
                dec = attnd.aio.AsyncBatchDecodeWrapper(pool)
                await dec.plan(np.arange(B + 1), await pool.allocate(B), np.ones(B, np.int32),
                               num_qo_heads=HQ, sm_scale=1.0)
                k = kv_rows(rng, B, K_SCALE[0], fmt, np.float32)
                v = kv_rows(rng, B, V_SCALE[0], fmt, np.float32)
                await dec.append_kv(k, v, 0)
                o, lse = await dec.run(one_hot_q(B, np.float32), 0, return_lse=True)
                check(o, lse, k, v, 0, fmt, np.float32)

    asyncio.run(main())


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp8_bits_are_stored_as_they_are(client, unique_name, fmt):
    """numpy uint8 k/v are the pool's fp8 codes, already quantized: not scaled again."""
    rng = np.random.default_rng(12)
    B = 16
    with client.session() as sess:
        dec = single_token_decode(fp8_pool(sess, unique_name, fmt), B)
        k8 = quantize(kv_rows(rng, B, K_SCALE[0], fmt, np.float32), K_SCALE[0], fmt)
        v8 = quantize(kv_rows(rng, B, V_SCALE[0], fmt, np.float32), V_SCALE[0], fmt)
        o, lse = dec.run(one_hot_q(B, np.float32), 0, k=k8, v=v8, return_lse=True)
        heads = np.arange(HQ) // (HQ // HKV)
        np.testing.assert_array_equal(o, dequantize(v8, V_SCALE[0], fmt)[:, heads, :])
        want_lse = dequantize(k8, K_SCALE[0], fmt)[np.arange(B)[:, None], heads[None, :],
                                                   (np.arange(B) % D)[:, None]]
        np.testing.assert_allclose(lse, want_lse, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_kv_of_two_float_dtypes_are_sent_as_float32(client, unique_name, fmt):
    """k float16 with v float32 (and the reverse): both travel as float32, which is exact, so the
    stored fp8 values are those of each given in its own dtype."""
    rng = np.random.default_rng(13)
    B = 16
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, fmt)
        for k_dt, v_dt in ((np.float16, np.float32), (np.float32, np.float16)):
            dec = single_token_decode(pool, B)
            k = kv_rows(rng, B, K_SCALE[1], fmt, k_dt)
            v = kv_rows(rng, B, V_SCALE[1], fmt, v_dt)
            o, lse = dec.run(one_hot_q(B, np.float32), 1, k=k, v=v, return_lse=True)
            check(o, lse, k, v, 1, fmt, np.float32)
            dec.append_kv(v, k, 0)  # append_kv takes the same mix
            dec.delete()


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp8_mixed_with_float_kv_is_refused(client, unique_name, fmt):
    rng = np.random.default_rng(14)
    B = 4
    with client.session() as sess:
        dec = single_token_decode(fp8_pool(sess, unique_name, fmt), B)
        x = kv_rows(rng, B, K_SCALE[0], fmt, np.float16)
        bits = quantize(x, K_SCALE[0], fmt)
        q = one_hot_q(B, np.float32)
        with pytest.raises(ValueError, match=rf"k is {fmt} and v is float16"):
            dec.run(q, 0, k=bits, v=x)
        with pytest.raises(ValueError, match=rf"k is float32 and v is {fmt}"):
            dec.append_kv(x.astype(np.float32), bits, 0)
        with pytest.raises(ValueError, match="uint16 array is ambiguous"):
            dec.append_kv(x.view(np.uint16), x, 0)
        with pytest.raises(ValueError, match=rf"k of dtype int32 on a {fmt} pool"):
            dec.append_kv(np.zeros(x.shape, np.int32), x, 0)
        dec.append_kv(x, x, 0)  # the plan still works after the refusals


def test_other_fp8_format_is_refused(client, unique_name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    B = 4
    with client.session() as sess:
        dec = single_token_decode(fp8_pool(sess, unique_name, "float8_e4m3fn"), B)
        e5 = np.zeros((B, HKV, D), ml_dtypes.float8_e5m2)
        with pytest.raises(ValueError, match="k is float8_e5m2 but the pool is float8_e4m3fn"):
            dec.append_kv(e5, e5, 0)


def test_ml_dtypes_bfloat16_and_fp8_arrays(client, unique_name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(15)
    B, fmt = 16, "float8_e4m3fn"
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, fmt)
        dec = single_token_decode(pool, B)
        k = kv_rows(rng, B, K_SCALE[0], fmt, np.float32).astype(ml_dtypes.bfloat16)
        v = kv_rows(rng, B, V_SCALE[0], fmt, np.float32).astype(ml_dtypes.bfloat16)
        o, lse = dec.run(one_hot_q(B, np.float32), 0, k=k, v=v, return_lse=True)
        check(o, lse, k.astype(np.float32), v.astype(np.float32), 0, fmt, np.float32)
        v8 = quantize(v.astype(np.float32), V_SCALE[1], fmt)
        dec.append_kv(v8.view(ml_dtypes.float8_e4m3fn), v8.view(ml_dtypes.float8_e4m3fn), 1)
        o = dec.run(one_hot_q(B, np.float32), 1)
        heads = np.arange(HQ) // (HQ // HKV)
        np.testing.assert_array_equal(o, dequantize(v8, V_SCALE[1], fmt)[:, heads, :])


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_cpu_kv(client, unique_name, fmt):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    B = 16
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, fmt)
        dec = single_token_decode(pool, B)
        q = torch.from_numpy(one_hot_q(B, np.float32))
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            k = torch.from_numpy(kv_rows(rng, B, K_SCALE[0], fmt, np.float32)).to(dt)
            v = torch.from_numpy(kv_rows(rng, B, V_SCALE[0], fmt, np.float32)).to(dt)
            o, lse = dec.run(q, 0, k=k, v=v, return_lse=True)
            check(o.numpy(), lse.numpy(), k.float().numpy(), v.float().numpy(), 0, fmt,
                  np.float32)
        v8 = quantize(v.float().numpy(), V_SCALE[1], fmt)
        t8 = torch.from_numpy(v8).view(getattr(torch, fmt))
        dec.append_kv(t8, t8, 1)
        heads = np.arange(HQ) // (HQ // HKV)
        np.testing.assert_array_equal(dec.run(q, 1).numpy(),
                                      dequantize(v8, V_SCALE[1], fmt)[:, heads, :])


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_memory_float16_kv(client, unique_name, fmt):
    """float16 k/v inside a shared buffer travel as buffer slices of float16."""
    rng = np.random.default_rng(17)
    B = 8
    with client.session() as sess:
        if not client.server_info().shared_memory:
            pytest.skip("the daemon takes no shared memory")
        dec = single_token_decode(fp8_pool(sess, unique_name, fmt), B)
        buf = sess.shared_buffer(1 << 16)
        k = buf.array((B, HKV, D), np.float16)
        v = buf.array((B, HKV, D), np.float16, offset=k.nbytes)
        k[...] = kv_rows(rng, B, K_SCALE[0], fmt, np.float16)
        v[...] = kv_rows(rng, B, V_SCALE[0], fmt, np.float16)
        o, lse = dec.run(one_hot_q(B, np.float32), 0, k=k, v=v, return_lse=True)
        check(o, lse, k, v, 0, fmt, np.float32)


def test_a_plans_q_dtype_is_checked_at_every_run(client, unique_name):
    """Session.create_plan(q_dtype=...): a dtype that is not a query type is refused at
    CreatePlan naming q_dtype; set, a run whose q has another dtype is refused naming q.dtype,
    and one with it runs."""
    with client.session() as sess:
        pool = fp8_pool(sess, unique_name, "float8_e4m3fn")
        pages = pool.allocate(2)
        with pytest.raises(attnd.AttndError, match=r"q_dtype=DTYPE_FLOAT8_E5M2 is not a query"):
            sess.create_plan(pool.pool_id, "decode", HQ, [0, 1, 2], pages, [1, 1],
                             q_dtype="float8_e5m2")
        plan = sess.create_plan(pool.pool_id, "decode", HQ, [0, 1, 2], pages, [1, 1],
                                q_dtype="float16")
        from attnd.v1 import attnd_pb2 as pb

        def run(q):
            req = pb.RunRequest(plan_id=plan.plan_id, layer=0)
            req.q.dtype = pb.DTYPE_FLOAT16 if q.dtype == np.float16 else pb.DTYPE_FLOAT32
            req.q.shape.extend(q.shape)
            req.q.inline_data = q.tobytes()
            return sess.call("run", req)

        q = np.ones((2, HQ, D), np.float32)
        with pytest.raises(attnd.AttndError,
                           match=r"q.dtype=DTYPE_FLOAT32 but the plan was created with "
                                 r"q_dtype=DTYPE_FLOAT16"):
            run(q)
        assert len(run(q.astype(np.float16)).o.inline_data) == 2 * HQ * D * 2
