"""The drop-in's connection to the daemon and its KV-cache pools as torch tensors.

A :class:`Context` is one attnd session (on a CUDA daemon of the same host). It creates pools,
takes every page of them for its session, and maps each pool's memory into this process through
the pool's CUDA IPC handle, so the engine sees its paged KV cache as an ordinary CUDA tensor
[num_layers, num_pages, 2, page_size, num_kv_heads, head_dim] that the daemon reads in place. The
wrappers find the pool and layer of the ``paged_kv_cache`` they are given from its address.

torch is imported only when a context is used; the module itself imports without it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from attnd.flashinfer import _mapping as _m
from attnd.ipc import CUDA_IPC_HANDLE_BYTES, CUipcMemHandle, Driver

__all__ = ["Context", "connect", "get_context", "set_context", "allocate_paged_kv_cache"]

_CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1


class _Mapping:
    """One CUDA IPC handle opened in this process: [ptr, ptr + size) on ``device``.

    Closed when the last tensor made from it is gone (torch keeps the object alive through
    ``__cuda_array_interface__``), or explicitly by the context."""

    def __init__(self, handle: bytes, device: int):
        import torch

        if len(handle) != CUDA_IPC_HANDLE_BYTES:
            raise _m.AttndFlashInferError(f"the pool's CUDA IPC handle has {len(handle)} bytes, "
                                          f"expected {CUDA_IPC_HANDLE_BYTES} (not a CUDA daemon?)")
        self.device = int(device)
        self._lock = threading.Lock()
        lib = Driver.lib()
        with torch.cuda.device(self.device):
            torch.zeros(1, device=f"cuda:{self.device}")  # the primary context exists, current
            ptr = ctypes.c_uint64(0)
            raw = CUipcMemHandle.from_buffer_copy(bytes(handle))  # (field assignment would
            # stop at the first NUL byte)
            rc = lib.open_ipc(ctypes.byref(ptr), raw, _CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
            if rc != 0:
                raise RuntimeError(
                    f"cuIpcOpenMemHandle failed (CUresult {rc}) for a pool on device {device}: "
                    "the daemon must run on this host and see the same GPU (Client device_map "
                    "when CUDA_VISIBLE_DEVICES differ)")
            base = ctypes.c_uint64(0)
            size = ctypes.c_size_t(0)
            rc = lib.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), ptr)
            if rc != 0:
                lib.cuIpcCloseMemHandle(ptr)
                raise RuntimeError(f"cuMemGetAddressRange failed (CUresult {rc}) on a pool mapping")
        self.ptr = int(ptr.value)
        self.size = int(size.value) - (self.ptr - int(base.value))
        self.closed = False

    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]:
        return {"shape": (self.size,), "typestr": "|u1", "data": (self.ptr, False),
                "version": 2, "strides": None}

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            import torch

            lib = Driver.lib()
            with torch.cuda.device(self.device):
                torch.cuda.synchronize(self.device)
                lib.cuIpcCloseMemHandle(ctypes.c_uint64(self.ptr))
        except Exception:  # noqa: BLE001  (interpreter shutdown, CUDA already torn down)
            pass

    def __del__(self):
        self.close()


def pool_tensor(flat, pool, device: int):
    """The pool's [num_layers, num_pages, 2, page_size, H, D] tensor (and its layout) inside
    ``flat``, a uint8 tensor over the pool's whole allocation, from PoolInfo's offset and
    strides."""
    import torch

    info = pool.info
    dtype = _torch_dtype(pool.kv_dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    base = int(info.base_offset_bytes)
    total = int(info.total_bytes)
    if base + total > flat.numel():
        raise RuntimeError(f"pool {pool.name!r}: {base} + {total} bytes exceed its mapping "
                           f"({flat.numel()} bytes)")
    strides = [int(info.layer_stride_bytes), int(info.page_stride_bytes),
               int(info.kv_stride_bytes), int(info.token_stride_bytes),
               int(info.head_stride_bytes)]
    if base % itemsize or any(s % itemsize for s in strides):
        raise RuntimeError(f"pool {pool.name!r}: strides {strides} / offset {base} are not "
                           f"multiples of the element size {itemsize}")
    elems = flat[base:base + total].view(dtype)
    shape = (pool.num_layers, pool.num_pages, 2, pool.page_size, pool.num_kv_heads, pool.head_dim)
    tensor = elems.as_strided(shape, [s // itemsize for s in strides] + [1])
    layout = _m.PoolLayout(
        key=pool.pool_id, base_ptr=int(tensor.data_ptr()), num_layers=pool.num_layers,
        num_pages=pool.num_pages, page_size=pool.page_size, num_kv_heads=pool.num_kv_heads,
        head_dim=pool.head_dim, dtype=pool.kv_dtype, itemsize=itemsize,
        layer_stride=strides[0], page_stride=strides[1], kv_stride=strides[2],
        token_stride=strides[3], head_stride=strides[4], device=int(device))
    return tensor, layout


class PoolView:
    """An attnd pool mapped into this process.

    tensor: [num_layers, num_pages, 2, page_size, num_kv_heads, head_dim] of the pool's dtype,
    aliasing the daemon's memory; ``tensor[layer]`` is FlashInfer's single-tensor NHD cache.
    """

    def __init__(self, pool, mapping: _Mapping, tensor, layout: _m.PoolLayout, owned: bool):
        self.pool = pool
        self.mapping = mapping
        self.tensor = tensor
        self.layout = layout
        self.owned = owned

    def layer(self, layer: int):
        return self.tensor[layer]


def _torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
            "float8_e4m3fn": getattr(torch, "float8_e4m3fn", None)}[name]


def tensor_meta(t) -> _m.TensorMeta:
    """The resolution metadata of a torch tensor."""
    from attnd import tensors as _t

    try:
        dtype = _t.dtype_name(t.dtype)
    except ValueError:
        dtype = str(t.dtype)
    return _m.TensorMeta(ptr=int(t.data_ptr()), shape=tuple(int(s) for s in t.shape),
                         strides=tuple(int(s) for s in t.stride()), itemsize=int(t.element_size()),
                         dtype=dtype, device=int(t.device.index) if t.is_cuda else -1)


def cache_meta(paged_kv_cache) -> Any:
    from attnd.ipc import is_cuda_tensor

    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise _m.AttndFlashInferError("paged_kv_cache tuple must be (k_cache, v_cache)")
        items = tuple(paged_kv_cache)
    else:
        items = (paged_kv_cache,)
    for t in items:
        if not is_cuda_tensor(t):
            raise _m.AttndFlashInferError(
                f"paged_kv_cache must be CUDA torch tensors, got {type(t).__name__}")
    metas = tuple(tensor_meta(t) for t in items)
    return metas if len(metas) == 2 else metas[0]


_names = itertools.count(1)


class Context:
    """One attnd session for the FlashInfer drop-in, and the pools it maps.

    Args:
        target: the daemon ("unix:///tmp/attnd.sock", ...; default ``$ATTND_TARGET``).
        client: an existing attnd.Client to open the session on (else one is made).
        session: an existing attnd session to use (pools and plans live in it).
        session_name: shown in the daemon's logs.
        completion: "sync" (default): run() returns once o is written (the client waits for its
            current CUDA stream before sending). "async": run() only enqueues: the daemon waits
            on an event recorded on the current stream and the current stream then waits on the
            daemon's completion event, FlashInfer's stream semantics without a CPU wait (wire
            API 0.2).
        ipc_method: how q/o allocations are exported (see attnd.ipc).
        client_kwargs: passed to attnd.Client (token=, device_map=, timeout=, ...).
    """

    def __init__(self, target: Optional[str] = None, *, client=None, session=None,
                 session_name: str = "attnd.flashinfer", completion: str = "sync",
                 ipc_method: str = "driver", **client_kwargs):
        if completion not in ("sync", "async"):
            raise ValueError(f"completion must be 'sync' or 'async', not {completion!r}")
        self.completion = completion
        self.ipc_method = ipc_method
        self._own_client = client is None and session is None
        if session is not None:
            self.client = session.client
        elif client is not None:
            self.client = client
        else:
            import attnd

            client_kwargs.setdefault("timeout", 120.0)
            self.client = attnd.Client(target, **client_kwargs)
        self._session = session
        self._own_session = session is None
        self._session_name = session_name
        self._views: List[PoolView] = []
        self._scratch: Dict[Tuple[int, int, str], PoolView] = {}
        self._lock = threading.RLock()
        self.scratch_lock = threading.Lock()
        self._closed = False

    # -- session --------------------------------------------------------------------------------
    @property
    def session(self):
        with self._lock:
            if self._closed:
                raise RuntimeError("attnd.flashinfer context is closed")
            if self._session is None:
                self._session = self.client.session(self._session_name)
            return self._session

    def _require_cuda_ipc(self) -> None:
        info = self.session.server_info()
        if not info.cuda_ipc:
            raise RuntimeError(
                f"attnd.flashinfer needs a CUDA daemon on this host (its pools are mapped into "
                f"this process through CUDA IPC); this daemon runs the {info.backend!r} backend. "
                "Start it with --backend=cuda")

    # -- pools ----------------------------------------------------------------------------------
    def allocate_paged_kv_cache(self, num_layers: int, num_pages: int, page_size: int,
                                num_kv_heads: int, head_dim: int, dtype: Any = "float16", *,
                                kv_layout: str = "NHD", name: Optional[str] = None):
        """A new pool as the engine's paged KV cache.

        Returns a CUDA tensor [num_layers, num_pages, 2, page_size, num_kv_heads, head_dim] of
        ``dtype`` (float16 / bfloat16) aliasing the pool; ``cache[layer]`` is what FlashInfer's
        run() and append_paged_kv_cache() take (or ``(cache[layer][:, 0], cache[layer][:, 1])``).
        Every page is held by this context's session, so page ids 0..num_pages-1 may be used
        freely, as with a cache the engine allocated itself. Its contents start undefined
        (``torch.empty``-like). Released with :meth:`release` or when the context closes.
        """
        _m.check_kv_layout(kv_layout)
        self._require_cuda_ipc()
        pool_name = name or f"fi-{os.getpid()}-{next(_names)}"
        sess = self.session
        pool = sess.create_pool(pool_name, num_layers=int(num_layers),
                                num_kv_heads=int(num_kv_heads), head_dim=int(head_dim),
                                page_size=int(page_size), kv_dtype=_m.dtype_name(dtype),
                                num_pages=int(num_pages))
        try:
            pool.allocate(pool.num_pages)
            view = self._map(pool, owned=True)
        except BaseException:
            try:
                pool.delete()
            except Exception:  # noqa: BLE001
                pass
            raise
        return view.tensor

    def view_pool(self, pool):
        """An existing pool of this context's session (``session.create_pool`` / ``attach_pool``)
        as the same [num_layers, num_pages, 2, page_size, H, D] tensor. Only pages this session
        holds (``pool.allocate``, forks) may be named in plans."""
        if pool.session is not self.session:
            raise ValueError("the pool belongs to another session than this context's")
        self._require_cuda_ipc()
        for v in self._views:
            if v.pool is pool or v.pool.pool_id == pool.pool_id:
                return v.tensor
        return self._map(pool, owned=False).tensor

    def _map(self, pool, owned: bool) -> PoolView:
        info = pool.info
        if not info.cuda_ipc_handle:
            raise RuntimeError(f"pool {pool.name!r} has no CUDA IPC handle (not a CUDA pool)")
        device = self._client_device(int(info.device))
        mapping = _Mapping(bytes(info.cuda_ipc_handle), device)
        try:
            view = self._view_of(pool, mapping, owned)
        except BaseException:
            mapping.close()
            raise
        with self._lock:
            self._views.append(view)
        return view

    def _client_device(self, daemon_device: int) -> int:
        for mine, theirs in self.client.device_map.items():
            if int(theirs) == daemon_device:
                return int(mine)
        return daemon_device

    @staticmethod
    def _view_of(pool, mapping: _Mapping, owned: bool) -> PoolView:
        import torch

        with torch.cuda.device(mapping.device):
            flat = torch.as_tensor(mapping)
        if flat.data_ptr() != mapping.ptr or flat.device.index != mapping.device:
            raise RuntimeError("torch did not map the pool's memory in place")
        tensor, layout = pool_tensor(flat, pool, mapping.device)
        return PoolView(pool, mapping, tensor, layout, owned)

    def release(self, cache) -> None:
        """Deletes a pool made by allocate_paged_kv_cache (given its tensor or its Pool); the
        tensor must not be used afterwards."""
        with self._lock:
            view = self._find(cache)
            self._views.remove(view)
        self._drop(view)

    def _find(self, cache) -> PoolView:
        for v in self._views:
            if cache is v.tensor or cache is v.pool:
                return v
        ptr = int(cache.data_ptr()) if hasattr(cache, "data_ptr") else None
        for v in self._views:
            if ptr is not None and v.layout.base_ptr <= ptr < v.layout.end_ptr:
                return v
        raise ValueError("not a pool of this context")

    @staticmethod
    def _drop(view: PoolView) -> None:
        view.mapping.close()
        if view.owned:
            try:
                view.pool.delete()
            except Exception:  # noqa: BLE001  (the session may be gone; the daemon cleans up)
                pass

    def layouts(self) -> List[_m.PoolLayout]:
        with self._lock:
            return [v.layout for v in self._views] + [v.layout for v in self._scratch.values()]

    def view_by_key(self, key) -> PoolView:
        with self._lock:
            for v in list(self._views) + list(self._scratch.values()):
                if v.layout.key == key:
                    return v
        raise KeyError(key)

    def resolve(self, paged_kv_cache) -> Tuple[PoolView, _m.ResolvedCache]:
        """(pool view, resolution) of a FlashInfer paged_kv_cache argument."""
        resolved = _m.resolve_kv_cache(cache_meta(paged_kv_cache), self.layouts())
        return self.view_by_key(resolved.layout.key), resolved

    def candidates(self, num_kv_heads: int, head_dim: int, page_size: int,
                   dtype: str) -> List[PoolView]:
        """Pools of this context a plan of that geometry could run on."""
        with self._lock:
            return [v for v in self._views
                    if (v.layout.num_kv_heads, v.layout.head_dim, v.layout.page_size,
                        v.layout.dtype) == (num_kv_heads, head_dim, page_size, dtype)]

    # -- scratch pools (single_* functions) ----------------------------------------------------
    SCRATCH_PAGE_SIZE = 16

    def scratch(self, num_kv_heads: int, head_dim: int, dtype: str, tokens: int) -> PoolView:
        """A one-layer pool of at least ``tokens`` tokens for that geometry (grown by doubling),
        every page held. Callers hold ``scratch_lock`` while they use it."""
        self._require_cuda_ipc()
        key = (int(num_kv_heads), int(head_dim), dtype)
        ps = self.SCRATCH_PAGE_SIZE
        need = max(1, -(-int(tokens) // ps))
        with self._lock:
            view = self._scratch.get(key)
            if view is not None and view.pool.num_pages >= need:
                return view
            pages = max(need, 2 * view.pool.num_pages if view is not None else 64)
            if view is not None:
                del self._scratch[key]
                self._drop(view)
            sess = self.session
            pool = sess.create_pool(f"fi-scratch-{os.getpid()}-{next(_names)}", num_layers=1,
                                    num_kv_heads=key[0], head_dim=key[1], page_size=ps,
                                    kv_dtype=dtype, num_pages=pages)
            try:
                pool.allocate(pool.num_pages)
                mapping = _Mapping(bytes(pool.info.cuda_ipc_handle),
                                   self._client_device(int(pool.info.device)))
                view = self._view_of(pool, mapping, owned=True)
            except BaseException:
                try:
                    pool.delete()
                except Exception:  # noqa: BLE001
                    pass
                raise
            self._scratch[key] = view
            return view

    # -- life -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Deletes this context's pools, closes their mappings and its session (and its client,
        when the context made it). Tensors from allocate_paged_kv_cache are invalid afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            views = self._views + list(self._scratch.values())
            self._views, self._scratch = [], {}
        for v in views:
            self._drop(v)
        if self._session is not None and self._own_session:
            try:
                self._session.close()
            except Exception:  # noqa: BLE001
                pass
        if self._own_client:
            self.client.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default_lock = threading.Lock()
_default: Optional[Context] = None


def connect(target: Optional[str] = None, **kwargs) -> Context:
    """Makes a Context (see :class:`Context` for the arguments) the default one of the drop-in
    and returns it. The previous default, if any, is left open (close it yourself)."""
    ctx = Context(target, **kwargs)
    set_context(ctx)
    return ctx


def set_context(ctx: Optional[Context]) -> None:
    """Sets (or, with None, clears) the default context."""
    global _default
    with _default_lock:
        _default = ctx


def get_context() -> Context:
    """The default context, connecting to ``$ATTND_TARGET`` (or unix:///tmp/attnd.sock) on
    first use."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Context()
        return _default


def peek_context() -> Optional[Context]:
    """The default context if one is open, else None (makes nothing)."""
    with _default_lock:
        return _default if _default is not None and not _default.closed else None


def allocate_paged_kv_cache(num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                            head_dim: int, dtype: Any = "float16", *, kv_layout: str = "NHD",
                            name: Optional[str] = None, attnd_context: Optional[Context] = None):
    """:meth:`Context.allocate_paged_kv_cache` on the default context (or ``attnd_context``)."""
    ctx = attnd_context or get_context()
    return ctx.allocate_paged_kv_cache(num_layers, num_pages, page_size, num_kv_heads, head_dim,
                                       dtype, kv_layout=kv_layout, name=name)
