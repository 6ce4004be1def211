"""GPU host only: torch CUDA tensors through the zero-copy CUDA IPC path of a CUDA daemon, checked
against the float64 reference. Skips (with the reason) without torch, without a CUDA device, or
without the daemon binary; needs a daemon built with CUDA ($ATTND_BIN).

    ATTND_BIN=build/bin/attnd python -m pytest tests/python/gpu_torch_test.py -v
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

import attnd
from attention_reference import reference_batch

torch = pytest.importorskip("torch", reason="torch is not installed")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA device", allow_module_level=True)

from conftest import make_daemon  # noqa: E402

TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4}


@pytest.fixture(scope="module")
def cuda_daemon():
    with tempfile.TemporaryDirectory(prefix="attnd-gpu-py-") as tmp:
        d = make_daemon(Path(tmp), backend="cuda")
        yield d
        d.stop()


@pytest.fixture()
def gclient(cuda_daemon):
    with attnd.Client(cuda_daemon.target, timeout=60) as c:
        info = c.server_info()
        assert info.backend == "cuda" and info.cuda_ipc, info
        yield c


def _f64(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


@pytest.mark.parametrize("ipc_method", ["driver", "torch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_zero_copy_prefill_and_decode(gclient, unique_name, dtype, ipc_method):
    dev = torch.device("cuda", 0)
    gen = torch.Generator(device=dev).manual_seed(0)
    hq, hkv, d, page, layers = 8, 2, 128, 16, 2
    prompts = [1, 17, 70]
    tol = TOL[dtype]
    kv_name = "float16" if dtype == torch.float16 else "bfloat16"
    with gclient.session("gpu-test") as sess:
        pool = sess.create_pool(unique_name, num_layers=layers, num_kv_heads=hkv, head_dim=d,
                                page_size=page, kv_dtype=kv_name, num_pages=64)
        pages = [pool.allocate(pool.pages_for(n + 8)) for n in prompts]  # room for 8 decodes
        lens = list(prompts)

        def table():
            indptr, idx, last = [0], [], []
            for b, n in enumerate(lens):
                used = pool.pages_for(n)
                idx += pages[b][:used]
                indptr.append(len(idx))
                last.append(n - (used - 1) * page)
            return indptr, idx, last

        ks = [[None] * len(prompts) for _ in range(layers)]
        vs = [[None] * len(prompts) for _ in range(layers)]
        qo = np.concatenate([[0], np.cumsum(prompts)])
        n = int(qo[-1])
        pre = attnd.BatchPrefillWrapper(pool, ipc_method=ipc_method)
        pre.plan(*table(), qo, num_qo_heads=hq, causal=True, pos_encoding="rope_llama")
        for layer in range(layers):
            q = torch.randn(n, hq, d, device=dev, dtype=dtype, generator=gen)
            k = torch.randn(n, hkv, d, device=dev, dtype=dtype, generator=gen)
            v = torch.randn(n, hkv, d, device=dev, dtype=dtype, generator=gen)
            out = torch.full_like(q, float("nan"))  # poisoned: every row must be written
            o, lse = pre.run(q, layer, k=k, v=v, out=out, return_lse=True)
            assert o.data_ptr() == out.data_ptr() and o.is_cuda and lse.is_cuda
            for b in range(len(prompts)):
                ks[layer][b] = _f64(k[qo[b]:qo[b + 1]])
                vs[layer][b] = _f64(v[qo[b]:qo[b + 1]])
            ref_o, ref_lse = reference_batch(_f64(q), qo, ks[layer], vs[layer], causal=True,
                                             rope=True)
            assert not torch.isnan(o).any()
            np.testing.assert_allclose(_f64(o), ref_o, atol=tol, rtol=tol)
            np.testing.assert_allclose(_f64(lse), ref_lse, atol=tol, rtol=tol)
        pre.delete()
        registered_after_prefill = len(sess.buffers)

        # Decode with preallocated staging buffers: registration happens once, then is reused.
        B = len(prompts)
        q_buf = torch.empty(B, hq, d, device=dev, dtype=dtype)
        k_buf = torch.empty(B, hkv, d, device=dev, dtype=dtype)
        v_buf = torch.empty(B, hkv, d, device=dev, dtype=dtype)
        o_buf = torch.empty(B, hq, d, device=dev, dtype=dtype)
        dec = attnd.BatchDecodeWrapper(pool, ipc_method=ipc_method)
        counts = []
        for step in range(8):
            lens = [x + 1 for x in lens]
            dec.plan(*table(), num_qo_heads=hq, pos_encoding="rope_llama")
            for layer in range(layers):
                q_buf.normal_(generator=gen)
                k_buf.normal_(generator=gen)
                v_buf.normal_(generator=gen)
                o_buf.fill_(float("nan"))
                dec.run(q_buf, layer, k=k_buf, v=v_buf, out=o_buf)
                for b in range(B):
                    ks[layer][b] = np.concatenate([ks[layer][b], _f64(k_buf[b:b + 1])])
                    vs[layer][b] = np.concatenate([vs[layer][b], _f64(v_buf[b:b + 1])])
                ref_o, _ = reference_batch(_f64(q_buf), np.arange(B + 1), ks[layer], vs[layer],
                                           rope=True)
                assert not torch.isnan(o_buf).any()
                np.testing.assert_allclose(_f64(o_buf), ref_o, atol=tol, rtol=tol)
            counts.append(len(sess.buffers))
        assert counts[0] >= registered_after_prefill
        assert len(set(counts)) == 1, f"buffers re-registered during decode: {counts}"


def test_zero_copy_matches_host_copy_path(gclient, unique_name):
    """The same decode through CUDA IPC and through the host (zero_copy=False) agree exactly."""
    dev = torch.device("cuda", 0)
    with gclient.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64,
                                page_size=16, kv_dtype="float16", num_pages=4)
        pages = pool.allocate(2)
        pre = attnd.BatchPrefillWrapper(pool).plan([0, 2], pages, [4], [0, 20], num_qo_heads=4)
        kv = torch.randn(20, 1, 64, device=dev, dtype=torch.float16)
        pre.append_kv(kv, kv * 0.5, 0)
        q = torch.randn(1, 4, 64, device=dev, dtype=torch.float16)
        fast = attnd.BatchDecodeWrapper(pool).plan([0, 2], pages, [4], num_qo_heads=4)
        slow = attnd.BatchDecodeWrapper(pool, zero_copy=False).plan([0, 2], pages, [4],
                                                                    num_qo_heads=4)
        a = fast.run(q, 0)
        b = slow.run(q, 0)
        assert a.is_cuda and b.is_cuda
        assert torch.equal(a, b)


def test_async_completion_matches_sync(gclient, unique_name):
    """completion="async": no CPU sync; the caller's stream waits on the daemon's completion
    event, so a kernel queued after run() on that stream sees the output."""
    from attnd.v1 import attnd_pb2 as pb

    if not hasattr(pb, "RegisterEventRequest"):
        pytest.skip("wire API without interprocess events")
    dev = torch.device("cuda", 0)
    with gclient.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=2, head_dim=128,
                                page_size=16, kv_dtype="bfloat16", num_pages=8)
        pages = pool.allocate(2)
        dec = attnd.BatchDecodeWrapper(pool).plan([0, 2], pages, [16], num_qo_heads=8)
        pre = attnd.BatchPrefillWrapper(pool).plan([0, 2], pages, [16], [0, 32], num_qo_heads=8)
        kv = torch.randn(32, 2, 128, device=dev, dtype=torch.bfloat16)
        pre.append_kv(kv, -kv, 0, completion="async")
        q = torch.randn(1, 8, 128, device=dev, dtype=torch.bfloat16)
        out_async = torch.full_like(q, float("nan"))
        dec.run(q, 0, out=out_async, completion="async")
        check = out_async * 1  # queued on the same stream: must see the daemon's writes
        out_sync = dec.run(q, 0)
        torch.cuda.synchronize()
        assert not torch.isnan(check).any()
        assert torch.equal(check, out_sync)


def _naive_merge(v, s):
    """float64 merge over axis 1 of v [n, states, h, d], s [n, states, h] (natural-log LSE)."""
    v, s = _f64(v), _f64(s)
    m = s.max(axis=1)
    finite = np.isfinite(m)
    base = np.where(finite, m, 0.0)[:, None, :]
    w = np.where(np.isfinite(s), np.exp(s - base), 0.0)
    total = w.sum(axis=1)
    safe = np.where(finite, total, 1.0)
    out_s = np.where(finite, np.where(finite, m, 0.0) + np.log(safe), -np.inf)
    wn = w / safe[:, None, :]
    out_v = np.einsum("nih,nihd->nhd", wn, np.where(np.isfinite(s)[..., None], v, 0.0))
    return out_v, out_s


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["fp16", "bf16", "fp32"])
def test_zero_copy_merges(gclient, dtype):
    """MergeState / MergeStates / in place on CUDA tensors (the daemon's merge kernel through
    CUDA IPC), against a float64 merge; empty states (-inf) and rows with no finite state."""
    dev = torch.device("cuda", 0)
    gen = torch.Generator(device=dev).manual_seed(3)
    n, h, d = 37, 8, 128
    tol = TOL[dtype] if dtype != torch.float32 else 1e-5
    with gclient.session() as sess:
        va = torch.randn(n, h, d, device=dev, dtype=dtype, generator=gen)
        vb = torch.randn(n, h, d, device=dev, dtype=dtype, generator=gen)
        sa = torch.rand(n, h, device=dev, generator=gen) * 40 - 20
        sb = torch.rand(n, h, device=dev, generator=gen) * 40 - 20
        sa[0, 0] = float("-inf")
        sa[1, :] = sb[1, :] = float("-inf")
        vb[2, 3] = float("nan")  # an empty state's v is never read
        sb[2, 3] = float("-inf")
        ref_v, ref_s = _naive_merge(torch.stack([va, vb], 1), torch.stack([sa, sb], 1))
        v_out = torch.full_like(va, float("nan"))
        s_out = torch.full_like(sa, float("nan"))
        got_v, got_s = sess.merge_state(va, sa, vb, sb, v_out=v_out, s_out=s_out)
        assert got_v is v_out and got_s is s_out
        np.testing.assert_allclose(_f64(got_v), ref_v, atol=tol, rtol=tol)
        np.testing.assert_allclose(_f64(got_s), ref_s, atol=1e-4, rtol=1e-5)
        assert torch.all(got_v[1] == 0) and torch.all(torch.isinf(got_s[1]))
        # New outputs, MergeStates of the same states: the same result.
        mv, ms = sess.merge_states(torch.stack([va, vb], 1), torch.stack([sa, sb], 1))
        assert mv.is_cuda and torch.equal(mv, got_v) and torch.equal(ms, got_s)
        # In place (merge_state_in_place): (va, sa) become the merge.
        sess.merge_state_in_place(va, sa, vb, sb)
        assert torch.equal(va, got_v) and torch.equal(sa, got_s)
        # Async completion: a kernel queued after the call on the stream sees the result.
        out = torch.full_like(vb, float("nan"))
        sess.merge_state(vb, sb, vb, sb, v_out=out, return_s=False, completion="async")
        check = out * 1
        torch.cuda.synchronize()
        same = torch.where(torch.isinf(sb)[..., None], torch.zeros_like(vb), vb)
        np.testing.assert_allclose(_f64(check), _f64(same), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_zero_copy_ragged_run(gclient, dtype):
    """RunRagged on CUDA tensors (the ragged prefill kernel through CUDA IPC): causal, RoPE with
    offsets, an append, a decode-like row and a request without keys, against the float64
    reference; the wrapper and async completion agree with the sync call."""
    dev = torch.device("cuda", 0)
    gen = torch.Generator(device=dev).manual_seed(7)
    hq, hkv, d = 8, 2, 128
    qo_lens, kv_lens = [33, 1, 70, 2], [100, 17, 70, 0]
    qo = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    kv = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q = torch.randn(int(qo[-1]), hq, d, device=dev, dtype=dtype, generator=gen)
    k = torch.randn(int(kv[-1]), hkv, d, device=dev, dtype=dtype, generator=gen)
    v = torch.randn(int(kv[-1]), hkv, d, device=dev, dtype=dtype, generator=gen)
    offsets = [4, 0, 9, 0]
    with gclient.session() as sess:
        o, lse = sess.run_ragged(q, k, v, qo, kv, return_lse=True, causal=True,
                                 pos_encoding="rope_llama", rope_offsets=offsets)
        assert o.is_cuda and lse.is_cuda
        for b in range(len(qo_lens)):
            if kv_lens[b] < qo_lens[b]:  # no keys: o = 0, lse = -inf
                assert torch.all(o[qo[b]:qo[b + 1]] == 0)
                assert torch.all(torch.isinf(lse[qo[b]:qo[b + 1]]))
                continue
            ref_o, ref_lse = reference_batch(
                _f64(q[qo[b]:qo[b + 1]]), np.array([0, qo_lens[b]]), [_f64(k[kv[b]:kv[b + 1]])],
                [_f64(v[kv[b]:kv[b + 1]])], rope_offsets=[offsets[b]], causal=True, rope=True)
            np.testing.assert_allclose(_f64(o[qo[b]:qo[b + 1]]), ref_o, atol=TOL[dtype],
                                       rtol=TOL[dtype])
            np.testing.assert_allclose(_f64(lse[qo[b]:qo[b + 1]]), ref_lse, atol=2e-3, rtol=2e-3)
        w = attnd.BatchPrefillRaggedWrapper(sess).plan(qo, kv, hq, hkv, d, causal=True,
                                                       pos_encoding="rope_llama",
                                                       rope_offsets=offsets)
        out = torch.full_like(q, float("nan"))
        w.run(q, k, v, out=out, completion="async")
        check = out * 1  # queued after the daemon's work on this stream
        torch.cuda.synchronize()
        assert torch.equal(check, o)
