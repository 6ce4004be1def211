"""attnd: Python client of the attnd attention-offload daemon.

    import attnd
    with attnd.Client("unix:///tmp/attnd.sock") as client, client.session() as sess:
        pool = sess.create_pool("demo", num_layers=1, num_kv_heads=2, head_dim=64,
                                page_size=16, kv_dtype="float32", num_pages=64)
        pages = pool.allocate(2)
        dec = attnd.BatchDecodeWrapper(pool)
        dec.plan([0, 2], pages, [5], num_qo_heads=8)
        o = dec.run(q, layer=0, k=k, v=v)   # q [1, 8, 64]; k, v [1, 2, 64]

Modules: attnd.client (Client, sessions), attnd.pool (Pool), attnd.wrappers (BatchDecodeWrapper,
BatchPrefillWrapper; attnd.pack_custom_mask: a custom mask's wire form), attnd.steps
(DecodeBatch: a decode batch as one plan across steps, UpdatePlan deltas), attnd.errors (typed
exceptions), attnd.tensors (dtypes, bfloat16),
attnd.ipc (CUDA IPC), attnd.shm (POSIX shared memory), attnd.aio (asyncio), attnd.reference (numpy reference attention),
attnd.v1 (generated stubs).
"""

from attnd import errors as _errors
from attnd.errors import *  # noqa: F401,F403
from attnd.client import Client, Session, StreamSession, UnarySession
from attnd.pool import Pool
from attnd.wrappers import BatchDecodeWrapper, BatchPrefillRaggedWrapper, BatchPrefillWrapper
from attnd.tensors import bfloat16_to_float32, float32_to_bfloat16
from attnd._requests import pack_custom_mask
from attnd.shm import SharedBuffer
from attnd.steps import DecodeBatch

__version__ = "0.1.0"

__all__ = list(_errors.__all__) + [
    "Client",
    "Session",
    "StreamSession",
    "UnarySession",
    "Pool",
    "SharedBuffer",
    "BatchDecodeWrapper",
    "BatchPrefillWrapper",
    "BatchPrefillRaggedWrapper",
    "DecodeBatch",
    "bfloat16_to_float32",
    "float32_to_bfloat16",
    "pack_custom_mask",
]
