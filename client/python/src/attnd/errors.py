"""Typed exceptions for attnd errors.

Every failure the daemon reports is a gRPC status (see the wire API's header comment); the client
raises it as a subclass of :class:`AttndError` chosen by the status code, both for unary calls
(from ``grpc.RpcError``) and for commands on the session stream (from ``SessionResponse.code``):

    try:
        pool.allocate(10_000)
    except attnd.ResourceExhausted as e:
        print(e.code, e.message)   # StatusCode.RESOURCE_EXHAUSTED, "... free ..."
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "AttndError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "error_from_code",
    "error_from_rpc",
]


class AttndError(Exception):
    """Base class of every attnd error.

    Attributes:
        code: the ``grpc.StatusCode`` of the failure.
        message: the daemon's message (names the offending field and value).
        method: the RPC or stream command that failed, e.g. ``"CreatePlan"``, when known.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", code: Optional[grpc.StatusCode] = None,
                 method: Optional[str] = None):
        if code is not None:
            self.code = code
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{self.code.name}: {message}")


class Cancelled(AttndError):
    code = grpc.StatusCode.CANCELLED


class Unknown(AttndError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(AttndError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(AttndError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(AttndError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AttndError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(AttndError, PermissionError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(AttndError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(AttndError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(AttndError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(AttndError, IndexError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(AttndError, NotImplementedError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(AttndError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(AttndError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(AttndError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(AttndError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[AttndError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}
# grpc.StatusCode values are (int, name) pairs; the stream carries the int.
_BY_INT: Dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code_from_int(code: int) -> grpc.StatusCode:
    return _BY_INT.get(int(code), grpc.StatusCode.UNKNOWN)


def error_from_code(code, message: str, method: Optional[str] = None) -> AttndError:
    """The exception for a status code (a ``grpc.StatusCode`` or its integer value)."""
    if not isinstance(code, grpc.StatusCode):
        code = status_code_from_int(code)
    cls = _BY_CODE.get(code, AttndError)
    return cls(message, code=code, method=method)


def error_from_rpc(err: grpc.RpcError, method: Optional[str] = None) -> AttndError:
    """Converts a ``grpc.RpcError`` (sync) or ``grpc.aio.AioRpcError`` into an AttndError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return error_from_code(code, details or "", method=method)
