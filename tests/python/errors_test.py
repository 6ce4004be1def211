"""Every exception type the client raises, each from a real bad request to a real daemon, on the
stream session and on the unary session alike."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import attnd
from attnd.v1 import attnd_pb2 as pb


@pytest.fixture(params=[True, False], ids=["stream", "unary"])
def sess(request, client):
    s = client.session("errors-test", stream=request.param)
    yield s
    s.close()


@pytest.fixture()
def pool(sess, unique_name):
    return sess.create_pool(unique_name, num_layers=2, num_kv_heads=2, head_dim=64, page_size=16,
                            kv_dtype="float32", num_pages=4)


def _assert_error(excinfo, cls, code, *fragments):
    err = excinfo.value
    assert type(err) is cls
    assert isinstance(err, attnd.AttndError)
    assert err.code == code
    for f in fragments:
        assert f in err.message, (f, err.message)


def test_invalid_argument(sess, unique_name):
    with pytest.raises(attnd.InvalidArgument) as e:
        sess.create_pool(unique_name, num_layers=0, num_kv_heads=2, head_dim=64, page_size=16,
                         num_pages=4)
    _assert_error(e, attnd.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "num_layers=0")
    assert isinstance(e.value, ValueError)


def test_invalid_argument_last_page_len(pool):
    pages = pool.allocate(1)
    with pytest.raises(attnd.InvalidArgument) as e:
        attnd.BatchDecodeWrapper(pool).plan([0, 1], pages, [17], num_qo_heads=2)
    _assert_error(e, attnd.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "kv_last_page_len")


def test_not_found(sess):
    with pytest.raises(attnd.NotFound) as e:
        sess.describe_pool("no-such-pool-id")
    _assert_error(e, attnd.NotFound, grpc.StatusCode.NOT_FOUND, "no-such-pool-id")
    with pytest.raises(attnd.NotFound):
        sess.attach_pool("no_pool_has_this_name")
    with pytest.raises(attnd.NotFound):
        sess.delete_plan("no-such-plan")


def test_out_of_range_layer_and_page(pool):
    pages = pool.allocate(1)
    dec = attnd.BatchDecodeWrapper(pool).plan([0, 1], pages, [1], num_qo_heads=2)
    q = np.zeros((1, 2, 64), np.float32)
    with pytest.raises(attnd.OutOfRange) as e:
        dec.run(q, layer=2)
    _assert_error(e, attnd.OutOfRange, grpc.StatusCode.OUT_OF_RANGE, "layer=2")
    with pytest.raises(attnd.OutOfRange) as e:
        attnd.BatchDecodeWrapper(pool).plan([0, 1], [99], [1], num_qo_heads=2)
    _assert_error(e, attnd.OutOfRange, grpc.StatusCode.OUT_OF_RANGE, "kv_indices[0]=99")


def test_permission_denied_pages_of_another_session(client, pool):
    """A page this session does not hold cannot be named, even if it is allocated elsewhere."""
    with client.session("other") as other:
        theirs = other.attach_pool(pool.name).allocate(1)
        with pytest.raises(attnd.PermissionDenied) as e:
            attnd.BatchDecodeWrapper(pool).plan([0, 1], theirs, [1], num_qo_heads=2)
        _assert_error(e, attnd.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED,
                      "not held by this session")


def test_permission_denied_pool_not_attached(client, pool):
    with client.session("stranger") as stranger:
        with pytest.raises(attnd.PermissionDenied) as e:
            stranger.allocate_pages(pool.pool_id, 1)
        _assert_error(e, attnd.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "AttachPool")


def test_failed_precondition(pool):
    pages = pool.allocate(1)
    with pytest.raises(attnd.FailedPrecondition) as e:
        pool.fork(pages, "fg-not-a-grant")
    _assert_error(e, attnd.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION,
                  "target_grant")
    # releasing more references than held: one held, two released in one call
    with pytest.raises(attnd.FailedPrecondition) as e:
        pool.free(pages * 2)
    _assert_error(e, attnd.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION,
                  "would be released")


def test_double_free_is_permission_denied(pool):
    pages = pool.allocate(1)
    pool.free(pages)
    with pytest.raises(attnd.PermissionDenied) as e:
        pool.free(pages)
    _assert_error(e, attnd.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED,
                  f"page_ids[0]={pages[0]}")


def test_resource_exhausted(pool):
    with pytest.raises(attnd.ResourceExhausted) as e:
        pool.allocate(5)
    _assert_error(e, attnd.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "4 free pages")
    assert len(pool.allocate(4)) == 4  # all or nothing: the failed call took none


def test_already_exists(sess, pool):
    with pytest.raises(attnd.AlreadyExists) as e:
        sess.create_pool(pool.name, num_layers=1, num_kv_heads=1, head_dim=64, page_size=16,
                         num_pages=1)
    _assert_error(e, attnd.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, pool.name)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_deadline_exceeded(client, unique_name, stream):
    """A run that takes longer than the timeout: DEADLINE_EXCEEDED. A stream session whose
    command went unanswered cannot keep its order, so it is given up (Unavailable after)."""
    n, h, d = 1024, 8, 128
    sess = client.session(stream=stream, timeout=60)
    pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=h, head_dim=d, page_size=64,
                            kv_dtype="float32", num_pages=n // 64)
    pages = pool.allocate(n // 64)
    pre = attnd.BatchPrefillWrapper(pool).plan([0, len(pages)], pages, [64], [0, n],
                                               num_qo_heads=h)
    q = np.ones((n, h, d), np.float32)
    sess.timeout = 0.02
    with pytest.raises(attnd.DeadlineExceeded) as e:
        pre.run(q, 0, k=q[:, :h], v=q[:, :h])
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(e.value, TimeoutError)
    sess.timeout = 60
    if stream:
        with pytest.raises(attnd.Unavailable):
            pool.describe()
    else:
        assert pool.describe().num_pages == n // 64
    sess.close()


def test_unavailable_without_daemon(tmp_path):
    c = attnd.Client(str(tmp_path / "nobody.sock"), retries=2, backoff=0.01, timeout=5)
    with pytest.raises(attnd.Unavailable) as e:
        c.server_info()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(attnd.Unavailable):
        c.session()
    c.close()


def test_errors_do_not_break_the_stream(client, unique_name):
    """After an error answer the same stream session keeps serving commands in order."""
    with client.session() as s:
        for _ in range(3):
            with pytest.raises(attnd.NotFound):
                s.describe_pool("missing")
        pool = s.create_pool(unique_name, num_layers=1, num_kv_heads=1, head_dim=64,
                             page_size=16, num_pages=2)
        assert pool.describe().num_pages == 2


def test_open_twice_on_stream_is_failed_precondition(client):
    with client.session() as s:
        with pytest.raises(attnd.FailedPrecondition) as e:
            s.call("open", pb.OpenSessionRequest(client_name="again"))
        assert "open" in e.value.message
        assert s.server_info().version
