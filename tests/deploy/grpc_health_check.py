"""A raw grpc.health.v1.Health/Check call, without generated stubs (grpcio only).

    python tests/deploy/grpc_health_check.py TARGET [SERVICE] [EXPECTED]

Prints the status (SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, or the gRPC error code when
the call fails, e.g. NOT_FOUND for a service the server does not know). With EXPECTED, exits 0
only when the status equals it; without, exits 0 only for SERVING.
"""

from __future__ import annotations

import sys

import grpc

# grpc.health.v1.HealthCheckResponse.ServingStatus
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{string service = 1}; the empty string is the default, i.e. no field."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_status(response: bytes) -> int:
    """HealthCheckResponse{ServingStatus status = 1}; absent = 0 (UNKNOWN)."""
    status = 0
    i = 0
    while i < len(response):
        key = response[i]
        i += 1
        field, wire_type = key >> 3, key & 7
        if wire_type != 0:
            raise ValueError(f"unexpected wire type {wire_type} in HealthCheckResponse")
        value = shift = 0
        while True:
            byte = response[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if field == 1:
            status = value
    return status


def check(target: str, service: str = "", timeout_s: float = 5.0) -> str:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            response = call(encode_request(service), timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as error:  # e.g. NOT_FOUND for an unknown service
            return error.code().name
    return _STATUS_NAMES.get(decode_status(response), "INVALID")


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 4:
        print(__doc__, file=sys.stderr)
        return 2
    service = argv[2] if len(argv) > 2 else ""
    expected = argv[3] if len(argv) > 3 else "SERVING"
    status = check(argv[1], service)
    print(f"health check {argv[1]} service={service!r}: {status}")
    return 0 if status == expected else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
