"""Pools, pages and sessions through the client: allocation, sharing, attach by name, clean-up."""

from __future__ import annotations

import time

import numpy as np
import pytest

import attnd
from attnd.v1 import attnd_pb2
from paged_helpers import PagedBatch
from attention_reference import reference_batch


def test_server_info_and_health(client):
    info = client.server_info()
    assert info.backend == "cpu"
    assert info.version
    assert 64 in info.head_dims and (not info.page_sizes or 16 in info.page_sizes)
    assert not info.cuda_ipc
    assert client.health() == "SERVING"
    assert client.health("attnd.v1.Attnd") == "SERVING"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_pool_lifecycle(client, unique_name, stream):
    with client.session(stream=stream) as sess:
        pool = sess.create_pool(unique_name, num_layers=3, num_kv_heads=2, head_dim=64,
                                page_size=16, kv_dtype="float16", num_pages=10)
        assert (pool.num_layers, pool.num_kv_heads, pool.head_dim, pool.page_size) == (3, 2, 64, 16)
        assert pool.kv_dtype == "float16" and pool.num_pages == 10
        # strides of the NHD layout [pages][2][page_size][heads][dim], fp16
        info = pool.info
        assert info.head_stride_bytes == 64 * 2
        assert info.token_stride_bytes == 2 * 64 * 2
        assert info.kv_stride_bytes == 16 * 2 * 64 * 2
        assert info.page_stride_bytes == 2 * info.kv_stride_bytes
        assert info.layer_stride_bytes == 10 * info.page_stride_bytes

        a = pool.allocate(3)
        assert len(set(a)) == 3 and pool.free_pages == 7
        b = pool.allocate(2)
        assert not set(a) & set(b) and pool.free_pages == 5
        assert pool.fork(a[:1]) == [2]
        assert pool.free(a) == 7            # a[1], a[2] freed; a[0] still has one reference
        assert pool.free(a[:1]) == 8
        assert pool.describe().free_pages == 8
        pool.free(b)
        assert pool.describe().free_pages == 10
        pool.delete()


def test_memory_budget_sizing(client, unique_name):
    with client.session() as sess:
        page_all_layers = 2 * 2 * 16 * 1 * 64 * 4  # layers * (k,v) * page * heads * dim * fp32
        pool = sess.create_pool(unique_name, num_layers=2, num_kv_heads=1, head_dim=64,
                                page_size=16, kv_dtype="float32",
                                memory_budget_bytes=7 * page_all_layers + 5)
        assert pool.num_pages == 7


def test_second_session_attaches_and_shares_a_prefix(client, unique_name):
    """Session A writes a prefix, forks its pages to session B, B decodes on top of it."""
    rng = np.random.default_rng(3)
    with client.session("a") as sa, client.session("b") as sb:
        pa = sa.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64,
                            page_size=4, kv_dtype="float32", num_pages=8)
        pb_ = sb.attach_pool(unique_name)
        assert pb_.pool_id == pa.pool_id and pb_.describe().attached_sessions == 2

        prefix = PagedBatch(pa, 1)
        prefix.grow([8])  # two full pages
        indptr = np.array([0, 8], np.int32)
        pre = attnd.BatchPrefillWrapper(pa).plan(*prefix.table(), indptr, num_qo_heads=1)
        k = rng.standard_normal((8, 1, 64)).astype(np.float32)
        v = rng.standard_normal((8, 1, 64)).astype(np.float32)
        pre.append_kv(k, v, 0)
        pre.delete()

        shared = prefix.pages[0]
        # b's session id is no credential: references reach it through its fork grant
        with pytest.raises(attnd.FailedPrecondition) as e:
            sa.call("fork_pages", attnd_pb2.ForkPagesRequest(
                pool_id=pa.pool_id, page_ids=shared, target_session_id=sb.id))
        assert "target_grant" in e.value.message
        assert pb_.fork_grant and pb_.fork_grant != pa.fork_grant
        assert pa.fork(shared, pb_.fork_grant) == [2, 2]
        own = pb_.allocate(1)
        dec = attnd.BatchDecodeWrapper(pb_).plan([0, 3], shared + own, [1], num_qo_heads=1)
        q = rng.standard_normal((1, 1, 64)).astype(np.float32)
        k1 = rng.standard_normal((1, 1, 64)).astype(np.float32)
        v1 = rng.standard_normal((1, 1, 64)).astype(np.float32)
        o = dec.run(q, 0, k=k1, v=v1)
        ref, _ = reference_batch(q, [0, 1], [np.concatenate([k, k1])], [np.concatenate([v, v1])])
        np.testing.assert_allclose(o, ref, atol=2e-5, rtol=1e-4)

        # a plan whose query (append) position is in a page another session also holds is
        # refused when it is planned
        with pytest.raises(attnd.FailedPrecondition) as e:
            attnd.BatchDecodeWrapper(pb_).plan([0, 2], shared, [4], num_qo_heads=1)
        assert "shared with another session" in e.value.message


def test_closing_a_session_releases_its_pages(client, unique_name):
    owner = client.session("owner")
    pool = owner.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64,
                             page_size=16, num_pages=6)
    with client.session("watcher") as watcher:
        seen = watcher.attach_pool(unique_name)
        pool.allocate(4)
        assert seen.describe().free_pages == 2
        owner.close()
        deadline = time.monotonic() + 5
        while seen.describe().free_pages != 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen.describe().free_pages == 6
    with pytest.raises(attnd.Unavailable):
        pool.allocate(1)  # the closed session refuses commands on the client side


def test_unary_session_lease_expires(own_daemon, unique_name):
    """A unary session that stops calling is released after its lease (1 s here)."""
    with attnd.Client(own_daemon.target) as c:
        lapsed = c.session(stream=False, lease_ms=300)
        assert lapsed.lease_ms == 300
        lapsed.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64, page_size=16,
                           num_pages=3).allocate(3)
        with c.session() as watcher:
            seen = watcher.attach_pool(unique_name)
            deadline = time.monotonic() + 10
            while seen.describe().free_pages != 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert seen.describe().free_pages == 3
        with pytest.raises(attnd.NotFound):
            lapsed.describe_pool(seen.pool_id)


def test_fp8_pools_take_and_report_scales(client, unique_name):
    with client.session() as sess:
        pool = sess.create_pool(unique_name, num_layers=2, num_kv_heads=2, head_dim=16,
                                page_size=4, kv_dtype="float8_e5m2", num_pages=4,
                                k_scale=[0.5, 2.0], v_scale=[[1.0, 2.0], [3.0, 4.0]])
        info = sess.describe_pool(pool.pool_id)
        assert list(info.k_scale) == [0.5, 0.5, 2.0, 2.0]  # per layer, expanded over the heads
        assert list(info.v_scale) == [1.0, 2.0, 3.0, 4.0]
        with pytest.raises(attnd.AttndError, match=r"k_scale has 3 values"):
            sess.create_pool(unique_name + "-bad", num_layers=2, num_kv_heads=2, head_dim=16,
                             page_size=4, kv_dtype="float8_e4m3fn", num_pages=4,
                             k_scale=[1.0, 1.0, 1.0])
