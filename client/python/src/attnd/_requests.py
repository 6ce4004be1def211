"""Request building shared by the blocking and asyncio clients (no I/O here).

Tensors of a run are classified once (:class:`TensorPlan`): numpy arrays and CPU torch tensors
travel inline; CUDA torch tensors travel as buffer slices when the daemon takes CUDA IPC handles
(else they are copied through the host). The caller resolves the slices (registering allocations
it has not registered yet), then builds the request and converts the response.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from attnd import tensors as _t
from attnd.ipc import IpcInfo, cuda_ipc_info, is_cuda_tensor, is_torch_tensor
from attnd.v1 import attnd_pb2 as pb

_POS_ENCODINGS = {
    "none": pb.POS_ENCODING_NONE,
    "rope_llama": pb.POS_ENCODING_ROPE_LLAMA,
    "rope": pb.POS_ENCODING_ROPE_LLAMA,
    "llama": pb.POS_ENCODING_ROPE_LLAMA,
}


def pos_encoding_enum(value: Any) -> int:
    """"none" / "rope_llama" (FlashInfer's "NONE" / "ROPE_LLAMA" too), or the enum value."""
    if value is None:
        return pb.POS_ENCODING_NONE
    if isinstance(value, (int, np.integer)):
        return int(value)
    key = str(value).lower()
    if key.startswith("pos_encoding_"):
        key = key[len("pos_encoding_"):]
    if key not in _POS_ENCODINGS:
        raise ValueError(f"unknown pos_encoding {value!r}: use 'none' or 'rope_llama'")
    return _POS_ENCODINGS[key]


def int32_list(name: str, values: Any) -> List[int]:
    """A plain list of ints from a list / numpy array / torch tensor (CPU or CUDA)."""
    if values is None:
        return []
    if is_torch_tensor(values):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got {arr.dtype}")
    return [int(x) for x in arr.tolist()]


def create_pool_request(name: str, num_layers: int, num_kv_heads: int, head_dim: int,
                        page_size: int, kv_dtype: Any = "float16", num_pages: Optional[int] = None,
                        memory_budget_bytes: Optional[int] = None, k_scale: Any = None,
                        v_scale: Any = None) -> pb.CreatePoolRequest:
    """k_scale / v_scale: FP8 pools' dequantization scales (attnd.proto CreatePoolRequest):
    None, one per layer, or one per layer and KV head (layer-major)."""
    return pb.CreatePoolRequest(
        name=name, num_layers=int(num_layers), num_kv_heads=int(num_kv_heads),
        head_dim=int(head_dim), page_size=int(page_size), kv_dtype=_t.dtype_enum(kv_dtype),
        num_pages=int(num_pages or 0), memory_budget_bytes=int(memory_budget_bytes or 0),
        layout=pb.KV_LAYOUT_NHD,
        k_scale=[float(x) for x in np.ravel(k_scale)] if k_scale is not None else [],
        v_scale=[float(x) for x in np.ravel(v_scale)] if v_scale is not None else [])


CASCADE_LEVEL_FIELDS = ("qo_indptr", "kv_indptr", "kv_indices", "kv_last_page_len")


def cascade_level(index: int, level: Any) -> pb.CascadeLevel:
    """One shared level of a cascade plan (attnd.proto CascadeLevel): a mapping with the keys
    qo_indptr, kv_indptr, kv_indices and kv_last_page_len, or a sequence of those four in that
    order; each an int32 list, numpy array or tensor."""
    if isinstance(level, pb.CascadeLevel):
        return level
    if isinstance(level, dict):
        unknown = sorted(set(level) - set(CASCADE_LEVEL_FIELDS))
        if unknown:
            raise ValueError(f"cascade_levels[{index}]: unknown keys {unknown}; "
                             f"expected {list(CASCADE_LEVEL_FIELDS)}")
        values = [level.get(name) for name in CASCADE_LEVEL_FIELDS]
    else:
        values = list(level)
        if len(values) != 4:
            raise ValueError(f"cascade_levels[{index}] has {len(values)} entries; expected "
                             f"(qo_indptr, kv_indptr, kv_indices, kv_last_page_len)")
    return pb.CascadeLevel(**{
        name: int32_list(f"cascade_levels[{index}].{name}", value)
        for name, value in zip(CASCADE_LEVEL_FIELDS, values)})


# --- custom masks (CreatePlanRequest.custom_mask) -----------------------------------------------

def _host_array(x: Any) -> np.ndarray:
    if is_torch_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _mask_matrix(index: int, mask: Any) -> np.ndarray:
    """Request ``index``'s [qo_len, kv_len] mask as a bool array (True = visible)."""
    arr = _host_array(mask)
    if arr.ndim != 2:
        raise ValueError(f"custom_mask[{index}] must be a [qo_len, kv_len] array, got shape "
                         f"{arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and (arr.dtype.kind not in "biu" or not np.isin(arr, (0, 1)).all()):
            raise ValueError(f"custom_mask[{index}] must hold booleans (or 0/1), got {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def pack_custom_mask(masks: Sequence[Any]) -> bytes:
    """The wire form of a custom mask (CreatePlanRequest.custom_mask) from one boolean
    [qo_len_b, kv_len_b] array per request, in request order (numpy, torch, or nested lists;
    True / 1 = the query row sees the key).

    For each request b: ceil(qo_len_b * kv_len_b / 8) bytes, element (i, j) (query row i, at kv
    position kv_len_b - qo_len_b + i, against kv position j) being bit i * kv_len_b + j of b's
    bytes, bit k of byte n element 8n + k: ``numpy.packbits(mask_b.reshape(-1),
    bitorder="little")``, concatenated over the requests. This is also FlashInfer's
    ``packed_custom_mask`` (``segment_packbits(..., bitorder="little")``).
    """
    if isinstance(masks, np.ndarray) or is_torch_tensor(masks):
        raise ValueError("pack_custom_mask takes a list of per-request [qo_len, kv_len] arrays; "
                         "for one request pass [mask]")
    parts = [np.packbits(_mask_matrix(b, m).reshape(-1), bitorder="little").tobytes()
             for b, m in enumerate(masks)]
    return b"".join(parts)


def custom_mask_bytes(custom_mask: Any, qo_indptr: Any = None,
                      kv_lens: Optional[Sequence[int]] = None) -> bytes:
    """CreatePlanRequest.custom_mask from what the client API takes:

    * None: no mask (b"");
    * the packed wire form as it is: bytes / bytearray / memoryview, or a one-dimensional uint8
      array (numpy or torch) of exactly sum_b ceil(qo_len_b * kv_len_b / 8) bytes (the daemon
      checks the length and refuses others with INVALID_ARGUMENT naming custom_mask);
    * a list (or tuple) of per-request boolean [qo_len_b, kv_len_b] arrays, packed here
      (pack_custom_mask). Their number and row counts are checked against ``qo_indptr`` when it is
      given, their columns against ``kv_lens`` (each request's kv_len: on a cascade plan, its
      own pages) when given.
    """
    if custom_mask is None:
        return b""
    if isinstance(custom_mask, (bytes, bytearray, memoryview)):
        return bytes(custom_mask)
    if isinstance(custom_mask, (list, tuple)):
        masks = list(custom_mask)
        qo = int32_list("qo_indptr", qo_indptr) if qo_indptr is not None else None
        if qo is not None and len(masks) != len(qo) - 1:
            raise ValueError(f"custom_mask has {len(masks)} per-request masks; the batch has "
                             f"{len(qo) - 1} requests")
        mats = [_mask_matrix(b, m) for b, m in enumerate(masks)]
        for b, mat in enumerate(mats):
            if qo is not None and mat.shape[0] != qo[b + 1] - qo[b]:
                raise ValueError(f"custom_mask[{b}] has {mat.shape[0]} rows; request {b} has "
                                 f"qo_len={qo[b + 1] - qo[b]}")
            if kv_lens is not None and mat.shape[1] != int(kv_lens[b]):
                raise ValueError(f"custom_mask[{b}] has {mat.shape[1]} columns; request {b} has "
                                 f"kv_len={int(kv_lens[b])}")
        return pack_custom_mask(mats)
    arr = _host_array(custom_mask)
    if arr.ndim == 1 and arr.dtype == np.uint8:
        return arr.tobytes()
    raise ValueError(
        "custom_mask must be the packed bytes (bytes, or a 1-D uint8 array) or a list of "
        f"per-request [qo_len, kv_len] boolean arrays; got an array of {arr.dtype} with shape "
        f"{arr.shape}")


def create_plan_request(pool_id: str, kind: int, num_qo_heads: int, kv_indptr: Any,
                        kv_indices: Any, kv_last_page_len: Any, qo_indptr: Any = None,
                        cascade_levels: Any = None, custom_mask: Any = None,
                        kv_lens: Optional[Sequence[int]] = None,
                        q_dtype: Any = None) -> pb.CreatePlanRequest:
    """cascade_levels: the shared levels of a cascade plan, outermost first (cascade_level);
    the table given is then the last level, each request's own pages. custom_mask: see
    custom_mask_bytes (kv_lens, when known, checks a list of masks' columns). q_dtype: None, or
    the dtype of every run's q (CreatePlanRequest.q_dtype: a name such as "float16", a numpy /
    torch dtype, or the enum)."""
    return pb.CreatePlanRequest(
        q_dtype=_t.dtype_enum(q_dtype) if q_dtype is not None else pb.DTYPE_UNSPECIFIED,
        pool_id=pool_id, kind=kind, num_qo_heads=int(num_qo_heads),
        kv_indptr=int32_list("kv_indptr", kv_indptr),
        kv_indices=int32_list("kv_indices", kv_indices),
        kv_last_page_len=int32_list("kv_last_page_len", kv_last_page_len),
        qo_indptr=int32_list("qo_indptr", qo_indptr),
        cascade_levels=[cascade_level(i, level) for i, level in enumerate(cascade_levels or [])],
        custom_mask=custom_mask_bytes(custom_mask, qo_indptr, kv_lens))


def plan_delta(index: int, delta: Any) -> pb.PlanDelta:
    """One change of an UpdatePlan (attnd.proto PlanDelta): a pb.PlanDelta, or a dict with one key,
    "grow" (request, num_tokens, new_pages, qo_len), "leave" (request) or "join" (kv_indices,
    kv_last_page_len, qo_len), whose value is a dict of those fields."""
    if isinstance(delta, pb.PlanDelta):
        return delta
    if not isinstance(delta, dict) or len(delta) != 1:
        raise ValueError(f"deltas[{index}] must be a PlanDelta or a dict with one key of grow, "
                         f"leave, join; got {delta!r}")
    (kind, fields), = delta.items()
    if kind == "grow":
        return pb.PlanDelta(grow=pb.PlanDelta.Grow(
            request=int(fields["request"]), num_tokens=int(fields.get("num_tokens", 0)),
            new_pages=int32_list(f"deltas[{index}].grow.new_pages", fields.get("new_pages")),
            qo_len=int(fields.get("qo_len", 0))))
    if kind == "leave":
        return pb.PlanDelta(leave=pb.PlanDelta.Leave(request=int(fields["request"])))
    if kind == "join":
        return pb.PlanDelta(join=pb.PlanDelta.Join(
            kv_indices=int32_list(f"deltas[{index}].join.kv_indices", fields["kv_indices"]),
            kv_last_page_len=int(fields["kv_last_page_len"]),
            qo_len=int(fields.get("qo_len", 0))))
    raise ValueError(f"deltas[{index}]: {kind!r} is not one of grow, leave, join")


def update_plan_request(plan_id: str, deltas: Sequence[Any]) -> pb.UpdatePlanRequest:
    return pb.UpdatePlanRequest(plan_id=plan_id,
                                deltas=[plan_delta(i, d) for i, d in enumerate(deltas)])


OPTION_NAMES = ("causal", "sm_scale", "pos_encoding", "rope_theta", "rope_scale", "rope_offsets",
                "logits_soft_cap", "window_left")


def register_buffer_request(client, size_bytes: int, cuda_ipc_handle: Optional[bytes] = None,
                            device: int = 0,
                            shared_memory_fd: Optional[int] = None) -> pb.RegisterBufferRequest:
    """A RegisterBufferRequest for a CUDA allocation (IPC handle + device) or for shared memory
    passed as a file descriptor: the fd goes to the daemon over the client's peer connection
    (attnd.peer), which answers with the one-time token the request names."""
    req = pb.RegisterBufferRequest(size_bytes=int(size_bytes))
    if cuda_ipc_handle is not None:
        req.cuda_ipc.ipc_handle = bytes(cuda_ipc_handle)
        req.cuda_ipc.device = int(device)
    elif shared_memory_fd is not None:
        peer = getattr(client, "_peer", None)
        if peer is None:
            raise ValueError("shared memory travels over the peer socket, and this client has "
                             "none (a TCP target, or peer_socket='')")
        req.shared_memory_fd.fd_token = peer.send_fd(int(shared_memory_fd))
    return req


def attention_options(causal: bool = False, sm_scale: Optional[float] = None,
                      pos_encoding: Any = "none", rope_theta: Optional[float] = None,
                      rope_scale: Optional[float] = None, rope_offsets: Any = None,
                      logits_soft_cap: Optional[float] = None, window_left: Optional[int] = None,
                      return_lse: bool = False) -> pb.AttentionOptions:
    """AttentionOptions; None means the daemon's default (sm_scale 1/sqrt(head_dim), theta 1e4,
    scale 1, no soft cap, no window). window_left < 0 also means no window."""
    opts = pb.AttentionOptions(
        causal=bool(causal), pos_encoding=pos_encoding_enum(pos_encoding),
        sm_scale=float(sm_scale or 0.0), rope_theta=float(rope_theta or 0.0),
        rope_scale=float(rope_scale or 0.0), logits_soft_cap=float(logits_soft_cap or 0.0),
        rope_offsets=int32_list("rope_offsets", rope_offsets), return_lse=bool(return_lse))
    if window_left is not None and int(window_left) >= 0:
        opts.window_left = int(window_left)
        opts.window_left_set = True
    return opts


# --- tensors of one call --------------------------------------------------------------------

def _torch_cpu_to_numpy(t) -> tuple:
    """(numpy array, wire dtype name) of a CPU torch tensor; bfloat16 as uint16 bits."""
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
    return t.numpy(), None


def _numpy_to_torch(arr: np.ndarray, dtype_enum: int, device=None):
    import torch

    if dtype_enum == pb.DTYPE_BFLOAT16:
        out = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    else:
        out = torch.from_numpy(arr)
    return out.to(device) if device is not None else out


class TensorPlan:
    """The tensors of one Run or AppendKv call and how each travels.

    Args:
        q: [qo_tokens, num_qo_heads, head_dim] (None for AppendKv).
        k, v: [qo_tokens, num_kv_heads, head_dim] or None. 16/32-bit pools: cast to the pool's
            kv dtype. FP8 pools: float32/float16/bfloat16 sent as they are for the daemon to
            quantize, fp8 of the pool's format as it is (see FP8_DTYPES below).
        out: optional output [qo_tokens, num_qo_heads, head_dim] in q's dtype (CUDA path).
        lse_out: optional [qo_tokens, num_qo_heads] float32 (CUDA path).
        kv_dtype: the pool's kv dtype enum.
        q_dtype: wire dtype of q when it cannot be inferred (uint16 bits -> "bfloat16").
        zero_copy: send CUDA tensors as buffer slices (True) or through the host (False).
        ipc_method: see attnd.ipc.cuda_ipc_info.
        sinks: optional [num_qo_heads] attention sinks (RunRequest.sinks), sent as float32:
            numpy/list values inline (or as a slice when inside a shared buffer), a CUDA tensor
            as a buffer slice on the CUDA path.
    """

    def __init__(self, q: Any, k: Any, v: Any, *, kv_dtype: int, out: Any = None,
                 lse_out: Any = None, return_lse: bool = False, q_dtype: Any = None,
                 zero_copy: bool = True, ipc_method: str = "driver", shared_buffers=(),
                 sinks: Any = None):
        if (k is None) != (v is None):
            raise ValueError("pass both k and v, or neither")
        self.return_lse = return_lse
        self.kv_dtype = kv_dtype
        self.ipc_method = ipc_method
        self.shared_buffers = list(shared_buffers)
        self.q_is_torch = q is not None and is_torch_tensor(q)
        self.q_device = q.device if self.q_is_torch else None
        lead = q if q is not None else k
        # Zero copy when the leading tensor (q, or k for AppendKv) is on a CUDA device.
        self.cuda = lead is not None and is_cuda_tensor(lead) and bool(zero_copy)
        self.q_dtype_enum: Optional[int] = None
        self._tensors: Dict[str, Any] = {}
        self.slices: Dict[str, pb.BufferSlice] = {}

        if q is not None:
            self._tensors["q"] = self._prepare("q", q, q_dtype, cast_to=None)
        if k is not None and kv_dtype in FP8_DTYPES:
            self._prepare_fp8_kv(k, v)
        elif k is not None:
            self._tensors["k"] = self._prepare("k", k, None, cast_to=kv_dtype)
            self._tensors["v"] = self._prepare("v", v, None, cast_to=kv_dtype)
        if sinks is not None:
            if not is_torch_tensor(sinks):
                sinks = np.ascontiguousarray(sinks, dtype=np.float32)
            self._tensors["sinks"] = self._prepare("sinks", sinks, None, cast_to=pb.DTYPE_FLOAT32)
        if self.cuda and q is not None:
            import torch

            qt = self._tensors["q"]
            if out is None:
                out = torch.empty_like(qt)
            if return_lse and lse_out is None:
                lse_out = torch.empty(qt.shape[:2], dtype=torch.float32, device=qt.device)
            self._tensors["o"] = out
            if return_lse:
                self._tensors["lse"] = lse_out
        elif out is not None or lse_out is not None:
            # numpy outputs: only arrays inside a registered shared-memory buffer can be written
            for key, arr, want in (("o", out, None), ("lse", lse_out, pb.DTYPE_FLOAT32)):
                if arr is None:
                    continue
                if key == "lse" and not return_lse:
                    raise ValueError("lse_out= needs return_lse=True")
                ref = self._shared_ref(arr, want if want is not None else self.q_dtype_enum)
                if ref is None:
                    raise ValueError(f"{'out' if key == 'o' else 'lse_out'}= must be a C-contiguous "
                                     "array inside a SharedBuffer of this session (CPU daemons) or a "
                                     "CUDA tensor (CUDA daemons); inline runs return new arrays")
                self._tensors[key] = ref
        if self.cuda and q is not None:
            for key in ("o", "lse"):
                t = self._tensors.get(key)
                if t is not None and not is_cuda_tensor(t):
                    raise ValueError(f"{key} output must be a CUDA tensor when q is one")

    def _prepare(self, name: str, x: Any, dtype: Any, cast_to: Optional[int]):
        """Returns the object to send: a CUDA torch tensor (zero copy) or a numpy array."""
        if is_cuda_tensor(x) and self.cuda:
            if cast_to is not None and _t.dtype_enum(x.dtype) != cast_to:
                import torch

                x = x.to(getattr(torch, _t.DTYPE_NAMES[cast_to]))
            x = x.contiguous()
            if name == "q":
                self.q_dtype_enum = _t.dtype_enum(x.dtype)
            return x
        if is_torch_tensor(x):
            x, dtype_from_torch = _torch_cpu_to_numpy(x.detach().cpu())
            dtype = dtype or dtype_from_torch
        arr = np.asarray(x)
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)  # numpy's default float: sent (and returned) as float32
        if cast_to is not None:
            arr = _cast_numpy(arr, dtype, cast_to)
            enum = cast_to
        else:
            enum = _t.array_dtype_enum(arr, dtype)
        if name == "q":
            self.q_dtype_enum = enum
        return self._shared_ref(arr, enum) or (arr, enum)

    def _prepare_fp8_kv(self, k: Any, v: Any) -> None:
        """k and v for an FP8 pool (see the comment at FP8_DTYPES): no client cast."""
        (k, k_enum), (v, v_enum) = (self._fp8_kv_source(n, x) for n, x in (("k", k), ("v", v)))
        if k_enum != v_enum:
            if k_enum in FP8_DTYPES or v_enum in FP8_DTYPES:
                raise ValueError(
                    f"k is {_t.DTYPE_NAMES[k_enum]} and v is {_t.DTYPE_NAMES[v_enum]}: on an fp8 "
                    "pool give both already quantized, in the pool's fp8 dtype, or both as "
                    "float32/float16/bfloat16 for attnd to quantize")
            # Two float dtypes: both as float32. Exact (float16 and bfloat16 are float32
            # values), and the daemon quantizes the float32 quotient x / scale either way.
            k, v = (_as_float32(x, e) for x, e in ((k, k_enum), (v, v_enum)))
            k_enum = v_enum = pb.DTYPE_FLOAT32
        for name, x, enum in (("k", k, k_enum), ("v", v, v_enum)):
            self._tensors[name] = (x if is_torch_tensor(x)
                                   else self._shared_ref(x, enum) or (x, enum))

    def _fp8_kv_source(self, name: str, x: Any):
        """(what to send, wire dtype) of k or v for an FP8 pool: a CUDA tensor (zero copy) or a
        numpy array (bfloat16 as uint16 bits, fp8 as uint8 bits)."""
        pool = self.kv_dtype
        if is_torch_tensor(x):
            import torch

            x = x.detach()
            if x.dtype == torch.float64:
                x = x.float()  # as numpy's float64: sent as float32
            enum = _torch_kv_enum(name, x.dtype, pool)
            if is_cuda_tensor(x) and self.cuda:
                return x.contiguous(), enum
            x = x.cpu().contiguous()
            if enum in FP8_DTYPES:
                return x.view(torch.uint8).numpy(), enum
            arr, hint = _torch_cpu_to_numpy(x)
            return arr, _numpy_kv_enum(name, arr, hint, pool)
        arr = np.asarray(x)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        enum = _numpy_kv_enum(name, arr, None, pool)
        if arr.dtype.name == "bfloat16" or arr.dtype.name.startswith("float8"):  # ml_dtypes
            arr = arr.view(np.uint16 if enum == pb.DTYPE_BFLOAT16 else np.uint8)
        return arr, enum

    def _shared_ref(self, arr: Any, enum: Optional[int]):
        """A _SharedRef when ``arr`` lies in one of the session's shared buffers, else None."""
        if not self.shared_buffers or not isinstance(arr, np.ndarray) or enum is None:
            return None
        from attnd.shm import find_in_shared

        hit = find_in_shared(self.shared_buffers, arr)
        if hit is None:
            return None
        if arr.dtype.itemsize != _t.dtype_itemsize(enum):
            raise ValueError(f"shared-memory array of {arr.dtype} cannot hold "
                             f"{_t.DTYPE_NAMES.get(enum, enum)}")
        return _SharedRef(arr, enum, hit[0], hit[1])

    def cuda_tensors(self):
        """(key, tensor) of every tensor that travels as a buffer slice."""
        return [(n, t) for n, t in self._tensors.items() if is_cuda_tensor(t) and self.cuda]

    def ipc_info(self, tensor) -> IpcInfo:
        return cuda_ipc_info(tensor, self.ipc_method)

    def set_slice(self, name: str, buffer_id: str, offset_bytes: int) -> None:
        self.slices[name] = pb.BufferSlice(buffer_id=buffer_id, offset_bytes=int(offset_bytes))

    def wire(self, name: str) -> Optional[pb.Tensor]:
        x = self._tensors.get(name)
        if x is None:
            return None
        if isinstance(x, _SharedRef):
            return pb.Tensor(dtype=x.enum, shape=list(x.array.shape),
                             buffer=pb.BufferSlice(buffer_id=x.buffer_id, offset_bytes=x.offset))
        if isinstance(x, tuple):
            arr, enum = x
            return _t.numpy_to_tensor(arr, enum)
        if name not in self.slices:
            raise RuntimeError(f"internal: no buffer slice for {name}")
        return pb.Tensor(dtype=_t.dtype_enum(x.dtype), shape=list(x.shape), buffer=self.slices[name])

    def run_request(self, plan_id: str, layer: int, options: pb.AttentionOptions) -> pb.RunRequest:
        req = pb.RunRequest(plan_id=plan_id, layer=int(layer), options=options)
        req.q.CopyFrom(self.wire("q"))
        if "k" in self._tensors:
            req.k.CopyFrom(self.wire("k"))
            req.v.CopyFrom(self.wire("v"))
        if "o" in self._tensors:
            req.o.CopyFrom(self.wire("o"))
        if "lse" in self._tensors:
            req.lse.CopyFrom(self.wire("lse"))
        if "sinks" in self._tensors:
            req.sinks.CopyFrom(self.wire("sinks"))
        return req

    def ragged_request(self, qo_indptr: Any, kv_indptr: Any,
                       options: pb.AttentionOptions) -> pb.RunRaggedRequest:
        req = pb.RunRaggedRequest(qo_indptr=int32_list("qo_indptr", qo_indptr),
                                  kv_indptr=int32_list("kv_indptr", kv_indptr), options=options)
        for name in ("q", "k", "v", "o", "lse", "sinks"):
            if name in self._tensors:
                getattr(req, name).CopyFrom(self.wire(name))
        return req

    def append_request(self, plan_id: str, layer: int) -> pb.AppendKvRequest:
        req = pb.AppendKvRequest(plan_id=plan_id, layer=int(layer))
        req.k.CopyFrom(self.wire("k"))
        req.v.CopyFrom(self.wire("v"))
        return req

    def _lead(self):
        """The tensor that decides the device: q, or k for AppendKv."""
        return self._tensors.get("q", self._tensors.get("k"))

    def device_index(self) -> int:
        return int(self._lead().device.index or 0)

    def before_send(self) -> None:
        """Makes the CUDA tensors' contents visible to the daemon (their writers finished)."""
        if self.cuda:
            import torch

            torch.cuda.current_stream(self._lead().device).synchronize()

    def outputs(self, resp: pb.RunResponse):
        """o (and lse when asked): where they were written (CUDA tensors, shared-memory arrays), or
        new arrays from the inline response: numpy for numpy input, torch tensors for torch input.

        bfloat16 numpy outputs are uint16 bit arrays (see attnd.bfloat16_to_float32)."""
        o = self._output("o", resp)
        if not self.return_lse:
            return o
        return o, self._output("lse", resp)

    def _output(self, key: str, resp: pb.RunResponse):
        x = self._tensors.get(key)
        if isinstance(x, _SharedRef):
            return x.array
        if x is not None:
            return x  # a CUDA tensor the daemon wrote
        if not resp.HasField(key):
            raise RuntimeError(f"the daemon returned no inline {key}")
        msg = getattr(resp, key)
        arr = _t.tensor_to_numpy(msg)
        if self.q_is_torch:
            return _numpy_to_torch(arr, msg.dtype, self.q_device)
        return arr


class MergePlan(TensorPlan):
    """The tensors of one MergeState / MergeStates and how each travels, as for runs: numpy arrays
    and CPU torch tensors inline (or as buffer slices when they lie in a SharedBuffer of the
    session), CUDA torch tensors as buffer slices when the daemon takes CUDA IPC handles.

    Args:
        inputs: (field, tensor) in wire order, ("v_a", .), ("s_a", .), ("v_b", .), ("s_b", .) or
            ("v", .), ("s", .). v fields: float32/float16/bfloat16 (numpy: bfloat16 as uint16
            bits with ``dtype="bfloat16"``); s fields: natural-log LSEs, sent as float32.
        out_shape: the merged v's shape, [seq_len, num_heads, head_dim].
        v_out, s_out: where the daemon writes the merged v and s (CUDA tensors, or arrays inside
            a SharedBuffer of the session); None: new CUDA tensors, or inline results.
        return_s: False asks for no merged s (omit_s).
        in_place: v_out and s_out are the first state's v and s, which receive the result (as
            buffer slices when they are ones, else copied into them from the inline reply).
    """

    def __init__(self, inputs, *, out_shape, v_out: Any = None, s_out: Any = None,
                 return_s: bool = True, dtype: Any = None, zero_copy: bool = True,
                 ipc_method: str = "driver", shared_buffers=(), in_place: bool = False):
        self.return_lse = bool(return_s)
        self.ipc_method = ipc_method
        self.shared_buffers = list(shared_buffers)
        self.slices: Dict[str, pb.BufferSlice] = {}
        self._tensors: Dict[str, Any] = {}
        self.lead_name = inputs[0][0]
        lead = inputs[0][1]
        self.q_is_torch = is_torch_tensor(lead)
        self.q_device = lead.device if self.q_is_torch else None
        self.cuda = is_cuda_tensor(lead) and bool(zero_copy)
        self.out_shape = [int(d) for d in out_shape]
        self.q_dtype_enum: Optional[int] = None
        self.copy_back = None  # (v, s) that receive an inline in-place result
        for i, (name, x) in enumerate(inputs):
            self._tensors[name] = self._prepare_merge(name, x, dtype, in_place and i < 2)
        self.v_dtype_enum = self.q_dtype_enum
        if in_place:
            v_in, s_in = inputs[0][1], inputs[1][1]
            v_wire, s_wire = self._tensors[inputs[0][0]], self._tensors[inputs[1][0]]
            if self.cuda or (isinstance(v_wire, _SharedRef) and isinstance(s_wire, _SharedRef)):
                v_out, s_out = v_wire, s_wire
            else:
                self.copy_back = (v_in, s_in)
        if self.cuda:
            import torch

            v0 = self._tensors[self.lead_name]
            if v_out is None:
                v_out = torch.empty(self.out_shape, dtype=v0.dtype, device=v0.device)
            if return_s and s_out is None:
                s_out = torch.empty(self.out_shape[:2], dtype=torch.float32, device=v0.device)
            for key, t in (("v_out", v_out), ("s_out", s_out)):
                if t is not None and not is_cuda_tensor(t):
                    raise ValueError(f"{key} must be a CUDA tensor when the inputs are")
        elif v_out is not None or s_out is not None:
            for key, arr, want in (("v_out", v_out, self.v_dtype_enum),
                                   ("s_out", s_out, pb.DTYPE_FLOAT32)):
                if arr is None or isinstance(arr, _SharedRef):
                    continue
                ref = self._shared_ref(arr, want)
                if ref is None:
                    raise ValueError(f"{key}= must be a C-contiguous array inside a SharedBuffer of "
                                     "this session (CPU daemons) or a CUDA tensor (CUDA daemons); "
                                     "inline merges return new arrays")
                if key == "v_out":
                    v_out = ref
                else:
                    s_out = ref
        if s_out is not None and not return_s:
            raise ValueError("s_out= needs return_s=True")
        if v_out is not None:
            self._tensors["v_out"] = v_out
        if s_out is not None:
            self._tensors["s_out"] = s_out

    def _prepare_merge(self, name: str, x: Any, dtype: Any, in_place: bool):
        is_v = name.startswith("v")
        if self.cuda:
            if not is_cuda_tensor(x):
                raise ValueError(f"{name} must be a CUDA tensor when {self.lead_name} is one")
            import torch

            if not is_v and x.dtype != torch.float32:
                if in_place:
                    raise ValueError(f"{name} must be float32 to be merged into in place")
                x = x.float()
            if in_place and not x.is_contiguous():
                raise ValueError(f"{name} must be contiguous to be merged into in place")
            x = x.contiguous()
            if is_v:
                self._check_v_dtype(name, _t.dtype_enum(x.dtype))
            return x
        if is_torch_tensor(x):
            x, dtype_from_torch = _torch_cpu_to_numpy(x.detach().cpu())
            if is_v:
                dtype = dtype or dtype_from_torch
        arr = np.asarray(x)
        if is_v:
            if arr.dtype == np.float64 and dtype is None:
                arr = arr.astype(np.float32)
            enum = _t.array_dtype_enum(arr, dtype)
            self._check_v_dtype(name, enum)
        else:
            if arr.dtype != np.float32:
                if arr.dtype.kind != "f":
                    raise ValueError(f"{name} must hold float LSEs, got {arr.dtype}")
                arr = arr.astype(np.float32)
            enum = pb.DTYPE_FLOAT32
        return self._shared_ref(arr, enum) or (arr, enum)

    def _check_v_dtype(self, name: str, enum: int) -> None:
        if self.q_dtype_enum is None:
            self.q_dtype_enum = enum
        elif enum != self.q_dtype_enum:
            raise ValueError(f"{name} is {_t.DTYPE_NAMES.get(enum, enum)}, the first v is "
                             f"{_t.DTYPE_NAMES.get(self.q_dtype_enum, self.q_dtype_enum)}")

    def _lead(self):
        return self._tensors[self.lead_name]

    def request(self, message, **fields):
        """``message`` (MergeStateRequest or MergeStatesRequest) with every tensor of the plan."""
        req = message(omit_s=not self.return_lse, **fields)
        for name in self._tensors:
            getattr(req, name).CopyFrom(self.wire(name))
        return req

    def merged(self, resp):
        """(v, s), or v without return_s: where the daemon wrote them, else new arrays from the
        inline reply (numpy for numpy input, torch tensors for torch input); in place: None,
        after the inline result was copied into the first state's v and s."""
        out = []
        for key, field in (("v_out", "v"), ("s_out", "s")):
            if key == "s_out" and not self.return_lse:
                continue
            x = self._tensors.get(key)
            if isinstance(x, _SharedRef):
                out.append(x.array)
            elif x is not None:
                out.append(x)
            elif not resp.HasField(field):
                raise RuntimeError(f"the daemon returned no inline {field}")
            else:
                arr = _t.tensor_to_numpy(getattr(resp, field))
                if self.q_is_torch:
                    arr = _numpy_to_torch(arr, getattr(resp, field).dtype, self.q_device)
                out.append(arr)
        if self.copy_back is not None:
            for dst, src in zip(self.copy_back, out):
                if is_torch_tensor(dst):
                    dst.copy_(src)
                elif dst.dtype.name == "bfloat16":  # ml_dtypes: the reply holds its bits
                    np.copyto(dst.view(np.uint16), src)
                else:
                    np.copyto(dst, src.astype(dst.dtype, copy=False))
            return None
        return tuple(out) if self.return_lse else out[0]


def ragged_tensor_plan(session, q, k, v, *, out, lse_out, return_lse, q_dtype,
                       cuda_ipc, sinks=None) -> TensorPlan:
    """The TensorPlan of a RunRagged: k and v travel in q's dtype (converted when they differ)."""
    if is_torch_tensor(q):
        kv_dtype = _t.dtype_enum(q.dtype)
    else:
        arr = np.asarray(q)
        kv_dtype = _t.array_dtype_enum(arr.astype(np.float32) if arr.dtype == np.float64 else arr,
                                       q_dtype)
    return TensorPlan(q, k, v, kv_dtype=kv_dtype, out=out, lse_out=lse_out, return_lse=return_lse,
                      q_dtype=q_dtype, zero_copy=cuda_ipc,
                      shared_buffers=getattr(session, "shared_buffers", ()), sinks=sinks)


def _shape_of(x: Any) -> List[int]:
    return [int(d) for d in (x.shape if hasattr(x, "shape") else np.asarray(x).shape)]


def merge_state_plan(session, v_a, s_a, v_b, s_b, *, v_out, s_out, return_s, dtype, cuda_ipc,
                     in_place: bool = False) -> MergePlan:
    """The MergePlan of a MergeState (``cuda_ipc``: whether the daemon takes CUDA IPC handles)."""
    shape = _shape_of(v_a)
    if len(shape) != 3:
        raise ValueError(f"v_a must be [seq_len, num_heads, head_dim], got shape {shape}")
    return MergePlan([("v_a", v_a), ("s_a", s_a), ("v_b", v_b), ("s_b", s_b)], out_shape=shape,
                     v_out=v_out, s_out=s_out, return_s=return_s, dtype=dtype,
                     zero_copy=cuda_ipc, shared_buffers=getattr(session, "shared_buffers", ()),
                     in_place=in_place)


def merge_states_plan(session, v, s, *, v_out, s_out, return_s, dtype, cuda_ipc) -> MergePlan:
    """The MergePlan of a MergeStates."""
    shape = _shape_of(v)
    if len(shape) != 4:
        raise ValueError(f"v must be [seq_len, num_states, num_heads, head_dim], got shape {shape}")
    return MergePlan([("v", v), ("s", s)], out_shape=[shape[0], shape[2], shape[3]], v_out=v_out,
                     s_out=s_out, return_s=return_s, dtype=dtype, zero_copy=cuda_ipc,
                     shared_buffers=getattr(session, "shared_buffers", ()))


class _SharedRef:
    """A numpy array inside a registered shared-memory buffer: sent as a BufferSlice."""

    __slots__ = ("array", "enum", "buffer_id", "offset")

    def __init__(self, array: np.ndarray, enum: int, buffer_id: str, offset: int):
        self.array, self.enum, self.buffer_id, self.offset = array, enum, buffer_id, offset


# On an FP8 pool (float8_e4m3fn / float8_e5m2) k and v are not converted on the client:
# float32, float16 and bfloat16 (numpy float32/float16, float64 sent as float32, ml_dtypes.bfloat16
# arrays; torch tensors of those dtypes, CPU or CUDA) travel in their own dtype and the daemon
# quantizes them with the pool's scales, x8 = fp8(x / scale) (round to nearest even, saturating).
# Already-quantized rows of the pool's own fp8 format (torch float8 tensors, ml_dtypes float8
# arrays, or numpy uint8 arrays of the fp8 bits) travel as they are. k and v of two different float
# dtypes are both sent as float32 (exact: the daemon quantizes the float32 quotient either way);
# fp8 k with float v (or the reverse), fp8 of the other fp8 format, numpy uint16 (ambiguous here:
# use ml_dtypes.bfloat16 or torch.bfloat16) and other dtypes raise ValueError.
FP8_DTYPES = (pb.DTYPE_FLOAT8_E4M3, pb.DTYPE_FLOAT8_E5M2)
_QUANTIZED_BY_DAEMON = (pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16)


def _torch_kv_enum(name: str, dtype, pool: int) -> int:
    """The wire dtype of a torch k/v tensor on an FP8 pool (float64 already made float32)."""
    try:
        enum = _t.dtype_enum(dtype)
    except ValueError:
        enum = None
    return _check_fp8_kv_enum(name, enum, str(dtype), pool)


def _numpy_kv_enum(name: str, arr: np.ndarray, hint: Optional[str], pool: int) -> int:
    """The wire dtype of a numpy k/v array on an FP8 pool. ``hint``: "bfloat16" for the uint16
    bits of a CPU torch bfloat16 tensor (internal; run()/append_kv() take no k/v dtype hint)."""
    enum = None
    if hint is not None and arr.dtype == np.uint16:
        enum = _t.dtype_enum(hint)
    elif arr.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):  # ml_dtypes
        enum = _t.dtype_enum(arr.dtype.name)
    elif arr.dtype == np.uint8:
        enum = pool  # the fp8 bits of the pool's format
    elif arr.dtype == np.uint16:
        raise ValueError(f"{name}: a uint16 array is ambiguous on an fp8 pool; pass bfloat16 as "
                         "ml_dtypes.bfloat16 arrays or torch.bfloat16 tensors (or float32)")
    elif arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4):
        enum = pb.DTYPE_FLOAT16 if arr.dtype.itemsize == 2 else pb.DTYPE_FLOAT32
    return _check_fp8_kv_enum(name, enum, str(arr.dtype), pool)


