"""The blocking client: :class:`Client`, and sessions over the stream or over unary calls.

    import attnd, numpy as np

    with attnd.Client("unix:///tmp/attnd.sock") as client:
        print(client.server_info().backend, client.health())
        with client.session("engine-0") as sess:            # bidirectional stream (hot path)
            pool = sess.create_pool("llama", num_layers=2, num_kv_heads=2, head_dim=64,
                                    page_size=16, kv_dtype="float16", num_pages=256)
            pages = pool.allocate(4)
            ...

Everything a session holds (pages, buffers, plans, pool attachments) is released by the daemon when
the session ends: when the stream closes (or the process dies), or, for a unary session
(``client.session(stream=False)``), at ``close()`` or when its lease runs out.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import grpc

from attnd import _requests as _rq
from attnd import _transport as _tr
from attnd.peer import PeerLink, default_peer_path
from attnd.errors import (AttndError, DeadlineExceeded, Internal, Unavailable, Unimplemented,
                          error_from_code, error_from_rpc)
from attnd.ipc import BufferCache
from attnd.v1 import attnd_pb2 as pb
from attnd.v1 import attnd_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from attnd.pool import Pool
    from attnd.shm import SharedBuffer

__all__ = ["Client", "Session", "StreamSession", "UnarySession"]

# stream command -> its response message class (the default when a result field is empty)
_RESPONSE_TYPES = {cmd: getattr(pb, pb.SessionResponse.DESCRIPTOR.fields_by_name[field].message_type.name)
                   for cmd, field in _tr.RESULT_FIELD.items()}


class Client:
    """A connection to one attnd daemon.

    Args:
        target: "unix:///path/to.sock" (default ``$ATTND_TARGET`` or unix:///tmp/attnd.sock), a
            bare socket path, or "host:port".
        token: bearer token, sent as ``authorization: Bearer <token>`` on every call (TCP).
        timeout: default deadline of each call or stream command, seconds (None = no deadline).
        retries: extra attempts for calls that fail with UNAVAILABLE (daemon not up yet,
            restarting); nothing else is retried. Session-bound commands are not retried once
            the session exists (a restarted daemon no longer knows the session).
        backoff, max_backoff: first and largest wait between attempts, seconds (doubling, jittered).
        credentials: ``grpc.ssl_channel_credentials(...)`` for TLS; None = plaintext.
        device_map: client CUDA ordinal -> daemon CUDA ordinal, for CUDA IPC registration when the
            two processes see different CUDA_VISIBLE_DEVICES (default: identity).
        options: extra grpc channel options.
        peer_socket: the daemon's peer socket (attnd.peer); None = the unix socket's path +
            ".peer" (none for TCP), "" = do not use one. Unary sessions on a unix socket and
            shared-memory buffers need it.
    """

    def __init__(self, target: Optional[str] = None, *, token: Optional[str] = None,
                 timeout: Optional[float] = 30.0, retries: int = 5, backoff: float = 0.1,
                 max_backoff: float = 2.0, credentials: Optional[grpc.ChannelCredentials] = None,
                 device_map: Optional[Dict[int, int]] = None,
                 options: Sequence[Tuple[str, Any]] = (), peer_socket: Optional[str] = None):
        self.target = _tr.normalize_target(target)
        # The peer connection (attnd.peer): None = "<unix socket path>.peer"; "" = none.
        path = default_peer_path(self.target) if peer_socket is None else peer_socket
        self._peer: Optional[PeerLink] = PeerLink(path) if path else None
        self.token = token
        self.timeout = timeout
        self.retry = _tr.RetryPolicy(retries, backoff, max_backoff)
        self.device_map = dict(device_map or {})
        opts = _tr.channel_options(options)
        if credentials is not None:
            self._channel = grpc.secure_channel(self.target, credentials, options=opts)
        else:
            self._channel = grpc.insecure_channel(self.target, options=opts)
        self._stub = pb_grpc.AttndStub(self._channel)
        self._health = self._channel.unary_unary(_tr.HEALTH_CHECK_METHOD)
        self._sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------------
    def _metadata(self, session_id: Optional[str] = None):
        return _tr.call_metadata(self.token, session_id,
                                 self._peer.key() if self._peer is not None else "")

    def _with_retry(self, method: str, fn, *args, **kwargs):
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except grpc.RpcError as e:
                if self.retry.retryable(e.code()) and attempt < self.retry.retries:
                    time.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise error_from_rpc(e, method) from None
            except Unavailable:
                if attempt < self.retry.retries:
                    time.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise

    def unary(self, method: str, request, *, session_id: Optional[str] = None,
              timeout: Optional[float] = None, retry: bool = True):
        """Calls the unary RPC ``method`` (e.g. "CreatePool") and returns its response message.

        Raises an :class:`attnd.AttndError` subclass on failure; UNAVAILABLE is retried (when
        ``retry``) with backoff."""
        fn = getattr(self._stub, method)
        md = self._metadata(session_id)
        t = self.timeout if timeout is None else timeout
        if not retry:
            try:
                return fn(request, timeout=t, metadata=md)
            except grpc.RpcError as e:
                raise error_from_rpc(e, method) from None
        return self._with_retry(method, fn, request, timeout=t, metadata=md)

    # -- API -------------------------------------------------------------------------------------
    def server_info(self) -> pb.ServerInfo:
        """The daemon's ServerInfo: version, backend, device, memory, supported dtypes/head dims/
        page sizes, whether RegisterBuffer takes CUDA IPC handles, largest message."""
        return self.unary("GetServerInfo", pb.GetServerInfoRequest())

    def health(self, service: str = "") -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".

        ``service`` "" is the daemon as a whole; "attnd.v1.Attnd" the API service."""
        req = _tr.encode_health_request(service)
        data = self._with_retry("Health/Check", self._health, req, timeout=self.timeout,
                                metadata=self._metadata())
        return _tr.decode_health_response(data)

    def session(self, name: str = "python", *, stream: bool = True, lease_ms: int = 0,
                timeout: Optional[float] = None) -> "Session":
        """Opens a session.

        Args:
            name: shown in the daemon's logs.
            stream: True (default): bound to a bidirectional Session stream, commands in order
                with little per-call overhead, released when the stream closes. False: unary
                calls with the ``x-attnd-session`` header, released by close() or after
                ``lease_ms`` without a call.
            lease_ms: unary sessions only; 0 = the daemon's --session_lease_ms.
            timeout: per-command deadline, seconds (default: the client's).
        """
        if self._closed:
            raise Unavailable("client is closed")
        t = self.timeout if timeout is None else timeout
        if stream:
            sess: Session = self._with_retry("Session", StreamSession, self, name, t)
        else:
            sess = UnarySession(self, name, lease_ms, t)
        self._sessions.add(sess)
        return sess

    def close(self) -> None:
        """Closes every session opened through this client, then the channel."""
        if self._closed:
            return
        self._closed = True
        for sess in list(self._sessions):
            try:
                sess.close()
            except AttndError:
                pass
        self._channel.close()
        if self._peer is not None:
            self._peer.close()  # the daemon releases whatever unary sessions are left

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"attnd.Client({self.target!r})"


class Session:
    """Commands in one daemon session (base of StreamSession and UnarySession).

    The low-level methods take and return the wire messages' fields; :class:`attnd.Pool` and the
    wrappers (:class:`attnd.BatchDecodeWrapper`, :class:`attnd.BatchPrefillWrapper`) build on them.
    """

    id: str = ""

    def __init__(self, client: Client, timeout: Optional[float]):
        self.client = client
        self.timeout = timeout
        self.buffers = BufferCache()
        self.shared_buffers: List["SharedBuffer"] = []
        self._info: Optional[pb.ServerInfo] = None
        self._closed = False

    # Implemented by the subclasses: one command, its response message, or an AttndError.
    def call(self, command: str, request, timeout: Optional[float] = None):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- server -------------------------------------------------------------------------------
    def server_info(self) -> pb.ServerInfo:
        """ServerInfo, fetched once per session."""
        if self._info is None:
            self._info = self.call("get_server_info", pb.GetServerInfoRequest())
        return self._info

    @property
    def cuda_ipc(self) -> bool:
        """Whether the daemon takes CUDA IPC handles (zero-copy torch CUDA tensors)."""
        return bool(self.server_info().cuda_ipc)

    # -- pools and pages ----------------------------------------------------------------------
    def create_pool(self, name: str, num_layers: int, num_kv_heads: int, head_dim: int,
                    page_size: int, kv_dtype: Any = "float16", num_pages: Optional[int] = None,
                    memory_budget_bytes: Optional[int] = None, k_scale: Any = None,
                    v_scale: Any = None) -> "Pool":
        """Creates a KV-cache pool and attaches this session to it.

        The pool holds, per layer, [num_pages][2][page_size][num_kv_heads][head_dim] of kv_dtype
        (K at index 0). Size it with exactly one of num_pages or memory_budget_bytes.
        FP8 pools (kv_dtype "float8_e4m3fn" / "float8_e5m2") may take dequantization scales:
        k_scale / v_scale, one per layer or one per layer and KV head (layer-major); a stored
        value x8 stands for x8 * scale. K/V rows appended to such a pool (run(k=, v=),
        append_kv) are given either in float32/float16/bfloat16, which the daemon quantizes,
        x8 = fp8(x / scale) (round to nearest even, saturating), or already quantized in the
        pool's fp8 format (see BatchDecodeWrapper.run).
        """
        from attnd.pool import Pool

        req = _rq.create_pool_request(name, num_layers, num_kv_heads, head_dim, page_size,
                                      kv_dtype, num_pages, memory_budget_bytes, k_scale, v_scale)
        return Pool(self, self.call("create_pool", req).pool)

    def attach_pool(self, name: str, attach_token: str = "") -> "Pool":
        """Attaches to a pool another session created, by its name: sessions of the creator's
        principal (the same user on a unix socket) need nothing else, others the pool's
        ``attach_token`` (``Pool.attach_token`` of a session attached to it)."""
        from attnd.pool import Pool

        return Pool(self, self.call("attach_pool", pb.AttachPoolRequest(
            name=name, attach_token=attach_token)).pool)

    def describe_pool(self, pool_id: str) -> pb.PoolInfo:
        return self.call("describe_pool", pb.DescribePoolRequest(pool_id=pool_id)).pool

    def delete_pool(self, pool_id: str) -> None:
        """Detaches this session from the pool (memory is freed with the last session)."""
        self.call("delete_pool", pb.DeletePoolRequest(pool_id=pool_id))

    def allocate_pages(self, pool_id: str, count: int) -> Tuple[List[int], int]:
        """Allocates ``count`` pages (all or nothing); returns (page ids, pages still free)."""
        r = self.call("allocate_pages", pb.AllocatePagesRequest(pool_id=pool_id, count=int(count)))
        return list(r.page_ids), int(r.free_pages)

    def free_pages(self, pool_id: str, page_ids: Sequence[int]) -> int:
        """Drops one reference per listed page; returns the pool's free page count."""
        r = self.call("free_pages", pb.FreePagesRequest(
            pool_id=pool_id, page_ids=_rq.int32_list("page_ids", page_ids)))
        return int(r.free_pages)

    def fork_pages(self, pool_id: str, page_ids: Sequence[int],
                   target_grant: str = "") -> List[int]:
        """Adds one reference per listed page, held by this session, or given to the session
        whose fork grant ``target_grant`` is (its ``Pool.fork_grant``); returns the new
        reference counts."""
        r = self.call("fork_pages", pb.ForkPagesRequest(
            pool_id=pool_id, page_ids=_rq.int32_list("page_ids", page_ids),
            target_grant=target_grant or ""))
        return list(r.refcounts)

    # -- buffers ------------------------------------------------------------------------------
    def register_buffer(self, size_bytes: int, *, cuda_ipc_handle: Optional[bytes] = None,
                        device: int = 0, shared_memory_fd: Optional[int] = None) -> str:
        """Registers client memory the daemon may read and write: a CUDA allocation by its IPC
        handle (64 bytes) and device, or shared memory by file descriptor (a memfd sealed
        against shrinking, sent over the peer socket). Returns its id."""
        req = _rq.register_buffer_request(self.client, size_bytes, cuda_ipc_handle, device,
                                          shared_memory_fd)
        return self.call("register_buffer", req).buffer_id

    def unregister_buffer(self, buffer_id: str) -> None:
        self.call("unregister_buffer", pb.UnregisterBufferRequest(buffer_id=buffer_id))

    def shared_buffer(self, nbytes: int, mode: int = 0o600) -> "SharedBuffer":
        """Creates a POSIX shared memory buffer of ``nbytes`` and registers it (daemons with
        ``ServerInfo.shared_memory``, e.g. the CPU backend). numpy arrays made with
        ``buf.array(shape, dtype, offset)`` then travel zero-copy; see attnd.shm."""
        from attnd.shm import SharedBuffer

        buf = SharedBuffer(nbytes, mode)
        try:
            buf.buffer_id = self.register_buffer(buf.nbytes, shared_memory_fd=buf.fd)
        except BaseException:
            buf._release()
            raise
        self.shared_buffers.append(buf)
        return buf

    def release_shared_buffer(self, buf: "SharedBuffer") -> None:
        """Unregisters the buffer and unlinks its shared memory."""
        if buf in self.shared_buffers:
            self.shared_buffers.remove(buf)
            try:
                if not self._closed:
                    self.unregister_buffer(buf.buffer_id)
            finally:
                buf._release()

    def _release_all_shared(self) -> None:
        for buf in list(self.shared_buffers):
            buf._release()
        self.shared_buffers.clear()

    def register_tensor(self, tensor, ipc_method: str = "driver") -> Tuple[str, int]:
        """Registers a CUDA torch tensor's allocation once (cached) and returns
        (buffer_id, offset_bytes) of the tensor in it."""
        from attnd.ipc import cuda_ipc_info

        info = cuda_ipc_info(tensor, ipc_method)
        return self._buffer_for(info, _rq.slice_nbytes(tensor)), info.offset_bytes

    def _buffer_for(self, info, nbytes: int) -> str:
        bid = self.buffers.lookup(info, nbytes)
        if bid is None:
            device = self.client.device_map.get(info.device, info.device)
            bid = self.register_buffer(info.size_bytes, cuda_ipc_handle=info.handle, device=device)
            self.buffers.remember(info, bid)
        return bid

    def _resolve_slices(self, tp: "_rq.TensorPlan") -> None:
        for name, t in tp.cuda_tensors():
            info = tp.ipc_info(t)
            tp.set_slice(name, self._buffer_for(info, _rq.slice_nbytes(t)), info.offset_bytes)

    # -- interprocess CUDA events (async completion; wire API 0.2) -----------------------------
    def register_event(self, ipc_event_handle: bytes, device: int = 0) -> str:
        """Registers the engine's interprocess CUDA event (cudaIpcEventHandle_t, 64 bytes) so
        Run/AppendKv can name it in wait_event_id. Returns its id. CUDA daemons only."""
        _require_events()
        return self.call("register_event", pb.RegisterEventRequest(
            ipc_event_handle=bytes(ipc_event_handle), device=int(device))).event_id

    def unregister_event(self, event_id: str) -> None:
        _require_events()
        self.call("unregister_event", pb.UnregisterEventRequest(event_id=event_id))

    def get_completion_event(self) -> Tuple[bytes, int]:
        """(cudaIpcEventHandle_t bytes, device) of the session's completion event."""
        _require_events()
        r = self.call("get_completion_event", pb.GetCompletionEventRequest())
        return bytes(r.ipc_event_handle), int(r.device)

    def _async_events(self, device: int):
        """(engine event, its id, daemon completion event) for a CUDA device, made once."""
        cache = self.__dict__.setdefault("_events", {})
        if device not in cache:
            import torch

            with torch.cuda.device(device):
                mine = torch.cuda.Event(interprocess=True)
                mine.record(torch.cuda.current_stream(device))  # creates it on this device
                event_id = self.register_event(mine.ipc_handle(),
                                               self.client.device_map.get(device, device))
                handle, _ = self.get_completion_event()
                done = torch.cuda.Event.from_ipc_handle(device, handle)
            cache[device] = (mine, event_id, done)
        return cache[device]

    # -- plans and runs -----------------------------------------------------------------------
    def create_plan(self, pool_id: str, kind: str, num_qo_heads: int, kv_indptr, kv_indices,
                    kv_last_page_len, qo_indptr=None, cascade_levels=None,
                    custom_mask=None, q_dtype=None) -> pb.CreatePlanResponse:
        """Low level CreatePlan; ``kind`` is "decode" or "prefill". See BatchDecodeWrapper.

        cascade_levels: a cascade (shared-prefix) plan's shared levels, outermost first
        (FlashInfer's MultiLevelCascadeAttentionWrapper); each a dict with qo_indptr (groups of whole requests
        over the batch's query rows), kv_indptr, kv_indices and kv_last_page_len (each group's
        shared prefix pages), or a 4-tuple in that order. The table given is then the last level
        (each request's own pages). Runs work as for any plan (see attnd.proto CascadeLevel).

        custom_mask: a prefill plan's custom mask (tree / speculative verification; FlashInfer's
        packed_custom_mask), kept by the plan for all its runs: either the packed wire form
        (bytes, or a 1-D uint8 array: per request in order, ceil(qo_len * kv_len / 8) bytes,
        ``numpy.packbits(mask_b.reshape(-1), bitorder="little")``), or a list of per-request
        boolean [qo_len_b, kv_len_b] arrays (True = visible), packed here
        (attnd.pack_custom_mask). Row i of request b is its query at kv position
        kv_len_b - qo_len_b + i. A run sees a key when the mask, causal (if the run sets it) and
        the window (if set) all allow it; a row that sees no key gets o = 0 and lse = -inf (the
        sink with sinks). On a cascade plan the mask covers the last level (kv_len_b = b's own
        pages); the shared levels stay fully visible. Decode plans take none (INVALID_ARGUMENT);
        a packed mask of the wrong length is refused with INVALID_ARGUMENT naming custom_mask.

        q_dtype: optional, the dtype every run's q has ("float16", "bfloat16", "float32", or a
        numpy / torch dtype): a combination the backend cannot run (the CUDA backend's prefill
        plans read K/V of q's dtype) is then refused here rather than at the first run, and a
        run whose q has another dtype is refused naming q.dtype (CreatePlanRequest.q_dtype).
        """
        k = {"decode": pb.ATTENTION_KIND_DECODE, "prefill": pb.ATTENTION_KIND_PREFILL}[kind]
        return self.call("create_plan", _rq.create_plan_request(
            pool_id, k, num_qo_heads, kv_indptr, kv_indices, kv_last_page_len, qo_indptr,
            cascade_levels, custom_mask, q_dtype=q_dtype))

    def update_plan(self, plan_id: str, deltas: Sequence[Any]) -> pb.UpdatePlanResponse:
        """Changes a plan by deltas across steps instead of re-creating it (UpdatePlan; see
        attnd.proto PlanDelta): each delta a dict with one key, e.g.
        ``{"grow": {"request": 0, "num_tokens": 1, "new_pages": [9], "qo_len": 1}}``,
        ``{"leave": {"request": 2}}``, ``{"join": {"kv_indices": [4, 5],
        "kv_last_page_len": 3, "qo_len": 1}}``, or a pb.PlanDelta. Requests are named by their
        index before the update; the survivors keep their order and joins follow. Atomic: a
        refused update (the delta and field named) changes nothing. Cascade and custom-mask
        plans are refused. Returns the updated shape (batch_size, qo_tokens, kv_tokens)."""
        return self.call("update_plan", _rq.update_plan_request(plan_id, deltas))

    def delete_plan(self, plan_id: str) -> None:
        self.call("delete_plan", pb.DeletePlanRequest(plan_id=plan_id))

    # -- attention over ragged K/V ---------------------------------------------------------------
    def run_ragged(self, q, k, v, qo_indptr, kv_indptr, *, out=None, lse_out=None,
                   return_lse: bool = False, q_dtype: Any = None, completion: str = "sync",
                   sinks: Any = None, **options):
        """Prefill/append attention over K/V passed as tensors, no pool (RunRagged; FlashInfer's
        BatchPrefillWithRaggedKVCacheWrapper, see attnd.BatchPrefillRaggedWrapper).

        Args:
            q: [qo_indptr[-1], num_qo_heads, head_dim]; request b's rows are
                qo_indptr[b]:qo_indptr[b+1], the last qo_len of its sequence.
            k, v: [kv_indptr[-1], num_kv_heads, head_dim], sent in q's dtype; request b's keys
                are rows kv_indptr[b]:kv_indptr[b+1].
            out, lse_out, return_lse, q_dtype, completion, sinks: as BatchPrefillWrapper.run
                (sinks: [num_qo_heads] attention sinks; the lse then includes them).
            options: causal, sm_scale, pos_encoding, rope_theta, rope_scale, rope_offsets,
                logits_soft_cap, window_left (as BatchPrefillWrapper.plan).

        Returns:
            o, or (o, lse) with return_lse.
        """
        opts = _rq.attention_options(return_lse=return_lse, **options)
        ipc = self.cuda_ipc if _rq.is_cuda_tensor(q) else False
        tp = _rq.ragged_tensor_plan(self, q, k, v, out=out, lse_out=lse_out,
                                    return_lse=return_lse, q_dtype=q_dtype, cuda_ipc=ipc,
                                    sinks=sinks)
        self._resolve_slices(tp)
        return tp.outputs(self._send_tensors(
            "run_ragged", tp.ragged_request(qo_indptr, kv_indptr, opts), tp, completion))

    # -- merging attention states --------------------------------------------------------------
    def merge_state(self, v_a, s_a, v_b, s_b, *, v_out=None, s_out=None, return_s: bool = True,
                    dtype: Any = None, completion: str = "sync"):
        """Merges two attention states of each row and head (FlashInfer's ``merge_state``):
        ``(v_a, s_a)`` over one set of keys and ``(v_b, s_b)`` over another give ``(v, s)`` over
        both, ``s = ln(exp(s_a) + exp(s_b))``, ``v = exp(s_a - s) v_a + exp(s_b - s) v_b``.

        Args:
            v_a, v_b: [seq_len, num_heads, head_dim] float32/float16/bfloat16 (numpy bfloat16 as
                uint16 bits with ``dtype="bfloat16"``), the same dtype.
            s_a, s_b: [seq_len, num_heads] log-sum-exps in the NATURAL log, as run(...,
                return_lse=True) returns them (sent as float32). FlashInfer's are base 2:
                multiply them by ln(2) first. -inf marks an empty state (it weighs 0).
            v_out, s_out: preallocated outputs for the daemon to write: CUDA tensors, or numpy
                arrays inside a session.shared_buffer(). An output may be exactly an input.
            return_s: False: no merged s (returns v only).
            completion: "sync", or "async" for CUDA tensors (see BatchDecodeWrapper.run).

        Returns:
            (v, s), or v without return_s; v in v_a's dtype, s float32 [seq_len, num_heads].
        """
        ipc = self.cuda_ipc if _rq.is_cuda_tensor(v_a) else False
        mp = _rq.merge_state_plan(self, v_a, s_a, v_b, s_b, v_out=v_out, s_out=s_out,
                                  return_s=return_s, dtype=dtype, cuda_ipc=ipc)
        self._resolve_slices(mp)
        return mp.merged(self._send_tensors("merge_state", mp.request(pb.MergeStateRequest),
                                            mp, completion))

    def merge_state_in_place(self, v, s, v_other, s_other, *, dtype: Any = None,
                             completion: str = "sync") -> None:
        """FlashInfer's ``merge_state_in_place``: ``(v, s)`` becomes the merge of ``(v, s)`` and
        ``(v_other, s_other)`` (shapes and LSE convention as merge_state). CUDA tensors and arrays
        inside a session.shared_buffer() are written by the daemon; other arrays and CPU
        tensors receive the inline result (they must be writable)."""
        ipc = self.cuda_ipc if _rq.is_cuda_tensor(v) else False
        mp = _rq.merge_state_plan(self, v, s, v_other, s_other, v_out=None, s_out=None,
                                  return_s=True, dtype=dtype, cuda_ipc=ipc, in_place=True)
        self._resolve_slices(mp)
        mp.merged(self._send_tensors("merge_state", mp.request(pb.MergeStateRequest), mp,
                                     completion))

    def merge_states(self, v, s, *, v_out=None, s_out=None, return_s: bool = True,
                     dtype: Any = None, completion: str = "sync"):
        """Merges ``num_states`` attention states of each row and head (FlashInfer's
        ``merge_states``): v [seq_len, num_states, num_heads, head_dim], s [seq_len, num_states,
        num_heads] natural-log LSEs -> (v [seq_len, num_heads, head_dim], s [seq_len, num_heads]).
        A row whose states are all empty (s = -inf), or num_states = 0, merges to v = 0,
        s = -inf. Other arguments as merge_state."""
        ipc = self.cuda_ipc if _rq.is_cuda_tensor(v) else False
        mp = _rq.merge_states_plan(self, v, s, v_out=v_out, s_out=s_out, return_s=return_s,
                                   dtype=dtype, cuda_ipc=ipc)
        self._resolve_slices(mp)
        return mp.merged(self._send_tensors("merge_states", mp.request(pb.MergeStatesRequest),
                                            mp, completion))

    def _send_tensors(self, command: str, req, tp, completion: str):
        """Sends a command whose tensors ``tp`` (a TensorPlan) describes. completion="sync": the
        client waits for its CUDA stream before sending and the reply means done. "async" (CUDA
        zero-copy only): the daemon's stream waits on an event recorded on the caller's current
        stream, the reply comes once the work is enqueued, and the caller's current stream waits
        on the daemon's completion event."""
        if completion == "sync":
            tp.before_send()
            return self.call(command, req)
        if completion != "async":
            raise ValueError(f"completion must be 'sync' or 'async', not {completion!r}")
        if not tp.cuda:
            raise ValueError("completion='async' needs CUDA tensors and a daemon with CUDA IPC")
        import torch

        device = tp.device_index()
        mine, event_id, done = self._async_events(device)
        stream = torch.cuda.current_stream(device)
        mine.record(stream)
        req.wait_event_id = event_id
        req.completion = pb.COMPLETION_ASYNC
        resp = self.call(command, req)
        stream.wait_event(done)
        return resp


_EOF = object()


def _require_events() -> None:
    if not hasattr(pb, "RegisterEventRequest"):
        raise Unimplemented("this attnd package was built from a wire API without interprocess "
                            "events (async completion); rebuild it from a newer proto")


def _stream_error(err, command: str) -> AttndError:
    """The error of a stream that ended: the daemon going away (connection lost, or the call
    cancelled by its shutdown) is Unavailable; any other status (e.g. FAILED_PRECONDITION for a
    bad first message) is raised as itself."""
    converted = error_from_rpc(err, command)
    if converted.code == grpc.StatusCode.CANCELLED:
        return Unavailable(f"the session stream was cancelled by the daemon: {converted.message}",
                           method=command)
    return converted


class StreamSession(Session):
    """A session bound to one bidirectional ``Session`` stream (the hot path).

    Commands are sent in order and each waits for its answer; a thread reads the stream. If the
    stream breaks (daemon gone), this and every later command raise :class:`attnd.Unavailable`
    and the daemon has released everything the session held: open a new session.
    Thread-safe (commands are serialized).
    """

    def __init__(self, client: Client, name: str = "python", timeout: Optional[float] = None):
        super().__init__(client, timeout)
        self._send: "queue.Queue[Any]" = queue.Queue()
        self._recv: "queue.Queue[Any]" = queue.Queue()
        self._lock = threading.Lock()
        self._next_id = 1
        self._broken: Optional[AttndError] = None

        def requests():
            while True:
                item = self._send.get()
                if item is None:
                    return
                yield item

        self._call = client._stub.Session(requests(), metadata=client._metadata())
        self._reader = threading.Thread(target=self._read, name="attnd-session-reader", daemon=True)
        self._reader.start()
        try:
            opened = self.call("open", pb.OpenSessionRequest(client_name=name))
        except BaseException:
            self._shutdown()
            raise
        self.id = opened.session_id

    def _read(self) -> None:
        try:
            for resp in self._call:
                self._recv.put(resp)
            self._recv.put(_EOF)
        except grpc.RpcError as e:
            self._recv.put(e)
        except Exception as e:  # pragma: no cover - defensive: never leave a caller waiting
            self._recv.put(Internal(f"session reader failed: {e!r}"))

    def _fail(self, err: AttndError) -> AttndError:
        if self._broken is None:
            self._broken = Unavailable(f"session stream is closed ({err})", method=err.method)
        return err

    def call(self, command: str, request, timeout: Optional[float] = None):
        """Sends one command (a SessionRequest oneof field name) and returns its result message."""
        with self._lock:
            if self._closed:
                raise Unavailable("session is closed", method=command)
            if self._broken is not None:
                raise Unavailable(self._broken.message, method=command)
            rid = self._next_id
            self._next_id += 1
            self._send.put(pb.SessionRequest(request_id=rid, **{command: request}))
            t = self.timeout if timeout is None else timeout
            try:
                item = self._recv.get(timeout=t)
            except queue.Empty:
                # The stream's order is lost with an unanswered command: give the stream up.
                err = self._fail(DeadlineExceeded(f"no answer within {t} s", method=command))
                self._call.cancel()
                raise err from None
            if item is _EOF:
                raise self._fail(Unavailable("the daemon ended the session stream", method=command))
            if isinstance(item, grpc.RpcError):
                raise self._fail(_stream_error(item, command)) from None
            if isinstance(item, AttndError):
                raise self._fail(item)
            if item.request_id != rid:
                raise self._fail(Internal(f"answer for request {item.request_id}, expected {rid}",
                                          method=command))
            if item.code != 0:
                raise error_from_code(item.code, item.message, command)
            field = _tr.RESULT_FIELD[command]
            if item.WhichOneof("result") == field:
                return getattr(item, field)
            return _RESPONSE_TYPES[command]()

    def _shutdown(self) -> None:
        self._send.put(None)  # half-close: the daemon ends the stream and releases the session
        self._reader.join(timeout=5)
        if self._reader.is_alive():
            self._call.cancel()

    def close(self) -> None:
        """Ends the stream; the daemon releases the session's pages, buffers and plans."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()
        self._release_all_shared()

    def __repr__(self) -> str:
        return f"attnd.StreamSession(id={self.id!r})"


class UnarySession(Session):
    """A session over unary calls (``x-attnd-session`` header); the fallback when streams are not
    an option (e.g. through proxies). Released by close() or after ``lease_ms`` without a call."""

    def __init__(self, client: Client, name: str = "python", lease_ms: int = 0,
                 timeout: Optional[float] = None):
        super().__init__(client, timeout)
        r = client.unary("OpenSession", pb.OpenSessionRequest(client_name=name,
                                                              lease_ms=int(lease_ms)),
                         timeout=timeout)
        self.id = r.session_id
        self.lease_ms = int(r.lease_ms)

    def call(self, command: str, request, timeout: Optional[float] = None):
        if self._closed:
            raise Unavailable("session is closed", method=command)
        method = _tr.UNARY_METHOD[command]
        return self.client.unary(method, request, session_id=self.id,
                                 timeout=self.timeout if timeout is None else timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.unary("CloseSession", pb.CloseSessionRequest(), session_id=self.id,
                              timeout=self.timeout, retry=False)
        finally:
            self._release_all_shared()

    def __repr__(self) -> str:
        return f"attnd.UnarySession(id={self.id!r})"
