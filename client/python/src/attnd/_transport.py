"""Channel set-up, metadata, retries and the hand-encoded grpc.health.v1 messages.

Shared by the blocking client (attnd.client) and the asyncio client (attnd.aio).
"""

from __future__ import annotations

import os
import random
from typing import List, Optional, Sequence, Tuple

import grpc

DEFAULT_TARGET = "unix:///tmp/attnd.sock"
SESSION_METADATA_KEY = "x-attnd-session"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

def _command_tables():
    """From the generated descriptors, so new commands of the wire API need no change here:
    UNARY_METHOD: stream command (SessionRequest `command` field) -> unary method of the service
        (the CamelCase of the field name, e.g. append_kv -> AppendKv);
    RESULT_FIELD: stream command -> the SessionResponse `result` field answering it (the one of
        the unary method's response type, e.g. get_server_info -> server_info)."""
    from attnd.v1 import attnd_pb2 as pb

    methods = pb.DESCRIPTOR.services_by_name["Attnd"].methods_by_name
    results = {f.message_type.full_name: f.name
               for f in pb.SessionResponse.DESCRIPTOR.oneofs_by_name["result"].fields}
    unary, result = {}, {"open": "open"}
    for field in pb.SessionRequest.DESCRIPTOR.oneofs_by_name["command"].fields:
        if field.name == "open":
            continue
        method = "".join(part.capitalize() for part in field.name.split("_"))
        if method not in methods:
            raise RuntimeError(f"attnd.v1: stream command {field.name} has no unary method {method}")
        unary[field.name] = method
        result[field.name] = results[methods[method].output_type.full_name]
    return unary, result


UNARY_METHOD, RESULT_FIELD = _command_tables()


def default_target() -> str:
    """``$ATTND_TARGET`` if set, else ``unix:///tmp/attnd.sock``."""
    return os.environ.get("ATTND_TARGET", DEFAULT_TARGET)


def normalize_target(target: Optional[str]) -> str:
    """Accepts "unix:///path", "unix:/path", a bare absolute socket path, or "host:port"."""
    if not target:
        return default_target()
    if target.startswith("/"):
        return "unix://" + target
    return target


def channel_options(extra: Sequence[Tuple[str, object]] = ()) -> List[Tuple[str, object]]:
    opts = {
        # The daemon enforces its own --max_message_bytes; the client does not cap messages.
        "grpc.max_send_message_length": -1,
        "grpc.max_receive_message_length": -1,
        # Reconnect quickly after a daemon restart instead of grpc's default (up to 120 s).
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.min_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
    for k, v in extra:
        opts[k] = v
    return list(opts.items())


def call_metadata(token: Optional[str], session_id: Optional[str] = None,
                  peer_key: str = "") -> List[Tuple[str, str]]:
    """The metadata of a call: bearer token, the session a unary call names, and the process's
    peer key (attnd.peer) that proves who is calling."""
    md = []
    if token:
        md.append(("authorization", "Bearer " + token))
    if session_id:
        md.append((SESSION_METADATA_KEY, session_id))
    if peer_key:
        md.append(("x-attnd-peer", peer_key))
    return md


class RetryPolicy:
    """Retries on UNAVAILABLE only, with capped exponential backoff and jitter.

    Attributes:
        retries: extra attempts after the first (0 = no retry).
        backoff: first wait, seconds; doubles each attempt up to ``max_backoff``.
    """

    def __init__(self, retries: int = 5, backoff: float = 0.1, max_backoff: float = 2.0):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (0.5 + random.random() / 2)

    @staticmethod
    def retryable(code: Optional[grpc.StatusCode]) -> bool:
        return code == grpc.StatusCode.UNAVAILABLE


# --- grpc.health.v1, hand-encoded (two one-field messages; no health stubs needed) ----------
#   message HealthCheckRequest  { string service = 1; }
#   message HealthCheckResponse { ServingStatus status = 1; }
#   enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
HEALTH_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_health_request(service: str = "") -> bytes:
    data = service.encode("utf-8")
    return b"\x0a" + _varint(len(data)) + data if data else b""


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint in health response")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def decode_health_response(data: bytes) -> str:
    """The ServingStatus name in a HealthCheckResponse (unknown fields are skipped)."""
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"bad wire type {wire} in health response")
    return HEALTH_STATUS_NAMES.get(status, f"STATUS_{status}")
