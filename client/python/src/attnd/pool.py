"""A KV-cache pool as seen from one session: its geometry, page allocation, sharing.

    pool = sess.create_pool("llama-7b", num_layers=32, num_kv_heads=8, head_dim=128,
                            page_size=16, kv_dtype="bfloat16", num_pages=4096)
    pages = pool.allocate(3)                # -> [page ids]; RESOURCE_EXHAUSTED when full
    pool.fork(pages[:2])                    # share a prefix (refcount + 1)
    pool.free(pages)                        # drop this session's references
    other = sess2.attach_pool("llama-7b")   # another session / process of the same user, by name
    pool.fork(pages[:2], other.fork_grant)  # give `other` references to a shared prefix

Layout per layer (NHD): [num_pages][2][page_size][num_kv_heads][head_dim], K at index 0; the pool
is num_layers such layers back to back (``info`` carries the byte strides).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from attnd import tensors as _t
from attnd.v1 import attnd_pb2 as pb

__all__ = ["Pool"]


class Pool:
    """A pool this session is attached to (made by ``Session.create_pool`` / ``attach_pool``)."""

    def __init__(self, session, info: pb.PoolInfo):
        self.session = session
        self.info = info
        self.free_pages = int(info.free_pages)
        self._deleted = False

    @classmethod
    def create(cls, session, name: str, num_layers: int, num_kv_heads: int, head_dim: int,
               page_size: int, kv_dtype: Any = "float16", num_pages: Optional[int] = None,
               memory_budget_bytes: Optional[int] = None) -> "Pool":
        return session.create_pool(name, num_layers, num_kv_heads, head_dim, page_size, kv_dtype,
                                   num_pages, memory_budget_bytes)

    @classmethod
    def attach(cls, session, name: str, attach_token: str = "") -> "Pool":
        return session.attach_pool(name, attach_token)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def pool_id(self) -> str:
        return self.info.pool_id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def fork_grant(self) -> str:
        """This session's fork grant: hand it to the session that should give this one page
        references (``pool.fork(pages, grant)`` there); it allows nothing else."""
        return self.info.fork_grant

    @property
    def attach_token(self) -> str:
        """The pool's attach token: lets sessions of another principal attach to it."""
        return self.info.attach_token

    @property
    def num_layers(self) -> int:
        return int(self.info.num_layers)

    @property
    def num_kv_heads(self) -> int:
        return int(self.info.num_kv_heads)

    @property
    def head_dim(self) -> int:
        return int(self.info.head_dim)

    @property
    def page_size(self) -> int:
        return int(self.info.page_size)

    @property
    def num_pages(self) -> int:
        return int(self.info.num_pages)

    @property
    def kv_dtype(self) -> str:
        """"float32", "float16", "bfloat16" or "float8_e4m3fn"."""
        return _t.DTYPE_NAMES.get(self.info.kv_dtype, str(self.info.kv_dtype))

    @property
    def kv_dtype_enum(self) -> int:
        return int(self.info.kv_dtype)

    # -- operations -----------------------------------------------------------------------------
    def describe(self) -> pb.PoolInfo:
        """Refreshes and returns the PoolInfo (free pages, attached sessions, ...)."""
        self.info = self.session.describe_pool(self.pool_id)
        self.free_pages = int(self.info.free_pages)
        return self.info

    def allocate(self, count: int) -> List[int]:
        """Allocates ``count`` pages (all or nothing) held by this session; returns their ids.

        Raises attnd.ResourceExhausted when fewer are free."""
        ids, self.free_pages = self.session.allocate_pages(self.pool_id, count)
        return ids

    def free(self, page_ids: Sequence[int]) -> int:
        """Drops one of this session's references per listed page; returns free pages."""
        self.free_pages = self.session.free_pages(self.pool_id, page_ids)
        return self.free_pages

    def fork(self, page_ids: Sequence[int], target_grant: str = "") -> List[int]:
        """Adds a reference per listed page, held by this session, or given to the session whose
        fork grant ``target_grant`` is (its ``Pool.fork_grant``); returns the new reference
        counts."""
        return self.session.fork_pages(self.pool_id, page_ids, target_grant)

    def delete(self) -> None:
        """Detaches this session (drops its pages and plans here); the pool's memory is released
        when no session is attached any more."""
        if not self._deleted:
            self.session.delete_pool(self.pool_id)
            self._deleted = True

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed for ``num_tokens`` tokens."""
        return (int(num_tokens) + self.page_size - 1) // self.page_size

    def decode_wrapper(self, **kwargs):
        from attnd.wrappers import BatchDecodeWrapper

        return BatchDecodeWrapper(self, **kwargs)

    def prefill_wrapper(self, **kwargs):
        from attnd.wrappers import BatchPrefillWrapper

        return BatchPrefillWrapper(self, **kwargs)

    def __repr__(self) -> str:
        return (f"attnd.Pool(name={self.name!r}, id={self.pool_id!r}, layers={self.num_layers}, "
                f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"page_size={self.page_size}, kv_dtype={self.kv_dtype}, pages={self.num_pages})")
