"""asyncio variant of the client, on grpc.aio: same names and semantics, awaitable methods.

    import asyncio, attnd.aio

    async def main():
        async with attnd.aio.AsyncClient("unix:///tmp/attnd.sock") as client:
            print(await client.health())
            async with client.session("engine-0") as sess:
                pool = await sess.create_pool("demo", num_layers=1, num_kv_heads=2, head_dim=64,
                                              page_size=16, kv_dtype="float32", num_pages=64)
                pages = await pool.allocate(1)
                dec = attnd.aio.AsyncBatchDecodeWrapper(pool)
                await dec.plan([0, 1], pages, [1], num_qo_heads=4)
                o = await dec.run(q, 0, k=k, v=v)   # q [1, 4, 64]; k, v [1, 2, 64]

    asyncio.run(main())

A client (and its sessions) belongs to the event loop it was created on.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Tuple

import grpc
import grpc.aio

from attnd import _requests as _rq
from attnd import _transport as _tr
from attnd.peer import PeerLink, default_peer_path
from attnd.client import _RESPONSE_TYPES, _require_events, _stream_error
from attnd.errors import (AttndError, DeadlineExceeded, Internal, Unavailable, error_from_code,
                          error_from_rpc)
from attnd.ipc import BufferCache
from attnd.pool import Pool
from attnd.v1 import attnd_pb2 as pb
from attnd.v1 import attnd_pb2_grpc as pb_grpc
from attnd.wrappers import UNSET, PlanState

__all__ = ["AsyncClient", "AsyncSession", "AsyncStreamSession", "AsyncUnarySession", "AsyncPool",
           "AsyncBatchDecodeWrapper", "AsyncBatchPrefillWrapper"]


class AsyncClient:
    """asyncio twin of :class:`attnd.Client` (same arguments)."""

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
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=opts)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=opts)
        self._stub = pb_grpc.AttndStub(self._channel)
        self._health = self._channel.unary_unary(_tr.HEALTH_CHECK_METHOD)
        self._sessions: List[AsyncSession] = []
        self._closed = False

    def _metadata(self, session_id: Optional[str] = None):
        return _tr.call_metadata(self.token, session_id,
                                 self._peer.key() if self._peer is not None else "")

    async def _with_retry(self, method: str, make_call):
        attempt = 0
        while True:
            try:
                return await make_call()
            except grpc.aio.AioRpcError as e:
                if self.retry.retryable(e.code()) and attempt < self.retry.retries:
                    await asyncio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise error_from_rpc(e, method) from None
            except Unavailable:
                if attempt < self.retry.retries:
                    await asyncio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise

    async def unary(self, method: str, request, *, session_id: Optional[str] = None,
                    timeout: Optional[float] = None, retry: bool = True):
        """Awaits the unary RPC ``method``; AttndError subclasses on failure."""
        fn = getattr(self._stub, method)
        md = self._metadata(session_id)
        t = self.timeout if timeout is None else timeout
        if not retry:
            try:
                return await fn(request, timeout=t, metadata=md)
            except grpc.aio.AioRpcError as e:
                raise error_from_rpc(e, method) from None
        return await self._with_retry(method, lambda: fn(request, timeout=t, metadata=md))

    async def server_info(self) -> pb.ServerInfo:
        return await self.unary("GetServerInfo", pb.GetServerInfoRequest())

    async def health(self, service: str = "") -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN"."""
        req = _tr.encode_health_request(service)
        data = await self._with_retry("Health/Check", lambda: self._health(
            req, timeout=self.timeout, metadata=self._metadata()))
        return _tr.decode_health_response(data)

    def session(self, name: str = "python", *, stream: bool = True, lease_ms: int = 0,
                timeout: Optional[float] = None) -> "_Opening":
        """Opens a session (see attnd.Client.session): ``sess = await client.session()`` or
        ``async with client.session() as sess:``."""
        return _Opening(lambda: self._open_session(name, stream, lease_ms, timeout))

    async def _open_session(self, name: str, stream: bool, lease_ms: int,
                            timeout: Optional[float]) -> "AsyncSession":
        if self._closed:
            raise Unavailable("client is closed")
        t = self.timeout if timeout is None else timeout
        if stream:
            sess: AsyncSession = await self._with_retry(
                "Session", lambda: AsyncStreamSession._open(self, name, t))
        else:
            sess = await AsyncUnarySession._open(self, name, lease_ms, t)
        self._sessions.append(sess)
        return sess

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sess in self._sessions:
            try:
                await sess.close()
            except AttndError:
                pass
        await self._channel.close()
        if self._peer is not None:
            self._peer.close()  # the daemon releases whatever unary sessions are left

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _Opening:
    """Awaitable (-> the session) and async context manager (closes it at exit)."""

    def __init__(self, open_fn):
        self._open = open_fn
        self._session: Optional[AsyncSession] = None

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self) -> "AsyncSession":
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncSession:
    """asyncio twin of :class:`attnd.Session`."""

    id: str = ""

    def __init__(self, client: AsyncClient, timeout: Optional[float]):
        self.client = client
        self.timeout = timeout
        self.buffers = BufferCache()
        self.shared_buffers: list = []
        self._info: Optional[pb.ServerInfo] = None
        self._closed = False

    async def call(self, command: str, request, timeout: Optional[float] = None):
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def server_info(self) -> pb.ServerInfo:
        if self._info is None:
            self._info = await self.call("get_server_info", pb.GetServerInfoRequest())
        return self._info

    async def cuda_ipc(self) -> bool:
        return bool((await self.server_info()).cuda_ipc)

    async def create_pool(self, name: str, num_layers: int, num_kv_heads: int, head_dim: int,
                          page_size: int, kv_dtype: Any = "float16",
                          num_pages: Optional[int] = None,
                          memory_budget_bytes: Optional[int] = None, k_scale: Any = None,
                          v_scale: Any = None) -> "AsyncPool":
        """See attnd.Session.create_pool (FP8 scales too)."""
        req = _rq.create_pool_request(name, num_layers, num_kv_heads, head_dim, page_size,
                                      kv_dtype, num_pages, memory_budget_bytes, k_scale, v_scale)
        return AsyncPool(self, (await self.call("create_pool", req)).pool)

    async def attach_pool(self, name: str, attach_token: str = "") -> "AsyncPool":
        return AsyncPool(self, (await self.call("attach_pool", pb.AttachPoolRequest(
            name=name, attach_token=attach_token))).pool)

    async def describe_pool(self, pool_id: str) -> pb.PoolInfo:
        return (await self.call("describe_pool", pb.DescribePoolRequest(pool_id=pool_id))).pool

    async def delete_pool(self, pool_id: str) -> None:
        await self.call("delete_pool", pb.DeletePoolRequest(pool_id=pool_id))

    async def allocate_pages(self, pool_id: str, count: int) -> Tuple[List[int], int]:
        r = await self.call("allocate_pages", pb.AllocatePagesRequest(pool_id=pool_id,
                                                                      count=int(count)))
        return list(r.page_ids), int(r.free_pages)

    async def free_pages(self, pool_id: str, page_ids: Sequence[int]) -> int:
        r = await self.call("free_pages", pb.FreePagesRequest(
            pool_id=pool_id, page_ids=_rq.int32_list("page_ids", page_ids)))
        return int(r.free_pages)

    async def fork_pages(self, pool_id: str, page_ids: Sequence[int],
                         target_grant: str = "") -> List[int]:
        r = await self.call("fork_pages", pb.ForkPagesRequest(
            pool_id=pool_id, page_ids=_rq.int32_list("page_ids", page_ids),
            target_grant=target_grant or ""))
        return list(r.refcounts)

    async def register_buffer(self, size_bytes: int, *, cuda_ipc_handle: Optional[bytes] = None,
                              device: int = 0, shared_memory_fd: Optional[int] = None) -> str:
        """See attnd.Session.register_buffer."""
        req = _rq.register_buffer_request(self.client, size_bytes, cuda_ipc_handle, device,
                                          shared_memory_fd)
        return (await self.call("register_buffer", req)).buffer_id

    async def unregister_buffer(self, buffer_id: str) -> None:
        await self.call("unregister_buffer", pb.UnregisterBufferRequest(buffer_id=buffer_id))

    async def shared_buffer(self, nbytes: int, mode: int = 0o600):
        """See attnd.Session.shared_buffer."""
        from attnd.shm import SharedBuffer

        buf = SharedBuffer(nbytes, mode)
        try:
            buf.buffer_id = await self.register_buffer(buf.nbytes, shared_memory_fd=buf.fd)
        except BaseException:
            buf._release()
            raise
        self.shared_buffers.append(buf)
        return buf

    async def release_shared_buffer(self, buf) -> None:
        if buf in self.shared_buffers:
            self.shared_buffers.remove(buf)
            try:
                if not self._closed:
                    await self.unregister_buffer(buf.buffer_id)
            finally:
                buf._release()

    def _release_all_shared(self) -> None:
        for buf in list(self.shared_buffers):
            buf._release()
        self.shared_buffers.clear()

    async def _buffer_for(self, info, nbytes: int) -> str:
        bid = self.buffers.lookup(info, nbytes)
        if bid is None:
            device = self.client.device_map.get(info.device, info.device)
            bid = await self.register_buffer(info.size_bytes, cuda_ipc_handle=info.handle,
                                             device=device)
            self.buffers.remember(info, bid)
        return bid

    async def _resolve_slices(self, tp: "_rq.TensorPlan") -> None:
        for name, t in tp.cuda_tensors():
            info = tp.ipc_info(t)
            tp.set_slice(name, await self._buffer_for(info, _rq.slice_nbytes(t)), info.offset_bytes)

    async def register_event(self, ipc_event_handle: bytes, device: int = 0) -> str:
        _require_events()
        return (await self.call("register_event", pb.RegisterEventRequest(
            ipc_event_handle=bytes(ipc_event_handle), device=int(device)))).event_id

    async def unregister_event(self, event_id: str) -> None:
        _require_events()
        await self.call("unregister_event", pb.UnregisterEventRequest(event_id=event_id))

    async def get_completion_event(self) -> Tuple[bytes, int]:
        _require_events()
        r = await self.call("get_completion_event", pb.GetCompletionEventRequest())
        return bytes(r.ipc_event_handle), int(r.device)

    async def _async_events(self, device: int):
        cache = self.__dict__.setdefault("_events", {})
        if device not in cache:
            import torch

            with torch.cuda.device(device):
                mine = torch.cuda.Event(interprocess=True)
                mine.record(torch.cuda.current_stream(device))
                handle = mine.ipc_handle()
            event_id = await self.register_event(handle, self.client.device_map.get(device, device))
            done_handle, _ = await self.get_completion_event()
            done = torch.cuda.Event.from_ipc_handle(device, done_handle)
            cache[device] = (mine, event_id, done)
        return cache[device]

    async def create_plan(self, pool_id: str, kind: str, num_qo_heads: int, kv_indptr,
                          kv_indices, kv_last_page_len, qo_indptr=None,
                          cascade_levels=None, custom_mask=None,
                          q_dtype=None) -> pb.CreatePlanResponse:
        """See attnd.Session.create_plan (cascade_levels, custom_mask, q_dtype too)."""
        k = {"decode": pb.ATTENTION_KIND_DECODE, "prefill": pb.ATTENTION_KIND_PREFILL}[kind]
        return await self.call("create_plan", _rq.create_plan_request(
            pool_id, k, num_qo_heads, kv_indptr, kv_indices, kv_last_page_len, qo_indptr,
            cascade_levels, custom_mask, q_dtype=q_dtype))

    async def update_plan(self, plan_id: str, deltas) -> pb.UpdatePlanResponse:
        """See attnd.Session.update_plan."""
        return await self.call("update_plan", _rq.update_plan_request(plan_id, deltas))

    async def delete_plan(self, plan_id: str) -> None:
        await self.call("delete_plan", pb.DeletePlanRequest(plan_id=plan_id))

    async def run_ragged(self, q, k, v, qo_indptr, kv_indptr, *, out=None, lse_out=None,
                         return_lse: bool = False, q_dtype: Any = None,
                         completion: str = "sync", sinks: Any = None, **options):
        """See attnd.Session.run_ragged."""
        opts = _rq.attention_options(return_lse=return_lse, **options)
        ipc = await self.cuda_ipc() if _rq.is_cuda_tensor(q) else False
        tp = _rq.ragged_tensor_plan(self, q, k, v, out=out, lse_out=lse_out,
                                    return_lse=return_lse, q_dtype=q_dtype, cuda_ipc=ipc,
                                    sinks=sinks)
        await self._resolve_slices(tp)
        return tp.outputs(await self._send_tensors(
            "run_ragged", tp.ragged_request(qo_indptr, kv_indptr, opts), tp, completion))

    async def merge_state(self, v_a, s_a, v_b, s_b, *, v_out=None, s_out=None,
                          return_s: bool = True, dtype: Any = None, completion: str = "sync"):
        """See attnd.Session.merge_state (natural-log LSE)."""
        ipc = await self.cuda_ipc() if _rq.is_cuda_tensor(v_a) else False
        mp = _rq.merge_state_plan(self, v_a, s_a, v_b, s_b, v_out=v_out, s_out=s_out,
                                  return_s=return_s, dtype=dtype, cuda_ipc=ipc)
        await self._resolve_slices(mp)
        return mp.merged(await self._send_tensors(
            "merge_state", mp.request(pb.MergeStateRequest), mp, completion))

    async def merge_state_in_place(self, v, s, v_other, s_other, *, dtype: Any = None,
                                   completion: str = "sync") -> None:
        """See attnd.Session.merge_state_in_place."""
        ipc = await self.cuda_ipc() if _rq.is_cuda_tensor(v) else False
        mp = _rq.merge_state_plan(self, v, s, v_other, s_other, v_out=None, s_out=None,
                                  return_s=True, dtype=dtype, cuda_ipc=ipc, in_place=True)
        await self._resolve_slices(mp)
        mp.merged(await self._send_tensors("merge_state", mp.request(pb.MergeStateRequest), mp,
                                           completion))

    async def merge_states(self, v, s, *, v_out=None, s_out=None, return_s: bool = True,
                           dtype: Any = None, completion: str = "sync"):
        """See attnd.Session.merge_states."""
        ipc = await self.cuda_ipc() if _rq.is_cuda_tensor(v) else False
        mp = _rq.merge_states_plan(self, v, s, v_out=v_out, s_out=s_out, return_s=return_s,
                                   dtype=dtype, cuda_ipc=ipc)
        await self._resolve_slices(mp)
        return mp.merged(await self._send_tensors(
            "merge_states", mp.request(pb.MergeStatesRequest), mp, completion))

    async def _send_tensors(self, command: str, req, tp, completion: str):
        """See attnd.Session._send_tensors."""
        if completion == "sync":
            tp.before_send()
            return await self.call(command, req)
        if completion != "async":
            raise ValueError(f"completion must be 'sync' or 'async', not {completion!r}")
        if not tp.cuda:
            raise ValueError("completion='async' needs CUDA tensors and a daemon with CUDA IPC")
        import torch

        device = tp.device_index()
        mine, event_id, done = await self._async_events(device)
        stream = torch.cuda.current_stream(device)
        mine.record(stream)
        req.wait_event_id = event_id
        req.completion = pb.COMPLETION_ASYNC
        resp = await self.call(command, req)
        stream.wait_event(done)
        return resp