def _check_fp8_kv_enum(name: str, enum: Optional[int], shown: str, pool: int) -> int:
    if enum in _QUANTIZED_BY_DAEMON or enum == pool:
        return enum
    pool_name = _t.DTYPE_NAMES[pool]
    if enum in FP8_DTYPES:
        raise ValueError(f"{name} is {_t.DTYPE_NAMES[enum]} but the pool is {pool_name}: give "
                         f"fp8 {name} in the pool's format, or float32/float16/bfloat16 for attnd "
                         "to quantize")
    raise ValueError(f"{name} of dtype {shown} on a {pool_name} pool: pass float32/float16/"
                     f"bfloat16 (attnd quantizes them) or {pool_name} (uint8 bits for numpy)")


def _as_float32(x: Any, enum: int):
    """A float32/float16/bfloat16 k or v (CUDA tensor, or numpy with bfloat16 as bits) as
    float32."""
    if is_torch_tensor(x):
        return x.float()
    if enum == pb.DTYPE_BFLOAT16:
        return _t.bfloat16_to_float32(x)
    return x.astype(np.float32)


def _cast_numpy(arr: np.ndarray, dtype: Any, target: int) -> np.ndarray:
    """arr as the pool's kv dtype: floats are converted, bits of the right type pass through."""
    src = _t.dtype_enum(dtype) if dtype is not None else None
    if src is None and arr.dtype.name == "bfloat16":
        src = pb.DTYPE_BFLOAT16
    if src is None and arr.dtype == np.uint16 and target == pb.DTYPE_BFLOAT16:
        src = pb.DTYPE_BFLOAT16  # bfloat16 bits for a bfloat16 pool
    if src is None and arr.dtype.kind == "f":
        src = pb.DTYPE_FLOAT16 if arr.dtype.itemsize == 2 else pb.DTYPE_FLOAT32
    if src is None:
        raise ValueError(f"k/v of dtype {arr.dtype}: pass float32/float16 (or bfloat16 bits with dtype)")
    if src == target:
        return arr.view(np.uint16) if arr.dtype.name == "bfloat16" else arr
    if src == pb.DTYPE_BFLOAT16:
        arr = _t.bfloat16_to_float32(arr)
    if target == pb.DTYPE_FLOAT32:
        return arr.astype(np.float32)
    if target == pb.DTYPE_FLOAT16:
        return arr.astype(np.float16)
    if target == pb.DTYPE_BFLOAT16:
        return _t.float32_to_bfloat16(arr.astype(np.float32))
    raise ValueError(f"cannot convert k/v to {_t.DTYPE_NAMES.get(target, target)} on the client")


def slice_nbytes(tensor) -> int:
    return int(tensor.numel()) * int(tensor.element_size())


def seq(x: Optional[Sequence[int]]) -> List[int]:
    return [int(v) for v in x] if x is not None else []
