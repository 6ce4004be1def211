"""Zero-copy CUDA tensors: CUDA IPC handles of torch tensors, and the per-session buffer cache.

On the same host a CUDA tensor never crosses the socket. Its allocation is exported once with
``cuIpcGetMemHandle`` and registered with the daemon (``RegisterBuffer``); every later use of any
tensor inside that allocation is sent as a ``BufferSlice`` (buffer id + byte offset). torch is only
imported when a torch tensor is actually passed.

Two ways to get the handle (``method``):
  * ``"driver"`` (default): the CUDA driver API through ctypes on libcuda.so.1
    (cuMemGetAddressRange gives the allocation base and size, cuIpcGetMemHandle its handle). One
    registration covers the whole allocation (a torch caching-allocator segment), so fresh tensors
    carved out of the same segment reuse it.
  * ``"torch"``: ``storage._share_cuda_()``, what torch.multiprocessing uses. torch then keeps the
    storage's memory alive until process exit (its IPC reference counter is never released by a
    non-torch receiver), so use it for long-lived staging buffers only.

Limitations: memory from ``expandable_segments`` (cuMem VMM) cannot be exported with legacy IPC
handles; use the default torch allocator settings. The daemon's device ordinal is assumed to equal
the client's (set ``device_map`` on the Client when CUDA_VISIBLE_DEVICES differ).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Dict, NamedTuple, Optional, Tuple

__all__ = ["IpcInfo", "is_torch_tensor", "is_cuda_tensor", "cuda_ipc_info", "BufferCache"]

CUDA_IPC_HANDLE_BYTES = 64


class IpcInfo(NamedTuple):
    """Where a CUDA tensor lives, in the terms of RegisterBuffer/BufferSlice.

    handle: the 64-byte cudaIpcMemHandle_t of the allocation holding the tensor.
    device: CUDA device ordinal (client numbering).
    size_bytes: bytes of the allocation to register (from its base).
    offset_bytes: where the tensor's first element is, from the allocation base.
    """

    handle: bytes
    device: int
    size_bytes: int
    offset_bytes: int


def is_torch_tensor(x: Any) -> bool:
    """True for a torch.Tensor, checked without importing torch."""
    mod = type(x).__module__ or ""
    return mod.split(".")[0] == "torch" and hasattr(x, "data_ptr") and hasattr(x, "is_cuda")


def is_cuda_tensor(x: Any) -> bool:
    return is_torch_tensor(x) and bool(x.is_cuda)


class CUipcMemHandle(ctypes.Structure):
    """CUipcMemHandle: 64 opaque bytes, passed by value."""

    _fields_ = [("reserved", ctypes.c_char * CUDA_IPC_HANDLE_BYTES)]


class Driver:
    """The libcuda entry points of the client (loaded on first use), one loader for the package:
    export (cuMemGetAddressRange_v2, cuIpcGetMemHandle) here, open and close of a daemon's pool
    mapping (``open_ipc``: cuIpcOpenMemHandle_v2 where the driver has it, cuIpcCloseMemHandle) in
    attnd.flashinfer."""

    _lock = threading.Lock()
    _lib = None

    @classmethod
    def lib(cls):
        with cls._lock:
            if cls._lib is None:
                lib = ctypes.CDLL("libcuda.so.1")
                lib.cuMemGetAddressRange_v2.argtypes = [
                    ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64]
                lib.cuMemGetAddressRange_v2.restype = ctypes.c_int
                lib.cuIpcGetMemHandle.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
                lib.cuIpcGetMemHandle.restype = ctypes.c_int
                open_fn = getattr(lib, "cuIpcOpenMemHandle_v2", None) or lib.cuIpcOpenMemHandle
                open_fn.argtypes = [ctypes.POINTER(ctypes.c_uint64), CUipcMemHandle, ctypes.c_uint]
                open_fn.restype = ctypes.c_int
                lib.open_ipc = open_fn
                lib.cuIpcCloseMemHandle.argtypes = [ctypes.c_uint64]
                lib.cuIpcCloseMemHandle.restype = ctypes.c_int
                cls._lib = lib
            return cls._lib


def _driver_ipc_info(tensor) -> IpcInfo:
    import torch  # only here: a torch tensor was passed

    lib = Driver.lib()
    ptr = int(tensor.data_ptr())
    device = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(device):  # makes the device's primary context current on this thread
        base = ctypes.c_uint64(0)
        size = ctypes.c_size_t(0)
        rc = lib.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr))
        if rc != 0:
            raise RuntimeError(f"cuMemGetAddressRange failed (CUresult {rc}) for pointer {ptr:#x}")
        handle = ctypes.create_string_buffer(CUDA_IPC_HANDLE_BYTES)
        rc = lib.cuIpcGetMemHandle(handle, base)
        if rc != 0:
            raise RuntimeError(f"cuIpcGetMemHandle failed (CUresult {rc}); expandable_segments memory "
                               "cannot be exported with CUDA IPC handles")
    return IpcInfo(handle=handle.raw, device=int(device), size_bytes=int(size.value),
                   offset_bytes=ptr - int(base.value))


def _torch_ipc_info(tensor) -> IpcInfo:
    storage = tensor.untyped_storage()
    shared = storage._share_cuda_()
    device, handle, storage_size_bytes, storage_offset_bytes = shared[:4]
    handle = bytes(handle)
    # Recent torch (2.11 seen) prefixes the 64-byte cudaIpcMemHandle_t with a 2-byte header
    # (format and allocation kind): the handle itself is the last 64 bytes.
    if len(handle) > CUDA_IPC_HANDLE_BYTES:
        handle = handle[-CUDA_IPC_HANDLE_BYTES:]
    offset = int(storage_offset_bytes) + int(tensor.storage_offset()) * tensor.element_size()
    return IpcInfo(handle=handle, device=int(device),
                   size_bytes=int(storage_offset_bytes) + int(storage_size_bytes), offset_bytes=offset)


def cuda_ipc_info(tensor, method: str = "driver") -> IpcInfo:
    """The IPC handle, allocation size and offset of a contiguous CUDA torch tensor.

    Args:
        tensor: a CUDA torch.Tensor, contiguous (row-major, dense).
        method: "driver" (libcuda; falls back to "torch" if libcuda cannot be loaded) or "torch".
    """
    if not is_cuda_tensor(tensor):
        raise ValueError("cuda_ipc_info needs a CUDA torch tensor")
    if not tensor.is_contiguous():
        raise ValueError("CUDA tensors passed to attnd must be contiguous (call .contiguous())")
    if method == "driver":
        try:
            Driver.lib()
        except OSError:
            method = "torch"
        else:
            return _driver_ipc_info(tensor)
    if method == "torch":
        return _torch_ipc_info(tensor)
    raise ValueError(f"unknown IPC method {method!r}")


class BufferCache:
    """A session's registered CUDA allocations: IPC handle -> (buffer_id, registered size).

    Register once, reuse: a tensor whose allocation is already registered (and inside the
    registered size) needs no RegisterBuffer call.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._by_handle: Dict[bytes, Tuple[str, int]] = {}

    def lookup(self, info: IpcInfo, nbytes: int) -> Optional[str]:
        with self._lock:
            hit = self._by_handle.get(info.handle)
        if hit is not None and info.offset_bytes + nbytes <= hit[1]:
            return hit[0]
        return None

    def remember(self, info: IpcInfo, buffer_id: str) -> None:
        with self._lock:
            self._by_handle[info.handle] = (buffer_id, info.size_bytes)

    def buffer_ids(self):
        with self._lock:
            return [b for b, _ in self._by_handle.values()]

    def clear(self) -> None:
        with self._lock:
            self._by_handle.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_handle)