class AsyncStreamSession(AsyncSession):
    """A session bound to one Session stream (commands in order, one at a time)."""

    def __init__(self, client: AsyncClient, timeout: Optional[float]):
        super().__init__(client, timeout)
        self._lock = asyncio.Lock()
        self._next_id = 1
        self._broken: Optional[AttndError] = None
        self._call = client._stub.Session(metadata=client._metadata())

    @classmethod
    async def _open(cls, client: AsyncClient, name: str, timeout: Optional[float]):
        sess = cls(client, timeout)
        try:
            opened = await sess.call("open", pb.OpenSessionRequest(client_name=name))
        except BaseException:
            sess._call.cancel()
            raise
        sess.id = opened.session_id
        return sess

    def _fail(self, err: AttndError) -> AttndError:
        if self._broken is None:
            self._broken = Unavailable(f"session stream is closed ({err})", method=err.method)
        return err

    async def call(self, command: str, request, timeout: Optional[float] = None):
        async with self._lock:
            if self._closed:
                raise Unavailable("session is closed", method=command)
            if self._broken is not None:
                raise Unavailable(self._broken.message, method=command)
            rid = self._next_id
            self._next_id += 1
            t = self.timeout if timeout is None else timeout
            try:
                await self._call.write(pb.SessionRequest(request_id=rid, **{command: request}))
                resp = await asyncio.wait_for(self._call.read(), t)
            except asyncio.TimeoutError:
                err = self._fail(DeadlineExceeded(f"no answer within {t} s", method=command))
                self._call.cancel()
                raise err from None
            except grpc.aio.AioRpcError as e:
                raise self._fail(_stream_error(e, command)) from None
            except asyncio.InvalidStateError:
                raise self._fail(Unavailable("the session stream is finished", method=command)) from None
            if resp is grpc.aio.EOF:
                # The status of the finished call explains why, if it failed.
                code = await self._call.code()
                details = await self._call.details()
                if code == grpc.StatusCode.CANCELLED:
                    raise self._fail(Unavailable(f"the session stream was cancelled: {details}",
                                                 method=command))
                if code != grpc.StatusCode.OK:
                    raise self._fail(error_from_code(code, details, command))
                raise self._fail(Unavailable("the daemon ended the session stream", method=command))
            if resp.request_id != rid:
                raise self._fail(Internal(f"answer for request {resp.request_id}, expected {rid}",
                                          method=command))
            if resp.code != 0:
                raise error_from_code(resp.code, resp.message, command)
            field = _tr.RESULT_FIELD[command]
            if resp.WhichOneof("result") == field:
                return getattr(resp, field)
            return _RESPONSE_TYPES[command]()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._call.done_writing()
            await asyncio.wait_for(self._call.read(), 5)  # EOF once the daemon has closed it
        except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError):
            self._call.cancel()
        finally:
            self._release_all_shared()


