"""Zero-copy numpy arrays through shared memory (daemons whose backend reads host memory, i.e.
``ServerInfo.shared_memory``; the CPU backend).

The memory is a memfd sealed against shrinking before anything maps it, and it reaches the daemon
as a file descriptor over the peer socket (attnd.peer), never by name: no other process can
register it, and nobody can shrink it under the daemon (which would fault it).

    buf = sess.shared_buffer(64 << 20)                  # created, mapped, registered once
    q = buf.array((batch, num_qo_heads, head_dim), np.float16)          # a view into it
    o = buf.array((batch, num_qo_heads, head_dim), np.float16, offset=q.nbytes)
    q[...] = ...
    decode.run(q, layer, out=o)     # q and o travel as buffer slices; the daemon writes o

An array passed to run()/append_kv() that lies inside one of the session's shared buffers is sent
as a BufferSlice (buffer id + byte offset) instead of inline bytes; ``out=``/``lse_out=`` may name
arrays in a shared buffer. Arrays must be C-contiguous. The buffer is unregistered and closed by
``close()`` (or when the session closes it).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import uuid
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["SharedBuffer", "find_in_shared"]


class SharedBuffer:
    """A sealed memfd of ``nbytes`` bytes, registered with the daemon.

    Made by ``Session.shared_buffer(nbytes)``. Attributes: ``buffer_id``, ``name`` (a label only),
    ``nbytes``, ``fd`` (the memfd), ``buf`` (a memoryview of the mapping). ``mode`` is accepted
    for compatibility and ignored: a memfd has no path anyone could open."""

    def __init__(self, nbytes: int, mode: int = 0o600):
        if nbytes <= 0:
            raise ValueError("nbytes must be > 0")
        del mode
        self.nbytes = int(nbytes)
        self.name = f"attnd-{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.nbytes)
            # Sealed before it is shared: nobody can make it shorter than what is mapped.
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
            self._mm: Optional[mmap.mmap] = mmap.mmap(self.fd, self.nbytes)
        except BaseException:
            os.close(self.fd)
            raise
        self.buffer_id: Optional[str] = None
        self._base = np.frombuffer(self._mm, dtype=np.uint8, count=self.nbytes)
        self._addr = self._base.__array_interface__["data"][0]

    @property
    def buf(self) -> memoryview:
        return memoryview(self._mm)

    def array(self, shape, dtype: Any, offset: int = 0) -> np.ndarray:
        """A C-contiguous numpy view of ``shape``/``dtype`` starting ``offset`` bytes in."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if len(tuple(shape)) else 1
        if offset < 0 or offset + count * dtype.itemsize > self.nbytes:
            raise ValueError(f"array of {count * dtype.itemsize} bytes at offset {offset} does not "
                             f"fit in the {self.nbytes}-byte shared buffer")
        if offset % dtype.itemsize:
            raise ValueError(f"offset {offset} is not a multiple of {dtype.itemsize}")
        return self._base[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def locate(self, arr: np.ndarray) -> Optional[int]:
        """Byte offset of ``arr`` in this buffer, or None if it does not lie (densely) inside."""
        if self.buffer_id is None or not isinstance(arr, np.ndarray):
            return None
        if not arr.flags["C_CONTIGUOUS"]:
            return None
        start = arr.__array_interface__["data"][0]
        off = start - self._addr
        if off < 0 or off + arr.nbytes > self.nbytes:
            return None
        return off

    def _release(self) -> None:
        """Closes the memfd; the mapping goes away with the last numpy view of it."""
        self._base = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # arrays still view it: unmapped when they are garbage-collected
            self._mm = None

    def __repr__(self) -> str:
        return f"attnd.SharedBuffer({self.name!r}, {self.nbytes} bytes, id={self.buffer_id!r})"


def find_in_shared(buffers, arr) -> Optional[Tuple[str, int]]:
    """(buffer_id, offset) of the shared buffer holding ``arr``, if any."""
    for b in buffers:
        off = b.locate(arr)
        if off is not None:
            return b.buffer_id, off
    return None
