"""The few array operations the drop-in does around a daemon call (LSE base changes, output
placement), for torch tensors and for numpy arrays.

FlashInfer code passes CUDA torch tensors: with a daemon that takes CUDA IPC handles they travel
zero-copy as buffer slices and the daemon writes the outputs in place. CPU torch tensors and numpy
arrays (an attnd extension, used by the CPU tests) travel inline; so do CUDA tensors when the
daemon takes no IPC handles. torch is imported only for torch inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnd.flashinfer import _mapping as _m
from attnd.ipc import is_cuda_tensor, is_torch_tensor


class _Arrays:
    @staticmethod
    def dtype(x) -> str:
        """attnd's name of x's dtype (str(dtype) for one attnd does not know)."""
        try:
            return _m.dtype_name(x.dtype)
        except ValueError:
            return str(x.dtype)


class TorchArrays(_Arrays):
    """torch tensors (CUDA, or CPU: inline)."""

    def __init__(self):
        import torch

        self.torch = torch

    def scaled(self, x, factor: float):
        """A new float32 tensor x * factor (one kernel for float32 x)."""
        if x.dtype != self.torch.float32:
            return x.float().mul_(factor)
        return x * factor

    def scale_(self, x, factor: float):
        return x.mul_(factor)

    def is_float32(self, x) -> bool:
        return x.dtype == self.torch.float32

    def contiguous(self, x) -> bool:
        return bool(x.is_contiguous())

    def cast_like(self, x, like):
        return x if x.dtype == like.dtype else x.to(like.dtype)

    def empty(self, shape, like, float32: bool = False):
        dtype = self.torch.float32 if float32 else like.dtype
        return self.torch.empty(tuple(shape), dtype=dtype, device=like.device)

    def copy_(self, dst, src) -> None:
        dst.copy_(src)

    def write_rows(self, dst, src, mask) -> None:
        """dst[i] = src[i] for the rows where mask[i] (every row without a mask)."""
        src = src.to(dst.dtype)
        if mask is None:
            dst.copy_(src)
            return
        keep = mask.to(device=dst.device, dtype=self.torch.bool)
        keep = keep.reshape((-1,) + (1,) * (dst.dim() - 1))
        dst.copy_(self.torch.where(keep, src, dst))

    def swap01(self, x):
        return x.transpose(0, 1)

    def capturing(self) -> bool:
        cuda = self.torch.cuda
        return bool(cuda.is_available() and cuda.is_current_stream_capturing())


class NumpyArrays(_Arrays):
    """numpy arrays (inline)."""

    def scaled(self, x, factor: float):
        return np.multiply(np.asarray(x, dtype=np.float32), np.float32(factor), dtype=np.float32)

    def scale_(self, x, factor: float):
        np.multiply(x, np.float32(factor), out=x, dtype=np.float32)
        return x

    def is_float32(self, x) -> bool:
        return x.dtype == np.float32

    def contiguous(self, x) -> bool:
        return bool(x.flags.c_contiguous)

    def cast_like(self, x, like):
        return x if x.dtype == like.dtype else x.astype(like.dtype)

    def empty(self, shape, like, float32: bool = False):
        return np.empty(tuple(shape), dtype=np.float32 if float32 else like.dtype)

    def copy_(self, dst, src) -> None:
        np.copyto(dst, src, casting="unsafe")

    def write_rows(self, dst, src, mask) -> None:
        src = np.asarray(src).astype(dst.dtype, copy=False)
        if mask is None:
            np.copyto(dst, src)
            return
        keep = np.asarray(mask, dtype=bool).reshape((-1,) + (1,) * (dst.ndim - 1))
        np.copyto(dst, src, where=keep)

    def swap01(self, x):
        return np.swapaxes(x, 0, 1)

    def capturing(self) -> bool:
        return False


def arrays_for(x: Any):
    """The operations for ``x``'s kind (torch tensor or numpy array)."""
    if is_torch_tensor(x):
        return TorchArrays()
    if isinstance(x, np.ndarray):
        return NumpyArrays()
    raise _m.AttndFlashInferError(f"expected a torch tensor, got {type(x).__name__}")


def in_place(session, x) -> bool:
    """Whether the daemon reads and writes ``x``'s memory directly (a CUDA tensor and a daemon
    that takes CUDA IPC handles): outputs can then be given to it, and completion can be async."""
    return is_cuda_tensor(x) and bool(session.cuda_ipc)


def completion_for(ctx, session, x) -> str:
    """The context's completion mode where the tensors travel zero-copy, else "sync" (inline
    tensors come back in the reply)."""
    return ctx.completion if in_place(session, x) else "sync"


def finish_lse(arrays, lse_nat, lse_base: str, lse_layout: str, dest=None):
    """attnd's natural-log [rows, heads] LSE in FlashInfer's base and layout: in place for "NH"
    (into ``dest`` when given and not ``lse_nat`` itself), into ``dest`` or a new array for "HN"."""
    factor = _m.lse_factor(lse_base)
    if lse_layout == "NH":
        if dest is not None and dest is not lse_nat:
            arrays.copy_(dest, lse_nat)
            lse_nat = dest
        if factor is not None:
            arrays.scale_(lse_nat, factor)
        return lse_nat
    src = arrays.swap01(lse_nat)
    if dest is None:
        dest = arrays.empty(src.shape, lse_nat, float32=True)
    arrays.copy_(dest, src)
    if factor is not None:
        arrays.scale_(dest, factor)
    return dest


def to_ln(arrays, s):
    """FlashInfer's base-2 LSE as the natural-log LSE attnd's wire API takes: a new float32 array
    s * ln 2 (-inf, an empty state, stays -inf)."""
    return arrays.scaled(s, _m.LN2)


def to_log2_(arrays, s):
    """attnd's natural-log LSE turned into base 2 in place (s * log2 e); returns s."""
    return arrays.scale_(s, _m.LOG2E)
