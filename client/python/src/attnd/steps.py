"""A running decode batch whose plan lives across steps (issue 14's streamed page-table updates).

attnd.DecodeBatch keeps an engine's decode batch over one pool as one plan that changes by deltas
(Session.update_plan; attnd.proto PlanDelta) instead of being re-created every step: each step
every request gets one new token position (a fresh page from the pool when its last page is
full), requests that finished leave and new ones join, and only those changes travel.

    batch = attnd.DecodeBatch(pool, num_qo_heads=32, pos_encoding="rope_llama")
    a = batch.join(prompt_pages, prompt_len)      # a prefilled request
    for step in range(n):
        batch.step()                              # one new token per request
        for layer in range(num_layers):
            o = batch.run(layer, q[layer], k[layer], v[layer])  # appends the new k/v, attends
        if done(a):
            batch.leave(a)                        # applied (and its pages freed) at next step()

Requests are named by the handle join() returns; ``batch.handles`` lists them in the plan's row
order (the order of q / k / v rows in run()). A step whose update is refused changes nothing:
pages taken for it are given back and the batch stays as it was (UpdatePlan is atomic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from attnd.errors import AttndError
from attnd.wrappers import BatchDecodeWrapper


@dataclass
class _Request:
    handle: int
    pages: List[int]
    kv_len: int  # tokens in the pages (the next step's token not yet counted)
    owns_pages: bool  # free the pages when the request leaves
    in_plan: bool = False  # the live plan has it (else it joins at the next step)
    leaving: bool = False
    new_pages: List[int] = field(default_factory=list)  # taken for the pending step


class DecodeBatch:
    """A decode batch over ``pool`` kept as one plan across steps.

    Args:
        pool: an attnd.Pool of this session.
        num_qo_heads: query heads (a multiple of the pool's KV heads).
        **defaults: attention defaults for run() (sm_scale, pos_encoding, rope_theta, ...), as
            BatchDecodeWrapper.plan takes them.
    """

    def __init__(self, pool, num_qo_heads: int, **defaults: Any):
        self.pool = pool
        self.num_qo_heads = int(num_qo_heads)
        self.defaults = defaults
        self.wrapper = BatchDecodeWrapper(pool)
        self._requests: List[_Request] = []  # plan order: in-plan ones first, then pending joins
        self._next_handle = 0
        self.steps = 0

    # -- membership ---------------------------------------------------------------------------
    def join(self, pages: Sequence[int], kv_len: int, *, owns_pages: bool = True) -> int:
        """Adds a request whose first ``kv_len`` tokens are in ``pages`` (held by this session;
        ceil(kv_len / page_size) of them, kv_len >= 1) at the next step(); returns its handle.
        owns_pages: the batch frees the request's pages (those given and those it takes) when it
        leaves."""
        page_size = self.pool.page_size
        pages = [int(p) for p in pages]
        kv_len = int(kv_len)
        if kv_len < 1 or len(pages) != (kv_len + page_size - 1) // page_size:
            raise ValueError(f"join: kv_len={kv_len} needs {(kv_len + page_size - 1) // page_size}"
                             f" pages of {page_size} tokens, got {len(pages)}")
        handle = self._next_handle
        self._next_handle += 1
        self._requests.append(_Request(handle, pages, kv_len, owns_pages))
        return handle

    def leave(self, handle: int) -> None:
        """Removes the request at the next step() (its pages freed then when the batch owns
        them)."""
        r = self._find(handle)
        if not r.in_plan:  # never planned: drop it now
            self._requests.remove(r)
            self._release(r)
            return
        r.leaving = True

    @property
    def handles(self) -> List[int]:
        """The requests of the live plan, in its row order (the rows of run()'s q, k, v)."""
        return [r.handle for r in self._requests if r.in_plan]

    def kv_len(self, handle: int) -> int:
        """The request's tokens, the current step's new token included once step() ran."""
        return self._find(handle).kv_len

    def pages(self, handle: int) -> List[int]:
        return list(self._find(handle).pages)

    # -- steps --------------------------------------------------------------------------------
    def step(self) -> "DecodeBatch":
        """Moves every request on by one token position (a page from the pool when its last one
        is full), applies the pending leaves and joins, and updates the plan: CreatePlan the
        first time, UpdatePlan (only the changes) after. Atomic: when the daemon refuses it,
        the pages taken for it are freed and the batch is as before."""
        page_size = self.pool.page_size
        staying = [r for r in self._requests if not r.leaving]
        need = sum(1 for r in staying if r.kv_len % page_size == 0)
        fresh = self.pool.allocate(need) if need else []
        taken = iter(fresh)
        for r in staying:
            r.new_pages = [next(taken)] if r.kv_len % page_size == 0 else []
        try:
            if self.wrapper.plan_id is None:
                self._create(staying)
            else:
                self._update()
        except AttndError:
            for r in staying:
                r.new_pages = []
            if fresh:
                self.pool.free(fresh)
            raise
        for r in [r for r in self._requests if r.leaving]:
            self._requests.remove(r)
            self._release(r)
        for r in self._requests:
            r.pages.extend(r.new_pages)
            r.new_pages = []
            r.kv_len += 1
            r.in_plan = True
        self.steps += 1
        return self

    def run(self, layer: int, q, k, v, **kwargs):
        """One layer of the step: appends the new tokens' k, v [batch, num_kv_heads, head_dim]
        and attends with q [batch, num_qo_heads, head_dim] (rows in ``handles`` order); keyword
        arguments as BatchDecodeWrapper.run."""
        return self.wrapper.run(q, layer, k, v, **kwargs)

    def close(self) -> None:
        """Deletes the plan and frees the pages the batch owns."""
        self.wrapper.delete()
        for r in self._requests:
            self._release(r)
        self._requests = []

    def __enter__(self) -> "DecodeBatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _find(self, handle: int) -> _Request:
        for r in self._requests:
            if r.handle == handle:
                return r
        raise KeyError(f"no request with handle {handle} in the batch")

    def _release(self, r: _Request) -> None:
        if r.owns_pages and r.pages:
            self.pool.free(r.pages)
            r.pages = []

    def _last_len(self, r: _Request) -> int:
        pages = len(r.pages) + len(r.new_pages)
        return r.kv_len + 1 - (pages - 1) * self.pool.page_size

    def _create(self, staying: List[_Request]) -> None:
        indptr, indices, last = [0], [], []
        for r in staying:
            indices.extend(r.pages + r.new_pages)
            indptr.append(len(indices))
            last.append(self._last_len(r))
        self.wrapper.plan(indptr, indices, last, self.num_qo_heads, **self.defaults)

    def _update(self) -> None:
        deltas: List[Dict[str, Any]] = []
        index = 0
        for r in self._requests:
            if not r.in_plan:
                continue
            if r.leaving:
                deltas.append({"leave": {"request": index}})
            else:
                deltas.append({"grow": {"request": index, "num_tokens": 1,
                                        "new_pages": r.new_pages, "qo_len": 1}})
            index += 1
        for r in self._requests:
            if not r.in_plan and not r.leaving:
                deltas.append({"join": {"kv_indices": r.pages + r.new_pages,
                                        "kv_last_page_len": self._last_len(r), "qo_len": 1}})
        resp = self.pool.session.update_plan(self.wrapper.plan_id, deltas)
        self.wrapper.batch_size = int(resp.batch_size)
        self.wrapper.qo_tokens = int(resp.qo_tokens)
        self.wrapper.kv_tokens = int(resp.kv_tokens)


__all__ = ["DecodeBatch"]
