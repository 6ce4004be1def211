"""Tensors on the wire: dtype names, numpy arrays <-> ``attnd.v1.Tensor`` (inline bytes), bfloat16.

numpy has no bfloat16, so bfloat16 data travels as a ``uint16`` array holding the raw bits plus an
explicit ``dtype="bfloat16"``; :func:`float32_to_bfloat16` and :func:`bfloat16_to_float32` convert.
Arrays whose dtype is ``ml_dtypes.bfloat16`` (if the user has that package) are accepted as is.
Outputs of bfloat16 runs come back as ``uint16`` arrays of bits.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from attnd.v1 import attnd_pb2 as pb

__all__ = [
    "DTYPE_NAMES",
    "dtype_enum",
    "dtype_name",
    "dtype_itemsize",
    "array_dtype_enum",
    "numpy_to_tensor",
    "tensor_to_numpy",
    "float32_to_bfloat16",
    "bfloat16_to_float32",
]

# Canonical names, as used by this package's API (and by torch, minus the "torch." prefix).
DTYPE_NAMES = {
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_FLOAT16: "float16",
    pb.DTYPE_BFLOAT16: "bfloat16",
    pb.DTYPE_FLOAT8_E4M3: "float8_e4m3fn",
    pb.DTYPE_FLOAT8_E5M2: "float8_e5m2",
}
_ITEMSIZE = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT16: 2, pb.DTYPE_BFLOAT16: 2, pb.DTYPE_FLOAT8_E4M3: 1,
             pb.DTYPE_FLOAT8_E5M2: 1}
_ALIASES = {
    "float32": pb.DTYPE_FLOAT32, "fp32": pb.DTYPE_FLOAT32, "float": pb.DTYPE_FLOAT32,
    "f4": pb.DTYPE_FLOAT32, "<f4": pb.DTYPE_FLOAT32,
    "float16": pb.DTYPE_FLOAT16, "fp16": pb.DTYPE_FLOAT16, "half": pb.DTYPE_FLOAT16,
    "f2": pb.DTYPE_FLOAT16, "<f2": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16, "bf16": pb.DTYPE_BFLOAT16,
    "float8_e4m3": pb.DTYPE_FLOAT8_E4M3, "float8_e4m3fn": pb.DTYPE_FLOAT8_E4M3,
    "fp8_e4m3": pb.DTYPE_FLOAT8_E4M3, "e4m3": pb.DTYPE_FLOAT8_E4M3,
    "float8_e5m2": pb.DTYPE_FLOAT8_E5M2, "fp8_e5m2": pb.DTYPE_FLOAT8_E5M2, "e5m2": pb.DTYPE_FLOAT8_E5M2,
}
_NUMPY_FOR = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_FLOAT16: np.dtype("<f2"),
              pb.DTYPE_BFLOAT16: np.dtype("<u2"), pb.DTYPE_FLOAT8_E4M3: np.dtype("u1"),
              pb.DTYPE_FLOAT8_E5M2: np.dtype("u1")}


def dtype_enum(dtype: Any) -> int:
    """The ``attnd.v1.DType`` value of a dtype given as a name ("float16", "bf16", ...), a numpy
    dtype, a torch dtype, or an enum value already."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) not in _ITEMSIZE:
            raise ValueError(f"unknown attnd DType value {dtype}")
        return int(dtype)
    if isinstance(dtype, str):
        name = dtype[len("torch."):] if dtype.startswith("torch.") else dtype
    elif str(dtype).startswith("torch."):
        name = str(dtype)[len("torch."):]
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError as exc:
            raise ValueError(f"unsupported dtype {dtype!r}") from exc
    key = name.lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"unsupported dtype {dtype!r}: use float32, float16 or bfloat16")


def dtype_name(dtype: Any) -> str:
    return DTYPE_NAMES[dtype_enum(dtype)]


def dtype_itemsize(dtype: Any) -> int:
    return _ITEMSIZE[dtype_enum(dtype)]


def array_dtype_enum(arr: np.ndarray, dtype: Optional[Any]) -> int:
    if dtype is not None:
        want = dtype_enum(dtype)
        if arr.dtype.itemsize != _ITEMSIZE[want]:
            raise ValueError(f"array of {arr.dtype} ({arr.dtype.itemsize} bytes per element) "
                             f"cannot be sent as {DTYPE_NAMES[want]}")
        if want in (pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16) and arr.dtype.kind != "f":
            raise ValueError(f"array of {arr.dtype} cannot be sent as {DTYPE_NAMES[want]}")
        return want
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return pb.DTYPE_BFLOAT16
    if arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4):
        return pb.DTYPE_FLOAT16 if arr.dtype.itemsize == 2 else pb.DTYPE_FLOAT32
    if arr.dtype == np.uint16:
        raise ValueError("a uint16 array is ambiguous: pass dtype='bfloat16' to send it as bfloat16 bits")
    raise ValueError(f"unsupported array dtype {arr.dtype}: use float32, float16 or bfloat16 "
                     "(uint16 bits with dtype='bfloat16')")


def numpy_to_tensor(arr: Any, dtype: Optional[Any] = None,
                    shape: Optional[Sequence[int]] = None) -> pb.Tensor:
    """An inline ``Tensor`` holding ``arr``'s elements (row-major, little-endian).

    Args:
        arr: array-like of float32/float16 (or uint16 bfloat16 bits with ``dtype="bfloat16"``).
        dtype: the wire dtype; default: inferred from ``arr``.
        shape: the wire shape; default ``arr.shape``.
    """
    arr = np.asarray(arr)
    enum = array_dtype_enum(arr, dtype)
    wire = np.ascontiguousarray(arr)
    if wire.dtype.byteorder == ">":
        wire = wire.astype(wire.dtype.newbyteorder("<"))
    if enum == pb.DTYPE_BFLOAT16 and wire.dtype.name == "bfloat16":
        wire = wire.view(np.uint16)
    t = pb.Tensor(dtype=enum, shape=list(shape if shape is not None else arr.shape))
    t.inline_data = wire.tobytes()
    return t


def tensor_to_numpy(t: pb.Tensor) -> np.ndarray:
    """The array of an inline ``Tensor``: float32/float16 arrays, bfloat16 as uint16 bits."""
    if t.WhichOneof("data") != "inline_data":
        raise ValueError("tensor is not inline (it names a buffer slice)")
    if t.dtype not in _NUMPY_FOR:
        raise ValueError(f"tensor has unknown dtype {t.dtype}")
    shape = tuple(int(s) for s in t.shape)
    arr = np.frombuffer(t.inline_data, dtype=_NUMPY_FOR[t.dtype])
    expected = int(np.prod(shape)) if shape else 1
    if arr.size != expected:
        raise ValueError(f"inline tensor has {arr.size} elements, shape {shape} needs {expected}")
    # frombuffer views immutable bytes; copy so callers get an ordinary writable array.
    return arr.reshape(shape).astype(arr.dtype.newbyteorder("="), copy=True)


def float32_to_bfloat16(x: Any) -> np.ndarray:
    """bfloat16 bits (uint16 array) of ``x``, rounded to nearest even, NaN kept NaN."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bfloat16_to_float32(bits: Any) -> np.ndarray:
    """float32 values of bfloat16 bits (a uint16 array, or an ml_dtypes.bfloat16 array)."""
    b = np.asarray(bits)
    if b.dtype.name == "bfloat16":
        b = b.view(np.uint16)
    if b.dtype != np.uint16:
        raise ValueError(f"expected uint16 bfloat16 bits, got {b.dtype}")
    return (np.ascontiguousarray(b).astype(np.uint32) << 16).view(np.float32)
