"""The daemon restarts under a live client: unary calls ride it out with retries (UNAVAILABLE
only), the old stream session reports Unavailable, and a new session works on the same Client."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import attnd


def _decode_once(sess, name):
    pool = sess.create_pool(name, num_layers=1, num_kv_heads=1, head_dim=64, page_size=16,
                            kv_dtype="float32", num_pages=2)
    pages = pool.allocate(1)
    dec = attnd.BatchDecodeWrapper(pool).plan([0, 1], pages, [1], num_qo_heads=1)
    v = np.full((1, 1, 64), 0.5, np.float32)
    o = dec.run(np.ones((1, 1, 64), np.float32), 0, k=np.ones((1, 1, 64), np.float32), v=v)
    np.testing.assert_allclose(o, v, rtol=1e-6)  # one key: o = its v
    return pool


def test_client_survives_daemon_restart(own_daemon, unique_name):
    client = attnd.Client(own_daemon.target, retries=30, backoff=0.05, max_backoff=0.5,
                          timeout=10)
    stream = client.session("before")
    unary = client.session("before-unary", stream=False)
    _decode_once(stream, unique_name)
    version = client.server_info().version

    own_daemon.stop()
    with pytest.raises(attnd.Unavailable):
        stream.allocate_pages("x", 1)
    restarter = threading.Timer(0.5, own_daemon.start)
    restarter.start()
    t0 = time.monotonic()
    try:
        # Retried on UNAVAILABLE until the new daemon answers.
        assert client.server_info().version == version
        assert client.health() == "SERVING"
    finally:
        restarter.join()
    assert time.monotonic() - t0 < 30

    # The old stream session died with the old daemon; it says so and stays dead.
    with pytest.raises(attnd.Unavailable):
        stream.allocate_pages("x", 1)
    # The unary session's id is unknown to the new daemon.
    with pytest.raises(attnd.NotFound):
        unary.allocate_pages("x", 1)
    # A new session on the same client works, and the pool name is free again.
    with client.session("after") as fresh:
        _decode_once(fresh, unique_name)
    client.close()


def test_new_stream_session_waits_for_daemon(own_daemon):
    """Opening a stream session while the daemon is down is retried (UNAVAILABLE)."""
    own_daemon.stop()
    client = attnd.Client(own_daemon.target, retries=30, backoff=0.05, max_backoff=0.5)
    restarter = threading.Timer(0.3, own_daemon.start)
    restarter.start()
    try:
        with client.session("late") as sess:
            assert sess.id
            assert sess.server_info().backend == "cpu"
    finally:
        restarter.join()
        client.close()


def test_no_retry_without_retries(tmp_path):
    client = attnd.Client(str(tmp_path / "none.sock"), retries=0)
    t0 = time.monotonic()
    with pytest.raises(attnd.Unavailable):
        client.server_info()
    assert time.monotonic() - t0 < 5
    client.close()
