"""Generated gRPC stubs of the attnd wire API (proto/attnd/v1/attnd.proto).

`attnd_pb2` (messages) and `attnd_pb2_grpc` (AttndStub) are generated when the package is built
(`pip install ./client/python`); they are not in the repository.
"""

try:
    from attnd.v1 import attnd_pb2, attnd_pb2_grpc  # noqa: F401
except ImportError as exc:  # pragma: no cover - only in a checkout that was never built
    raise ImportError(
        "attnd.v1 stubs are missing: install the package (pip install ./client/python) or run "
        "`python setup.py build_py` in client/python to generate them") from exc

__all__ = ["attnd_pb2", "attnd_pb2_grpc"]