class AsyncUnarySession(AsyncSession):
    """asyncio twin of :class:`attnd.UnarySession`."""

    @classmethod
    async def _open(cls, client: AsyncClient, name: str, lease_ms: int, timeout: Optional[float]):
        sess = cls(client, timeout)
        r = await client.unary("OpenSession", pb.OpenSessionRequest(client_name=name,
                                                                    lease_ms=int(lease_ms)),
                               timeout=timeout)
        sess.id = r.session_id
        sess.lease_ms = int(r.lease_ms)
        return sess

    async def call(self, command: str, request, timeout: Optional[float] = None):
        if self._closed:
            raise Unavailable("session is closed", method=command)
        return await self.client.unary(_tr.UNARY_METHOD[command], request, session_id=self.id,
                                       timeout=self.timeout if timeout is None else timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.client.unary("CloseSession", pb.CloseSessionRequest(), session_id=self.id,
                                    timeout=self.timeout, retry=False)
        finally:
            self._release_all_shared()


class AsyncPool(Pool):
    """asyncio twin of :class:`attnd.Pool` (geometry properties are the same; the operations are
    coroutines)."""

    async def describe(self) -> pb.PoolInfo:  # type: ignore[override]
        self.info = await self.session.describe_pool(self.pool_id)
        self.free_pages = int(self.info.free_pages)
        return self.info

    async def allocate(self, count: int) -> List[int]:  # type: ignore[override]
        ids, self.free_pages = await self.session.allocate_pages(self.pool_id, count)
        return ids

    async def free(self, page_ids: Sequence[int]) -> int:  # type: ignore[override]
        self.free_pages = await self.session.free_pages(self.pool_id, page_ids)
        return self.free_pages

    async def fork(self, page_ids: Sequence[int],  # type: ignore[override]
                   target_grant: str = "") -> List[int]:
        return await self.session.fork_pages(self.pool_id, page_ids, target_grant)

    async def delete(self) -> None:  # type: ignore[override]
        if not self._deleted:
            await self.session.delete_pool(self.pool_id)
            self._deleted = True

    def decode_wrapper(self, **kwargs):
        return AsyncBatchDecodeWrapper(self, **kwargs)

    def prefill_wrapper(self, **kwargs):
        return AsyncBatchPrefillWrapper(self, **kwargs)


class _AsyncWrapper(PlanState):
    async def _create(self, req: pb.CreatePlanRequest) -> None:
        old = self.plan_id
        self._planned(await self.session.call("create_plan", req))
        if old is not None:
            await self._delete_quietly(old)

    async def _delete_quietly(self, plan_id: str) -> None:
        try:
            await self.session.delete_plan(plan_id)
        except AttndError:
            pass

    async def run(self, q, layer: int, k=None, v=None, *, out=None, lse_out=None,
                  return_lse: bool = False, q_dtype: Any = None, causal: Any = UNSET,
                  sm_scale: Any = UNSET, pos_encoding: Any = UNSET, rope_theta: Any = UNSET,
                  rope_scale: Any = UNSET, rope_offsets: Any = UNSET,
                  logits_soft_cap: Any = UNSET, window_left: Any = UNSET,
                  completion: str = "sync", sinks: Any = None):
        """See attnd.BatchDecodeWrapper.run (same shapes, options and sinks)."""
        plan_id = self._require_plan()
        opts = self._options(dict(causal=causal, sm_scale=sm_scale, pos_encoding=pos_encoding,
                                  rope_theta=rope_theta, rope_scale=rope_scale,
                                  rope_offsets=rope_offsets, logits_soft_cap=logits_soft_cap,
                                  window_left=window_left), return_lse)
        ipc = await self.session.cuda_ipc() if self._needs_ipc_check(q, k, v, sinks) else False
        tp = self._tensors(q, k, v, out, lse_out, return_lse, q_dtype, ipc, sinks)
        await self.session._resolve_slices(tp)
        req = tp.run_request(plan_id, layer, opts)
        return tp.outputs(await self._send("run", req, tp, completion))

    async def _send(self, command: str, req, tp, completion: str):
        """See attnd.Session._send_tensors."""
        return await self.session._send_tensors(command, req, tp, completion)

    async def append_kv(self, k, v, layer: int, *, completion: str = "sync") -> None:
        """See attnd.BatchDecodeWrapper.append_kv (same k/v dtypes: FP8 pools quantize
        float32/float16/bfloat16 on the daemon)."""
        plan_id = self._require_plan()
        ipc = await self.session.cuda_ipc() if self._needs_ipc_check(k, v) else False
        tp = self._tensors(None, k, v, None, None, False, None, ipc)
        await self.session._resolve_slices(tp)
        req = tp.append_request(plan_id, layer)
        await self._send("append_kv", req, tp, completion)

    async def delete(self) -> None:
        if self.plan_id is not None:
            plan_id, self.plan_id = self.plan_id, None
            await self._delete_quietly(plan_id)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.delete()


class AsyncBatchDecodeWrapper(_AsyncWrapper):
    """asyncio twin of :class:`attnd.BatchDecodeWrapper`."""

    kind = "decode"

    async def plan(self, kv_indptr, kv_indices, kv_last_page_len, num_qo_heads: int, *,
                   sm_scale: Any = UNSET, pos_encoding: Any = UNSET, rope_theta: Any = UNSET,
                   rope_scale: Any = UNSET, rope_offsets: Any = UNSET,
                   logits_soft_cap: Any = UNSET, window_left: Any = UNSET,
                   cascade_levels: Any = None):
        await self._create(self._plan_request(
            kv_indptr, kv_indices, kv_last_page_len, None, num_qo_heads,
            dict(sm_scale=sm_scale, pos_encoding=pos_encoding, rope_theta=rope_theta,
                 rope_scale=rope_scale, rope_offsets=rope_offsets,
                 logits_soft_cap=logits_soft_cap, window_left=window_left),
            cascade_levels))
        return self


class AsyncBatchPrefillWrapper(_AsyncWrapper):
    """asyncio twin of :class:`attnd.BatchPrefillWrapper`."""

    kind = "prefill"

    async def plan(self, kv_indptr, kv_indices, kv_last_page_len, qo_indptr, num_qo_heads: int,
                   *, causal: Any = UNSET, sm_scale: Any = UNSET, pos_encoding: Any = UNSET,
                   rope_theta: Any = UNSET, rope_scale: Any = UNSET, rope_offsets: Any = UNSET,
                   logits_soft_cap: Any = UNSET, window_left: Any = UNSET,
                   cascade_levels: Any = None, custom_mask: Any = None):
        """See attnd.BatchPrefillWrapper.plan (cascade_levels, custom_mask too)."""
        await self._create(self._plan_request(
            kv_indptr, kv_indices, kv_last_page_len, qo_indptr, num_qo_heads,
            dict(causal=causal, sm_scale=sm_scale, pos_encoding=pos_encoding,
                 rope_theta=rope_theta, rope_scale=rope_scale, rope_offsets=rope_offsets,
                 logits_soft_cap=logits_soft_cap, window_left=window_left),
            cascade_levels, custom_mask))
        return self
