"""GPU host only: attnd.flashinfer (the FlashInfer drop-in) against a float32 torch reference, and
the very same test bodies run against FlashInfer itself, to show that the semantics match:
shapes, the NHD layout (single tensor and (k, v) halves), page sizes 1 and 16, GQA, base-2 LSE
(NH/HN, log2/ln), RoPE LLaMA, logits soft cap, sliding windows, sm_scale, out=/lse= buffers,
custom masks (custom_mask / packed_custom_mask: trees on a prefix, random masks with a window and
soft cap, causal ignored), append_paged_kv_cache, single_* functions, the ragged prefill wrapper,
state merging and MultiLevelCascadeAttentionWrapper (2 and 3 levels, decode- and prefill-like
last levels; also compared with FlashInfer's own wrapper on the same cache and inputs).

Every case runs twice: param "attnd" (attnd.flashinfer on a CUDA daemon, $ATTND_BIN) and param
"flashinfer" (``import flashinfer``, e.g. the peer bundle of ../shared/gpu/flashinfer-peer on
PYTHONPATH, which scripts/gpu-host-run.sh adds when FI_PEER_DIR is set). FlashInfer runs on the
JIT cache of fi_peer.py ($FI_PEER_CACHE, default /tmp/fi_peer_cache; same environment, so modules
fi_peer.py built are reused). ATTND_FI_JIT=1 (what scripts/gpu-host-run.sh sets) first builds
every module the cases below need and the cache lacks, in one ninja run (FLASHINFER_MODULES: 17
modules, head_dim 128; before the cascade cases' FA3 prefill module was added, 15 took about 2.5
minutes on the GPU host's 16 cores from an empty cache; nothing when they are cached), and lets
FlashInfer compile anything else a case asks for. Without it, a case whose module is not cached
skips with the module's name. `python3 tests/python/gpu_flashinfer_dropin_test.py` does only that
build. Skips with the reason: without torch / CUDA, without the daemon binary, the "flashinfer"
params when it cannot be imported, and without ATTND_FI_JIT=1 the uncached modules.

Outputs and LSE are poisoned (NaN) before every run; the caches are filled with random data
(unused slots included) before the real K/V are written, so a wrong page or slot shows.

    ATTND_FI_JIT=1 ATTND_BIN=.gpu/bin/attnd PYTHONPATH=.gpu-py:/tmp/fi python3 -m pytest -q -rs \\
        tests/python/gpu_flashinfer_dropin_test.py
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA device", allow_module_level=True)

import attnd.flashinfer as afi  # noqa: E402
from attention_reference import tree_mask, tree_parents  # noqa: E402
from conftest import make_daemon  # noqa: E402

DEV = torch.device("cuda", 0)
F16, BF16 = torch.float16, torch.bfloat16
# (atol, rtol) of o; (atol, rtol) of the base-2 LSE. Against a float32 reference computed from
# the same fp16/bf16 inputs: the kernels round P (and rotated q/k) to the input type.
TOL = {F16: ((5e-3, 5e-3), (1e-2, 5e-3)), BF16: ((3e-2, 3e-2), (4e-2, 5e-3))}
LN2 = math.log(2.0)


# --- FlashInfer, imported on its JIT cache --------------------------------------------------------

class FlashInferNotBuilt(RuntimeError):
    """A FlashInfer kernel module that is not in its JIT cache (and may not be compiled here)."""

    def __init__(self, name):
        super().__init__(name)
        self.module = name


def _import_flashinfer():
    """(module, None) or (None, why not). The environment is fi_peer.py's, so FlashInfer finds
    the modules fi_peer.py built (same cache, arch list and module names). A module missing from
    that cache raises FlashInferNotBuilt instead of compiling, unless ATTND_FI_JIT=1.
    (FLASHINFER_DISABLE_JIT cannot do this: with it, 0.7.4 refuses JIT-built modules too.)"""
    cache = os.environ.get("FI_PEER_CACHE", "/tmp/fi_peer_cache")
    os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", cache)
    os.environ.setdefault("TVM_FFI_CACHE_DIR", os.path.join(cache, "tvm-ffi"))
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0a")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    os.environ.setdefault("FLASHINFER_DISABLE_VERSION_CHECK", "1")
    os.environ.setdefault("MAX_JOBS", os.environ.get("FI_PEER_MAX_JOBS", "16"))
    if not os.environ.get("CUDA_HOME"):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"
        elif shutil.which("nvcc"):
            os.environ["CUDA_HOME"] = os.path.dirname(os.path.dirname(
                os.path.realpath(shutil.which("nvcc"))))
    paths = [os.path.dirname(sys.executable)]
    if os.environ.get("CUDA_HOME"):
        paths.append(os.path.join(os.environ["CUDA_HOME"], "bin"))
    os.environ["PATH"] = os.pathsep.join(paths + [os.environ.get("PATH", "")])
    if not shutil.which("ninja"):
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ["PATH"]
        except ImportError:
            pass
    try:
        import flashinfer
        import flashinfer.cascade  # noqa: F401
        import flashinfer.decode  # noqa: F401
        import flashinfer.page  # noqa: F401
        import flashinfer.prefill  # noqa: F401
        from flashinfer.jit import core as jit_core
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"
    build = jit_core.JitSpecNvcc.build

    def guarded_build(spec, *args, **kwargs):
        if spec.jit_library_path.exists():
            return None  # built already (fi_peer.py, prebuild_flashinfer): loaded as it is
        if os.environ.get("ATTND_FI_JIT") == "1":
            print(f"FlashInfer JIT: {spec.name} was not prebuilt (not in FLASHINFER_MODULES); "
                  "compiling it now", flush=True)
            return build(spec, *args, **kwargs)
        raise FlashInferNotBuilt(spec.name)

    jit_core.JitSpecNvcc.build = guarded_build
    return flashinfer, None


FLASHINFER, FLASHINFER_WHY = _import_flashinfer()


def _missing_jit(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, FlashInferNotBuilt):
            return e.module
        if type(e).__name__ == "MissingJITCacheError":
            spec = getattr(e, "spec", None)
            return getattr(spec, "name", None) or str(e).splitlines()[0]
        e = e.__cause__ or e.__context__
    return None


class Backend:
    """One side of the comparison: the FlashInfer API module and how a cache is made."""

    def __init__(self, name, fi, ctx=None):
        self.name = name
        self.fi = fi
        self.ctx = ctx
        self.workspace = torch.empty(128 << 20, dtype=torch.uint8, device=DEV)

    def new_cache(self, num_layers, num_pages, page_size, hkv, d, dtype):
        """[num_layers, num_pages, 2, page_size, hkv, d], filled with random values."""
        if self.ctx is not None:
            cache = self.ctx.allocate_paged_kv_cache(num_layers, num_pages, page_size, hkv, d,
                                                     dtype)
        else:
            cache = torch.empty(num_layers, num_pages, 2, page_size, hkv, d, dtype=dtype,
                                device=DEV)
        cache.uniform_(-4.0, 4.0)  # not zeros: a page or slot read by mistake changes o
        return cache

    def free_cache(self, cache):
        if self.ctx is not None:
            self.ctx.release(cache)

    def call(self, body):
        """Runs a test body; FlashInfer cases whose kernels are not in its JIT cache skip."""
        try:
            return body()
        except Exception as e:
            missing = _missing_jit(e) if self.name == "flashinfer" else None
            if missing:
                pytest.skip(f"FlashInfer kernel {missing} is not in its JIT cache (ATTND_FI_JIT=1 "
                            "builds every module these tests need; scripts/gpu-host-run.sh "
                            "sets it)")
            raise


@pytest.fixture(scope="module")
def cuda_daemon():
    with tempfile.TemporaryDirectory(prefix="attnd-gpu-fi-") as tmp:
        d = make_daemon(Path(tmp), backend="cuda")
        yield d
        d.stop()


@pytest.fixture(scope="module")
def attnd_ctx(cuda_daemon):
    ctx = afi.Context(cuda_daemon.target, timeout=120)
    info = ctx.session.server_info()
    assert info.backend == "cuda" and info.cuda_ipc, info
    afi.set_context(ctx)  # the test bodies construct wrappers as FlashInfer code does
    yield ctx
    afi.set_context(None)
    ctx.close()


@pytest.fixture(scope="module")
def fi_modules():
    """With ATTND_FI_JIT=1: every FlashInfer module of FLASHINFER_MODULES built (one ninja run
    for those the JIT cache lacks) before the first FlashInfer case."""
    if FLASHINFER is not None and os.environ.get("ATTND_FI_JIT") == "1":
        prebuild_flashinfer()


@pytest.fixture(scope="module", params=["attnd", "flashinfer"])
def be(request):
    if request.param == "flashinfer":
        if FLASHINFER is None:
            pytest.skip(f"flashinfer cannot be imported ({FLASHINFER_WHY}); put FlashInfer (the "
                        "peer bundle: FI_PEER_DIR) on PYTHONPATH")
        request.getfixturevalue("fi_modules")
        yield Backend("flashinfer", FLASHINFER)
    else:
        yield Backend("attnd", afi, request.getfixturevalue("attnd_ctx"))


# --- float32 reference --------------------------------------------------------------------------

def rope_llama(x, pos, theta, scale):
    """Rotate-half RoPE: pairs (i, i + d/2), angle pos / scale * theta^(-2i/d)."""
    d = x.shape[-1]
    half = d // 2
    inv = theta ** (-torch.arange(half, device=x.device, dtype=torch.float64) * 2.0 / d)
    ang = (pos.to(torch.float64)[:, None] / scale) * inv[None, :]
    cos = torch.cos(ang).float()[:, None, :]
    sin = torch.sin(ang).float()[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference(q, k, v, *, causal=False, sm_scale=None, soft_cap=None, window=-1, rope=False,
              rope_theta=1e4, rope_scale=1.0, mask=None):
    """One request: q [qo, hq, d] (the last qo of the kv tokens), k/v [kv, hkv, d]; mask: an
    optional [qo, kv] bool custom mask (True = visible), applied with causal and the window.
    Returns (o [qo, hq, d] float32, lse [qo, hq] base 2)."""
    q, k, v = q.float(), k.float(), v.float()
    qo, kv = q.shape[0], k.shape[0]
    q_pos = torch.arange(qo, device=q.device) + (kv - qo)
    k_pos = torch.arange(kv, device=q.device)
    if rope:
        q = rope_llama(q, q_pos, rope_theta, rope_scale)
        k = rope_llama(k, k_pos, rope_theta, rope_scale)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    if soft_cap:
        s = soft_cap * torch.tanh(s / soft_cap)
    allowed = torch.ones(qo, kv, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= k_pos[None, :] <= q_pos[:, None]
    if window is not None and window >= 0:
        allowed &= k_pos[None, :] >= q_pos[:, None] - window
    if mask is not None:
        allowed &= mask.to(device=q.device, dtype=torch.bool)
    s = s.masked_fill(~allowed[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # natural log, [h, qo]
    o = torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)
    return o, (lse / LN2).transpose(0, 1)


def check(o, lse, ref_o, ref_lse, dtype, what):
    (oa, orr), (la, lr) = TOL[dtype]
    assert not torch.isnan(o).any(), f"{what}: NaN in o (a row was not written)"
    torch.testing.assert_close(o.float(), ref_o, atol=oa, rtol=orr, msg=lambda m: f"{what}: {m}")
    if lse is not None:
        assert lse.dtype == torch.float32 and not torch.isnan(lse).any(), f"{what}: lse"
        torch.testing.assert_close(lse, ref_lse, atol=la, rtol=lr,
                                   msg=lambda m: f"{what} (lse, base 2): {m}")


# --- paged batches --------------------------------------------------------------------------------

class Batch:
    """Random K/V of some requests written into random pages of a cache layer."""

    def __init__(self, be, kv_lens, page, hkv, d, dtype, seed, layers=1, spare=5):
        self.gen = torch.Generator(device=DEV).manual_seed(seed)
        self.kv_lens, self.page = list(kv_lens), page
        counts = [-(-n // page) for n in kv_lens]
        self.num_pages = sum(counts) + spare
        self.cache_all = be.new_cache(layers, self.num_pages, page, hkv, d, dtype)
        self.layer = layers - 1
        self.cache = self.cache_all[self.layer]
        perm = torch.randperm(self.num_pages, generator=self.gen, device=DEV)[:sum(counts)]
        self.indptr_h = [0]
        for c in counts:
            self.indptr_h.append(self.indptr_h[-1] + c)
        self.indices = perm.to(torch.int32)
        self.indptr = torch.tensor(self.indptr_h, dtype=torch.int32, device=DEV)
        self.last = torch.tensor([n - (c - 1) * page for n, c in zip(kv_lens, counts)],
                                 dtype=torch.int32, device=DEV)
        self.k, self.v = [], []
        for b, n in enumerate(kv_lens):
            k = torch.randn(n, hkv, d, generator=self.gen, device=DEV).to(dtype)
            v = torch.randn(n, hkv, d, generator=self.gen, device=DEV).to(dtype)
            self.write(b, 0, k, v)
            self.k.append(k)
            self.v.append(v)

    def pages_of(self, b):
        return self.indices[self.indptr_h[b]:self.indptr_h[b + 1]].long()

    def write(self, b, start, k, v):
        """Tokens start .. start + len(k) of request b, written with plain torch indexing."""
        pos = torch.arange(start, start + k.shape[0], device=DEV)
        pg = self.pages_of(b)[pos // self.page]
        self.cache[pg, 0, pos % self.page] = k
        self.cache[pg, 1, pos % self.page] = v

    def kv_arg(self, halves):
        return (self.cache[:, 0], self.cache[:, 1]) if halves else self.cache


def poisoned(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEV)


def _seed(case):
    return zlib.crc32(case["id"].encode()) % 1000


def _randn(gen, *shape, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen, device=DEV) * scale).to(dtype)


# Decode cases (each runs against attnd and against FlashInfer; FLASHINFER_MODULES lists the
# FlashInfer modules they need).
DECODE = [
    dict(id="fp16-mha-p16", dtype=F16, hq=8, hkv=8, page=16, kv=[1, 7, 33, 300]),
    dict(id="fp16-gqa4-p16-tc-halves", dtype=F16, hq=32, hkv=8, page=16, kv=[5, 16, 17, 513],
         tc=True, halves=True, lse=True),
    dict(id="bf16-gqa4-p1-lse", dtype=BF16, hq=16, hkv=4, page=1, kv=[1, 3, 64, 129], lse=True,
         layers=2),
    dict(id="bf16-gqa8-p16-scale", dtype=BF16, hq=32, hkv=4, page=16, kv=[2, 100, 260],
         sm_scale=0.05, lse=True, tc=True),
    dict(id="fp16-rope", dtype=F16, hq=16, hkv=4, page=16, kv=[9, 200], rope=True,
         rope_theta=5e5, rope_scale=2.0, lse=True),
    dict(id="fp16-softcap", dtype=F16, hq=16, hkv=4, page=16, kv=[9, 200], soft_cap=5.0,
         q_mult=3.0, lse=True),
    dict(id="fp16-window", dtype=F16, hq=16, hkv=4, page=16, kv=[9, 200], window=40, lse=True),
    dict(id="fp16-rope-softcap-window", dtype=F16, hq=16, hkv=4, page=16, kv=[3, 77, 300],
         rope=True, soft_cap=8.0, q_mult=2.0, window=50, lse=True),
]


@pytest.mark.parametrize("case", DECODE, ids=[c["id"] for c in DECODE])
def test_batch_decode(be, case):
    dtype, hq, hkv, d = case["dtype"], case["hq"], case["hkv"], 128
    batch = Batch(be, case["kv"], case["page"], hkv, d, dtype, seed=_seed(case),
                  layers=case.get("layers", 1))

    def body():
        fi = be.fi
        w = fi.BatchDecodeWithPagedKVCacheWrapper(be.workspace, "NHD",
                                                  use_tensor_cores=case.get("tc", False),
                                                  backend="fa2")
        w.plan(batch.indptr, batch.indices, batch.last, hq, hkv, d, case["page"],
               pos_encoding_mode="ROPE_LLAMA" if case.get("rope") else "NONE",
               window_left=case.get("window", -1), logits_soft_cap=case.get("soft_cap"),
               q_data_type=dtype, kv_data_type=dtype, sm_scale=case.get("sm_scale"),
               rope_theta=case.get("rope_theta"), rope_scale=case.get("rope_scale"))
        B = len(case["kv"])
        q = _randn(batch.gen, B, hq, d, dtype=dtype, scale=case.get("q_mult", 1.0))
        out = poisoned((B, hq, d), dtype)
        lse_buf = poisoned((B, hq), torch.float32)
        if case.get("lse"):
            o, lse = w.run(q, batch.kv_arg(case.get("halves")), out=out, lse=lse_buf,
                           return_lse=True)
            assert lse.data_ptr() == lse_buf.data_ptr()
        else:
            o, lse = w.run(q, batch.kv_arg(case.get("halves")), out=out), None
        assert o.data_ptr() == out.data_ptr() and o.shape == (B, hq, d) and o.dtype == dtype
        torch.cuda.synchronize()
        for b in range(B):
            ref_o, ref_lse = reference(
                q[b:b + 1], batch.k[b], batch.v[b], sm_scale=case.get("sm_scale"),
                soft_cap=case.get("soft_cap"), window=case.get("window", -1),
                rope=case.get("rope", False), rope_theta=case.get("rope_theta") or 1e4,
                rope_scale=case.get("rope_scale") or 1.0)
            check(o[b:b + 1], None if lse is None else lse[b:b + 1], ref_o, ref_lse, dtype,
                  f"{be.name} {case['id']} request {b} (kv_len {case['kv'][b]})")

    try:
        be.call(body)
    finally:
        be.free_cache(batch.cache_all)


PREFILL = [
    dict(id="bf16-causal-gqa4-p16-lse", dtype=BF16, hq=16, hkv=4, page=16, qo=[1, 17, 64],
         kv=[5, 17, 200], causal=True, lse=True, lse_variants=True),
    dict(id="fp16-noncausal-p1-halves", dtype=F16, hq=8, hkv=8, page=1, qo=[3, 30], kv=[3, 45],
         halves=True, layers=2),
    dict(id="fp16-causal-gqa8-p16-scale", dtype=F16, hq=32, hkv=4, page=16, qo=[40, 2],
         kv=[40, 300], causal=True, sm_scale=0.07, lse=True),
    dict(id="fp16-rope", dtype=F16, hq=16, hkv=4, page=16, qo=[20, 5], kv=[20, 90], causal=True,
         rope=True, rope_theta=1e6, lse=True),
    dict(id="fp16-softcap", dtype=F16, hq=16, hkv=4, page=16, qo=[20, 5], kv=[20, 90],
         causal=True, soft_cap=5.0, q_mult=3.0),
    dict(id="fp16-window", dtype=F16, hq=16, hkv=4, page=16, qo=[33, 8], kv=[33, 120],
         causal=True, window=16, lse=True),
    dict(id="fp16-window-noncausal", dtype=F16, hq=8, hkv=8, page=16, qo=[12], kv=[60],
         window=10),
    dict(id="fp16-rope-softcap-window", dtype=F16, hq=16, hkv=4, page=16, qo=[1, 30, 64],
         kv=[9, 30, 180], causal=True, rope=True, soft_cap=8.0, q_mult=2.0, window=24,
         lse=True),
    # Custom masks (plan(custom_mask=...) / plan(packed_custom_mask=...)): FlashInfer's mask
    # mode CUSTOM, where causal is ignored (the random mask has keys past each row's position,
    # so a kernel applying causal too would differ from the reference, which applies none).
    dict(id="bf16-treemask-gqa4-p16", dtype=BF16, hq=16, hkv=4, page=16, qo=[7, 16, 1],
         kv=[40, 16, 300], mask="tree", causal=True, lse=True),
    dict(id="fp16-randmask-packed-window-softcap", dtype=F16, hq=16, hkv=4, page=16,
         qo=[9, 30, 4], kv=[50, 30, 200], mask="random", packed=True, causal=True, window=20,
         soft_cap=6.0, q_mult=2.0, lse=True),
]


def custom_masks(case):
    """One [qo, kv] bool mask per request (on the device). "tree": a random tree of the qo new
    tokens on the kv - qo prefix (row i sees the prefix, itself and its ancestors); "random":
    half the keys, and always the row's own position, so no row is empty (FlashInfer's output
    for a row without keys is not defined the same way)."""
    import numpy as np

    rng = np.random.default_rng(_seed(case))
    masks = []
    for qo, kv in zip(case["qo"], case["kv"]):
        if case["mask"] == "tree":
            m = tree_mask(tree_parents(rng, qo), kv - qo)
        else:
            m = rng.random((qo, kv)) < 0.5
            m[np.arange(qo), kv - qo + np.arange(qo)] = True
        masks.append(torch.from_numpy(m).to(DEV))
    return masks


def fi_can_pack_masks(be):
    """FlashInfer packs a boolean custom_mask with its packbits / segment_packbits, a JIT module
    built from csrc/quantization.cu, which the trimmed peer bundle does not carry: there, its
    cases with an unpacked mask skip (packed_custom_mask needs no packing)."""
    if be.name != "flashinfer":
        return True
    from flashinfer.jit import env as jit_env

    return (jit_env.FLASHINFER_CSRC_DIR / "quantization.cu").exists()


def mask_arguments(case, masks, be=None):
    """plan()'s custom_mask (flattened, request after request) or packed_custom_mask: request
    b's bits packed little-endian (numpy.packbits) at byte sum_{c<b} qo_len_c * kv_len_c, where
    FlashInfer 0.7.4's paged kernel reads them (plan() passes the bit offsets as mask_indptr)."""
    import numpy as np

    if masks is None:
        return {}
    if not case.get("packed") and be is not None and not fi_can_pack_masks(be):
        pytest.skip("FlashInfer's segment_packbits (csrc/quantization.cu) is not in this "
                    "FlashInfer tree (the trimmed peer bundle): custom_mask cannot be packed; "
                    "the packed_custom_mask cases run")
    if case.get("packed"):
        sizes = [m.numel() for m in masks]
        offsets = [sum(sizes[:b]) for b in range(len(masks))]
        packed = np.zeros(offsets[-1] + (sizes[-1] + 7) // 8, np.uint8)
        for off, m in zip(offsets, masks):
            bits = np.packbits(m.cpu().numpy().reshape(-1), bitorder="little")
            packed[off:off + bits.size] = bits
        return dict(packed_custom_mask=torch.from_numpy(packed).to(DEV))
    return dict(custom_mask=torch.cat([m.reshape(-1) for m in masks]))


@pytest.mark.parametrize("case", PREFILL, ids=[c["id"] for c in PREFILL])
def test_batch_prefill(be, case):
    dtype, hq, hkv, d = case["dtype"], case["hq"], case["hkv"], 128
    batch = Batch(be, case["kv"], case["page"], hkv, d, dtype, seed=_seed(case),
                  layers=case.get("layers", 1))

    def body():
        fi = be.fi
        qo_h = [0]
        for n in case["qo"]:
            qo_h.append(qo_h[-1] + n)
        qo_indptr = torch.tensor(qo_h, dtype=torch.int32, device=DEV)
        masks = custom_masks(case) if case.get("mask") else None
        w = fi.BatchPrefillWithPagedKVCacheWrapper(be.workspace, "NHD", backend="fa2")
        w.plan(qo_indptr, batch.indptr, batch.indices, batch.last, hq, hkv, d, case["page"],
               causal=case.get("causal", False),
               pos_encoding_mode="ROPE_LLAMA" if case.get("rope") else "NONE",
               sm_scale=case.get("sm_scale"), window_left=case.get("window", -1),
               logits_soft_cap=case.get("soft_cap"), rope_theta=case.get("rope_theta"),
               q_data_type=dtype, kv_data_type=dtype, **mask_arguments(case, masks, be))
        rows = qo_h[-1]
        q = _randn(batch.gen, rows, hq, d, dtype=dtype, scale=case.get("q_mult", 1.0))
        out = poisoned((rows, hq, d), dtype)
        kv = batch.kv_arg(case.get("halves"))
        if case.get("lse"):
            lse_buf = poisoned((rows, hq), torch.float32)
            o, lse = w.run(q, kv, out=out, lse=lse_buf, return_lse=True)
            assert lse.data_ptr() == lse_buf.data_ptr()
        else:
            o, lse = w.run(q, kv, out=out), None
        assert o.data_ptr() == out.data_ptr()
        torch.cuda.synchronize()
        refs = [reference(q[qo_h[b]:qo_h[b + 1]], batch.k[b], batch.v[b],
                          causal=case.get("causal", False) and masks is None,
                          sm_scale=case.get("sm_scale"),
                          soft_cap=case.get("soft_cap"), window=case.get("window", -1),
                          rope=case.get("rope", False), rope_theta=case.get("rope_theta") or 1e4,
                          mask=None if masks is None else masks[b])
                for b in range(len(case["qo"]))]
        for b, (ref_o, ref_lse) in enumerate(refs):
            sl = slice(qo_h[b], qo_h[b + 1])
            check(o[sl], None if lse is None else lse[sl], ref_o, ref_lse, dtype,
                  f"{be.name} {case['id']} request {b} (qo {case['qo'][b]}, kv {case['kv'][b]})")
        if case.get("lse_variants"):  # lse_base="ln", lse_layout="HN" into a poisoned buffer
            hn = poisoned((hq, rows), torch.float32)
            o2, lse2 = w.run(q, kv, out=poisoned((rows, hq, d), dtype), return_lse=True, lse=hn,
                             lse_base="ln", lse_layout="HN")
            assert lse2.shape == (hq, rows)
            ref_lse = torch.cat([r[1] for r in refs]) * LN2
            check(o2, lse2.t(), torch.cat([r[0] for r in refs]), ref_lse, dtype,
                  f"{be.name} {case['id']} lse HN/ln")

    try:
        be.call(body)
    finally:
        be.free_cache(batch.cache_all)


# Ragged (contiguous K/V) cases: BatchPrefillWithRaggedKVCacheWrapper, attnd's RunRagged.
RAGGED = [
    dict(id="bf16-causal-gqa4-lse", dtype=BF16, hq=16, hkv=4, qo=[1, 17, 64], kv=[5, 17, 200],
         causal=True, lse=True, lse_variants=True),
    dict(id="fp16-noncausal-mha-hnd", dtype=F16, hq=8, hkv=8, qo=[3, 30], kv=[3, 45],
         layout="HND"),
    dict(id="fp16-rope-softcap-window", dtype=F16, hq=16, hkv=4, qo=[1, 30, 64], kv=[9, 30, 180],
         causal=True, rope=True, soft_cap=8.0, q_mult=2.0, window=24, lse=True),
]


@pytest.mark.parametrize("case", RAGGED, ids=[c["id"] for c in RAGGED])
def test_batch_prefill_ragged(be, case):
    dtype, hq, hkv, d = case["dtype"], case["hq"], case["hkv"], 128
    gen = torch.Generator(device=DEV).manual_seed(_seed(case))
    qo_h, kv_h = [0], [0]
    for a, b in zip(case["qo"], case["kv"]):
        qo_h.append(qo_h[-1] + a)
        kv_h.append(kv_h[-1] + b)
    q = _randn(gen, qo_h[-1], hq, d, dtype=dtype, scale=case.get("q_mult", 1.0))
    k = _randn(gen, kv_h[-1], hkv, d, dtype=dtype)
    v = _randn(gen, kv_h[-1], hkv, d, dtype=dtype)
    hnd = case.get("layout") == "HND"
    k_arg, v_arg = (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()) if hnd else (
        k, v)

    def body():
        fi = be.fi
        w = fi.BatchPrefillWithRaggedKVCacheWrapper(be.workspace, case.get("layout", "NHD"),
                                                    backend="fa2")
        w.plan(torch.tensor(qo_h, dtype=torch.int32, device=DEV),
               torch.tensor(kv_h, dtype=torch.int32, device=DEV), hq, hkv, d,
               causal=case.get("causal", False),
               pos_encoding_mode="ROPE_LLAMA" if case.get("rope") else "NONE",
               window_left=case.get("window", -1), logits_soft_cap=case.get("soft_cap"),
               q_data_type=dtype, kv_data_type=dtype)
        rows = qo_h[-1]
        out = poisoned((rows, hq, d), dtype)
        if case.get("lse"):
            lse_buf = poisoned((rows, hq), torch.float32)
            o, lse = w.run(q, k_arg, v_arg, out=out, lse=lse_buf, return_lse=True)
            assert lse.data_ptr() == lse_buf.data_ptr()
        else:
            o, lse = w.run(q, k_arg, v_arg, out=out), None
        assert o.data_ptr() == out.data_ptr() and o.dtype == dtype
        torch.cuda.synchronize()
        refs = [reference(q[qo_h[b]:qo_h[b + 1]], k[kv_h[b]:kv_h[b + 1]], v[kv_h[b]:kv_h[b + 1]],
                          causal=case.get("causal", False), soft_cap=case.get("soft_cap"),
                          window=case.get("window", -1), rope=case.get("rope", False))
                for b in range(len(case["qo"]))]
        for b, (ref_o, ref_lse) in enumerate(refs):
            sl = slice(qo_h[b], qo_h[b + 1])
            check(o[sl], None if lse is None else lse[sl], ref_o, ref_lse, dtype,
                  f"{be.name} ragged {case['id']} request {b}")
        if case.get("lse_variants"):
            hn = poisoned((hq, rows), torch.float32)
            o2, lse2 = w.run_return_lse(q, k_arg, v_arg, lse=hn, lse_base="ln", lse_layout="HN")
            assert lse2.data_ptr() == hn.data_ptr()
            check(o2, lse2.t(), torch.cat([r[0] for r in refs]),
                  torch.cat([r[1] for r in refs]) * LN2, dtype,
                  f"{be.name} ragged {case['id']} lse HN/ln")

    be.call(body)


# Cascade cases: MultiLevelCascadeAttentionWrapper. shared: each shared level's groups, outermost
# first, as (requests in the group, kv_len); own: each request's own kv_len (the last level);
# qo: its query rows. FlashInfer's levels run its paged prefill with backend "auto" (fa2 or fa3
# per level on the H200: FLASHINFER_MODULES has both) and merge_state_in_place.
CASCADE = [
    dict(id="fp16-2lv-decode-gqa4-p16", dtype=F16, hq=32, hkv=8, page=16, shared=[[(6, 300)]],
         own=[1, 17, 40, 5, 16, 33], qo=[1] * 6),
    dict(id="fp16-3lv-decode-gqa4-p16-lse", dtype=F16, hq=16, hkv=4, page=16,
         shared=[[(5, 130)], [(2, 17), (3, 64)]], own=[3, 20, 1, 48, 9], qo=[1] * 5,
         causal=True, sm_scale=0.05, lse=True),
    dict(id="fp16-3lv-prefill-causal-gqa4-p16-lse", dtype=F16, hq=16, hkv=4, page=16,
         shared=[[(4, 200)], [(1, 40), (3, 80)]], own=[20, 9, 33, 70], qo=[20, 1, 8, 64],
         causal=True, lse=True),
    dict(id="fp16-2lv-prefill-noncausal-mha-p1-halves", dtype=F16, hq=8, hkv=8, page=1,
         shared=[[(2, 30), (1, 7)]], own=[12, 5, 9], qo=[12, 2, 9], halves=True),
]


class CascadeBatch:
    """The K/V of a cascade case in random pages of one cache layer: a Batch whose "requests"
    are the segments (every shared group's tokens, then every request's own), and FlashInfer's
    four per-level lists over them; k[r], v[r]: request r's keys over all its levels (its groups'
    in level order, then its own), what the reference attends."""

    def __init__(self, be, case, seed):
        shared, own = case["shared"], case["own"]
        segs = [n for level in shared for _, n in level] + list(own)
        self.batch = Batch(be, segs, case["page"], case["hkv"], 128, case["dtype"], seed=seed)
        b = self.batch
        self.rows = [0]
        for n in case["qo"]:
            self.rows.append(self.rows[-1] + n)
        i32 = dict(dtype=torch.int32, device=DEV)
        self.qo_arr, self.indptr_arr, self.indices_arr, self.last_arr = [], [], [], []
        mine = [[] for _ in own]
        s = 0
        for level in shared + [[(1, n) for n in own]]:
            qo_ind, indptr, indices, last, r = [0], [0], [], [], 0
            for count, _ in level:
                indices.append(b.indices[b.indptr_h[s]:b.indptr_h[s + 1]])
                indptr.append(indptr[-1] + indices[-1].numel())
                last.append(int(b.last[s]))
                for x in range(r, r + count):
                    mine[x].append(s)
                r += count
                qo_ind.append(self.rows[r])
                s += 1
            assert r == len(own)
            self.qo_arr.append(torch.tensor(qo_ind, **i32))
            self.indptr_arr.append(torch.tensor(indptr, **i32))
            self.indices_arr.append(torch.cat(indices))
            self.last_arr.append(torch.tensor(last, **i32))
        self.k = [torch.cat([b.k[x] for x in m]) for m in mine]
        self.v = [torch.cat([b.v[x] for x in m]) for m in mine]

    def plan(self, w, case):
        w.plan(self.qo_arr, self.indptr_arr, self.indices_arr, self.last_arr, case["hq"],
               case["hkv"], 128, case["page"], causal=case.get("causal", False),
               sm_scale=case.get("sm_scale"), q_data_type=case["dtype"],
               kv_data_type=case["dtype"])

    def references(self, q, case):
        """(o, lse base 2) of each request: attention over its levels' keys concatenated, causal
        (bottom-right) when planned: the shared keys precede its queries, so all are visible."""
        return [reference(q[self.rows[r]:self.rows[r + 1]], self.k[r], self.v[r],
                          causal=case.get("causal", False), sm_scale=case.get("sm_scale"))
                for r in range(len(case["own"]))]


@pytest.mark.parametrize("case", CASCADE, ids=[c["id"] for c in CASCADE])
def test_multi_level_cascade(be, case):
    """MultiLevelCascadeAttentionWrapper (2 and 3 levels, decode- and prefill-like last levels)
    against the float32 reference of each request's concatenated keys; on attnd also run()'s
    out= / lse= / return_lse= extensions (FlashInfer's cascade run() returns o only)."""
    dtype, hq, d = case["dtype"], case["hq"], 128
    cb = CascadeBatch(be, case, seed=_seed(case))

    def body():
        w = be.fi.MultiLevelCascadeAttentionWrapper(len(case["shared"]) + 1, be.workspace,
                                                    "NHD")
        cb.plan(w, case)
        rows = cb.rows[-1]
        q = _randn(cb.batch.gen, rows, hq, d, dtype=dtype)
        kv = cb.batch.kv_arg(case.get("halves"))
        o = w.run(q, kv)
        assert o.shape == (rows, hq, d) and o.dtype == dtype
        torch.cuda.synchronize()
        refs = cb.references(q, case)
        for r, (ref_o, _) in enumerate(refs):
            sl = slice(cb.rows[r], cb.rows[r + 1])
            check(o[sl], None, ref_o, None, dtype,
                  f"{be.name} cascade {case['id']} request {r} (qo {case['qo'][r]})")
        if be.name == "attnd" and case.get("lse"):
            out, lse_buf = poisoned((rows, hq, d), dtype), poisoned((rows, hq), torch.float32)
            o2, lse = w.forward(q, kv, out=out, lse=lse_buf, return_lse=True)
            assert o2.data_ptr() == out.data_ptr() and lse.data_ptr() == lse_buf.data_ptr()
            torch.cuda.synchronize()
            for r, (ref_o, ref_lse) in enumerate(refs):
                sl = slice(cb.rows[r], cb.rows[r + 1])
                check(o2[sl], lse[sl], ref_o, ref_lse, dtype,
                      f"attnd cascade {case['id']} request {r} out=/lse=")

    try:
        be.call(body)
    finally:
        be.free_cache(cb.batch.cache_all)


@pytest.mark.parametrize("case", CASCADE, ids=[c["id"] for c in CASCADE])
def test_cascade_matches_flashinfers_wrapper(attnd_ctx, fi_modules, case):
    """The drop-in and FlashInfer's own MultiLevelCascadeAttentionWrapper on the same inputs:
    one attnd pool's cache tensor (FlashInfer reads it as any CUDA tensor), the same per-level
    tables and q. Their outputs agree within the kernels' rounding (TOL of o)."""
    if FLASHINFER is None:
        pytest.skip(f"flashinfer cannot be imported ({FLASHINFER_WHY})")
    dtype, hq, d = case["dtype"], case["hq"], 128
    be = Backend("attnd", afi, attnd_ctx)
    cb = CascadeBatch(be, case, seed=_seed(case) + 1)
    try:
        q = _randn(cb.batch.gen, cb.rows[-1], hq, d, dtype=dtype)
        kv = cb.batch.kv_arg(case.get("halves"))
        outs = {}
        for name, mod in (("attnd", afi), ("flashinfer", FLASHINFER)):
            w = mod.MultiLevelCascadeAttentionWrapper(len(case["shared"]) + 1, be.workspace,
                                                      "NHD")
            try:
                cb.plan(w, case)
                outs[name] = w.run(q, kv)
            except Exception as e:
                missing = _missing_jit(e) if name == "flashinfer" else None
                if missing:
                    pytest.skip(f"FlashInfer kernel {missing} is not in its JIT cache "
                                "(ATTND_FI_JIT=1 builds it)")
                raise
        torch.cuda.synchronize()
        (oa, orr), _ = TOL[dtype]
        for name, o in outs.items():
            assert o.shape == q.shape and not torch.isnan(o).any(), f"{name}: o"
        torch.testing.assert_close(outs["attnd"].float(), outs["flashinfer"].float(), atol=oa,
                                   rtol=orr, msg=lambda m: f"attnd vs FlashInfer cascade "
                                                           f"{case['id']}: {m}")
    finally:
        be.free_cache(cb.batch.cache_all)


# --- the FlashInfer modules the cases need ---------------------------------------------------------

def _variant(case):
    """(pos_encoding_mode value, use_sliding_window, use_logits_soft_cap) as FlashInfer's plan()
    derives them."""
    return (1 if case.get("rope") else 0, case.get("window", -1) != -1,
            bool(case.get("soft_cap")) and case["soft_cap"] > 0)


def flashinfer_module_keys():
    """(kind, dtype, variant) of every FlashInfer JIT module the tests of this file load, at
    head_dim 128: batch decode modules (CUDA-core decode), FA2 batch prefill modules (paged and
    ragged prefill, tensor-core decode, cascade levels), the FA3 batch prefill modules of the
    cascade cases (FlashInfer's cascade levels run on backend "auto": fa2 or fa3 by their query
    lengths), the FA2 single prefill module (single_prefill and tensor-core single_decode),
    cascade (merges) and page (append_paged_kv_cache)."""
    keys = []

    def add(key):
        if key not in keys:
            keys.append(key)

    for c in DECODE:
        add(("prefill" if c.get("tc") else "decode", c["dtype"], _variant(c)))
    for c in PREFILL + RAGGED:
        add(("prefill", c["dtype"], _variant(c)))
    for c in CASCADE:  # FlashInfer's cascade levels: its paged prefill on "auto", fa2 or fa3
        add(("prefill", c["dtype"], _variant(c)))
        add(("prefill_fa3", c["dtype"], _variant(c)))
    add(("prefill", BF16, (0, False, False)))         # append then prefill
    add(("single_prefill", BF16, (0, False, False)))  # single_*, merges of split K/V
    add(("cascade", None, None))
    add(("page", None, None))
    return keys


def flashinfer_specs(keys):
    """FlashInfer's JitSpec of each key: the same URIs its wrappers build at plan()."""
    from flashinfer.jit.attention import modules as jm
    from flashinfer.jit.cascade import gen_cascade_module
    from flashinfer.jit.page import gen_page_module

    specs = []
    for kind, dtype, variant in keys:
        if kind == "cascade":
            specs.append(gen_cascade_module())
        elif kind == "page":
            specs.append(gen_page_module())
        elif kind == "decode":
            specs.append(jm.gen_batch_decode_module(dtype, dtype, dtype, torch.int32, 128, 128,
                                                    *variant))
        elif kind == "prefill":  # the FA2 wrappers load the equal-stride primary module
            gen = getattr(jm, "_gen_batch_prefill_primary_module", None) or \
                jm.gen_batch_prefill_module
            specs.append(gen("fa2", dtype, dtype, dtype, torch.int32, 128, 128, *variant, False))
        elif kind == "prefill_fa3":
            specs.append(jm.gen_batch_prefill_module("fa3", dtype, dtype, dtype, torch.int32, 128,
                                                     128, *variant, False))
        else:
            specs.append(jm.gen_single_prefill_module("fa2", dtype, dtype, dtype, 128, 128,
                                                      *variant, False))
    return specs


FLASHINFER_MODULES = flashinfer_module_keys()
_PREBUILT = []


def prebuild_flashinfer():
    """Builds, in one ninja run (MAX_JOBS jobs), the modules of FLASHINFER_MODULES that the JIT
    cache lacks; prints what it built and how long it took. Returns the names built."""
    if _PREBUILT:
        return _PREBUILT[0]
    from flashinfer.jit import build_jit_specs

    specs = flashinfer_specs(FLASHINFER_MODULES)
    missing = [s for s in specs if not s.jit_library_path.exists()]
    t0 = time.time()
    if missing:
        print(f"FlashInfer JIT: building {len(missing)} of {len(specs)} modules in one ninja run "
              f"(MAX_JOBS={os.environ.get('MAX_JOBS')})", flush=True)
        build_jit_specs(missing, verbose=False)
    names = [s.name for s in missing]
    print(f"FlashInfer JIT: {len(missing)} built in {time.time() - t0:.1f} s, "
          f"{len(specs) - len(missing)} cached: {', '.join(names) or '-'}", flush=True)
    _PREBUILT.append(names)
    return names


def test_decode_q_len_per_req_and_run_window_override(attnd_ctx):
    """attnd only (an attnd extension, so not run against FlashInfer): q_len_per_req > 1 (causal
    verification rows) and run(window_left=...) other than the planned one."""
    be = Backend("attnd", afi, attnd_ctx)
    dtype, hq, hkv, d, n = F16, 16, 4, 128, 3
    batch = Batch(be, [10, 40], 16, hkv, d, dtype, seed=11)
    try:
        w = be.fi.BatchDecodeWithPagedKVCacheWrapper(be.workspace, "NHD", use_tensor_cores=True)
        w.plan(batch.indptr, batch.indices, batch.last, hq, hkv, d, 16, q_data_type=dtype,
               q_len_per_req=n)
        q = _randn(batch.gen, 2 * n, hq, d, dtype=dtype)
        o = w.run(q, batch.cache, out=poisoned((2 * n, hq, d), dtype), q_len_per_req=n)
        o_win = w.run(q, batch.cache, out=poisoned((2 * n, hq, d), dtype), window_left=5)
        torch.cuda.synchronize()
        for b in range(2):
            sl = slice(b * n, (b + 1) * n)
            ref_o, _ = reference(q[sl], batch.k[b], batch.v[b], causal=True)
            check(o[sl], None, ref_o, None, dtype, f"q_len_per_req request {b}")
            ref_o, _ = reference(q[sl], batch.k[b], batch.v[b], causal=True, window=5)
            check(o_win[sl], None, ref_o, None, dtype, f"window override request {b}")
    finally:
        be.free_cache(batch.cache_all)


def test_append_paged_kv_cache_then_prefill(be):
    """append_paged_kv_cache writes new tokens where the page table says (checked slot by slot),
    and a causal prefill of those tokens over the whole sequence matches the reference."""
    dtype, hq, hkv, d, page = BF16, 16, 4, 128, 16
    prefix, new = [0, 15, 40], [7, 1, 33]
    total = [p + n for p, n in zip(prefix, new)]
    batch = Batch(be, total, page, hkv, d, dtype, seed=5)
    fresh_k = [_randn(batch.gen, n, hkv, d, dtype=dtype) for n in new]
    fresh_v = [_randn(batch.gen, n, hkv, d, dtype=dtype) for n in new]
    for b in range(3):  # the new tokens' slots hold other data until the append
        batch.k[b][prefix[b]:] = fresh_k[b]
        batch.v[b][prefix[b]:] = fresh_v[b]

    def body():
        fi = be.fi
        append_indptr = torch.tensor([0, 7, 8, 41], dtype=torch.int32, device=DEV)
        seq_lens = afi.get_seq_lens(batch.indptr, batch.last, page)
        assert seq_lens.tolist() == total
        bi, pos = afi.get_batch_indices_positions(append_indptr, seq_lens, 41)
        want_pos = [p + i for p, n in zip(prefix, new) for i in range(n)]
        assert bi.tolist() == [b for b, n in enumerate(new) for _ in range(n)]
        assert pos.tolist() == want_pos
        if be.name == "flashinfer":  # FlashInfer's own (a triton kernel), where it runs, agrees
            try:
                theirs = fi.get_batch_indices_positions(append_indptr, seq_lens, 41)
            except Exception as e:  # noqa: BLE001  (no triton in the bundle or on the host)
                print(f"flashinfer.get_batch_indices_positions not compared: {e}")
            else:
                assert theirs[0].tolist() == bi.tolist() and theirs[1].tolist() == pos.tolist()
        fi.append_paged_kv_cache(torch.cat(fresh_k), torch.cat(fresh_v), bi, pos, batch.cache,
                                 batch.indices, batch.indptr, batch.last)
        torch.cuda.synchronize()
        for b in range(3):
            p = torch.arange(prefix[b], total[b], device=DEV)
            pg = batch.pages_of(b)[p // page]
            assert torch.equal(batch.cache[pg, 0, p % page], fresh_k[b]), f"k of request {b}"
            assert torch.equal(batch.cache[pg, 1, p % page], fresh_v[b]), f"v of request {b}"
        w = fi.BatchPrefillWithPagedKVCacheWrapper(be.workspace, "NHD", backend="fa2")
        w.plan(append_indptr, batch.indptr, batch.indices, batch.last, hq, hkv, d, page,
               causal=True, q_data_type=dtype)
        q = _randn(batch.gen, 41, hq, d, dtype=dtype)
        o, lse = w.run(q, batch.cache, out=poisoned((41, hq, d), dtype),
                       lse=poisoned((41, hq), torch.float32), return_lse=True)
        torch.cuda.synchronize()
        qo = append_indptr.tolist()
        for b in range(3):
            ref_o, ref_lse = reference(q[qo[b]:qo[b + 1]], batch.k[b], batch.v[b], causal=True)
            check(o[qo[b]:qo[b + 1]], lse[qo[b]:qo[b + 1]], ref_o, ref_lse, dtype,
                  f"{be.name} append request {b}")

    try:
        be.call(body)
    finally:
        be.free_cache(batch.cache_all)


@pytest.mark.parametrize("kv_layout", ["NHD", "HND"])
def test_single_prefill_and_decode(be, kv_layout):
    dtype, hq, hkv, d = BF16, 16, 4, 128
    gen = torch.Generator(device=DEV).manual_seed(3)
    q = _randn(gen, 100, hq, d, dtype=dtype)
    k = _randn(gen, 300, hkv, d, dtype=dtype)
    v = _randn(gen, 300, hkv, d, dtype=dtype)
    kk, vv = (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()) if (
        kv_layout == "HND") else (k, v)

    def body():
        fi = be.fi
        o, lse = fi.single_prefill_with_kv_cache(q, kk, vv, causal=True, kv_layout=kv_layout,
                                                 backend="fa2", return_lse=True)
        ref_o, ref_lse = reference(q, k, v, causal=True)
        check(o, lse, ref_o, ref_lse, dtype, f"{be.name} single_prefill {kv_layout}")
        o = fi.single_prefill_with_kv_cache_return_lse(q[:40], kk, vv, sm_scale=0.03,
                                                       kv_layout=kv_layout, backend="fa2")[0]
        check(o, None, reference(q[:40], k, v, sm_scale=0.03)[0], None, dtype,
              f"{be.name} single_prefill non-causal {kv_layout}")
        # tensor-core decode: FlashInfer runs it with the single-prefill kernel it has cached
        od, lsed = fi.single_decode_with_kv_cache(q[0], kk, vv, kv_layout=kv_layout,
                                                  use_tensor_cores=True, return_lse=True)
        assert od.shape == (hq, d) and lsed.shape == (hq,)
        ref_o, ref_lse = reference(q[:1], k, v)
        check(od[None], lsed[None], ref_o, ref_lse, dtype, f"{be.name} single_decode {kv_layout}")

    be.call(body)


@pytest.mark.parametrize("packed", [False, True], ids=["custom_mask", "packed_custom_mask"])
def test_single_prefill_custom_mask(be, packed):
    """single_prefill_with_kv_cache with a [qo_len, kv_len] custom mask (or its packbits): mask
    mode CUSTOM, causal ignored."""
    import numpy as np

    dtype, hq, hkv, d = BF16, 16, 4, 128
    gen = torch.Generator(device=DEV).manual_seed(5)
    q = _randn(gen, 24, hq, d, dtype=dtype)
    k = _randn(gen, 90, hkv, d, dtype=dtype)
    v = _randn(gen, 90, hkv, d, dtype=dtype)
    m = np.random.default_rng(5).random((24, 90)) < 0.4
    m[np.arange(24), 66 + np.arange(24)] = True  # no empty rows
    mask = torch.from_numpy(m).to(DEV)
    arg = dict(packed_custom_mask=torch.from_numpy(
        np.packbits(m.reshape(-1), bitorder="little")).to(DEV)) if packed else dict(
        custom_mask=mask)
    if not packed and not fi_can_pack_masks(be):
        pytest.skip("FlashInfer's packbits (csrc/quantization.cu) is not in this FlashInfer tree "
                    "(the trimmed peer bundle)")

    def body():
        o, lse = be.fi.single_prefill_with_kv_cache(q, k, v, causal=True, backend="fa2",
                                                    return_lse=True, **arg)
        ref_o, ref_lse = reference(q, k, v, mask=mask)
        check(o, lse, ref_o, ref_lse, dtype, f"{be.name} single_prefill custom mask")

    be.call(body)


def ref_merge(v, s):
    """FlashInfer's merge formula in float32 torch, base-2 LSE: v [seq, n, H, D], s [seq, n, H]
    -> (v [seq, H, D] float32, s [seq, H]); empty states (s = -inf) weigh 0."""
    s = s.float()
    s_max = torch.amax(s, dim=1)
    ref = torch.where(torch.isneginf(s_max), torch.zeros_like(s_max), s_max)
    w = torch.exp2(s - ref[:, None])
    v = torch.where(w[..., None] > 0, v.float() * w[..., None], torch.zeros_like(v.float()))
    w_sum = w.sum(dim=1)
    return v.sum(dim=1) / w_sum[..., None], ref + torch.log2(w_sum)


def test_merge_state_of_split_kv(be):
    """Attention over two (three) disjoint KV parts, merged with merge_state / merge_states /
    merge_state_in_place, equals attention over all of it (LSE in base 2 throughout)."""
    dtype, hq, hkv, d = BF16, 16, 4, 128
    gen = torch.Generator(device=DEV).manual_seed(9)
    q = _randn(gen, 64, hq, d, dtype=dtype)
    k = _randn(gen, 400, hkv, d, dtype=dtype)
    v = _randn(gen, 400, hkv, d, dtype=dtype)
    cuts = [0, 100, 250, 400]

    def body():
        fi = be.fi
        parts = [fi.single_prefill_with_kv_cache(q, k[a:b], v[a:b], backend="fa2",
                                                 return_lse=True)
                 for a, b in zip(cuts[:-1], cuts[1:])]
        ref_o, ref_lse = reference(q, k, v)
        va, sa = fi.merge_state(parts[0][0], parts[0][1], parts[1][0], parts[1][1])
        vm, sm = fi.merge_state(va, sa, parts[2][0], parts[2][1])
        assert vm.dtype == dtype and sm.dtype == torch.float32
        check(vm, sm, ref_o, ref_lse, dtype, f"{be.name} merge_state")
        vs = torch.stack([p[0] for p in parts], dim=1)  # [seq, 3, H, D]
        ss = torch.stack([p[1] for p in parts], dim=1)
        vm, sm = fi.merge_states(vs, ss)
        check(vm, sm, ref_o, ref_lse, dtype, f"{be.name} merge_states")
        v0, s0 = parts[0][0].clone(), parts[0][1].clone()
        mask = torch.zeros(64, dtype=torch.bool, device=DEV)
        mask[::2] = True
        fi.merge_state_in_place(v0, s0, va, sa, mask=None)  # (p0) + (p0 + p1): p0 twice
        fi.merge_state_in_place(v0, s0, parts[2][0], parts[2][1], mask=mask)
        torch.cuda.synchronize()
        assert not torch.isnan(v0).any()
        twice = torch.stack([parts[0][0], parts[0][0], parts[1][0]], 1), torch.stack(
            [parts[0][1], parts[0][1], parts[1][1]], 1)
        want_odd = ref_merge(*twice)
        want_even = ref_merge(torch.cat([twice[0], parts[2][0][:, None]], 1),
                              torch.cat([twice[1], parts[2][1][:, None]], 1))
        (oa, orr), (la, lr) = TOL[dtype]
        torch.testing.assert_close(v0[1::2].float(), want_odd[0][1::2].float(), atol=oa, rtol=orr)
        torch.testing.assert_close(v0[::2].float(), want_even[0][::2].float(), atol=oa, rtol=orr)
        torch.testing.assert_close(s0[::2], want_even[1][::2], atol=la, rtol=lr)
        torch.testing.assert_close(s0[1::2], want_odd[1][1::2], atol=la, rtol=lr)

    be.call(body)


def test_merge_matches_flashinfer_kernels(attnd_ctx, fi_modules):
    """attnd.flashinfer's merges (the daemon's MergeState/MergeStates, base-2 LSE converted on the
    way) against FlashInfer's CUDA kernels on random states (one state empty, s = -inf, in some
    rows), and merge_state_in_place with and without a mask against the float32 reference."""
    if FLASHINFER is None:
        pytest.skip(f"flashinfer cannot be imported ({FLASHINFER_WHY})")
    gen = torch.Generator(device=DEV).manual_seed(1)
    seq, n, h, d = 37, 5, 8, 128
    for dtype in (F16, BF16):
        v = _randn(gen, seq, n, h, d, dtype=dtype)
        s = (torch.randn(seq, n, h, generator=gen, device=DEV) * 4).float()
        s[::3, 1] = float("-inf")
        # FlashInfer's merge_state wants contiguous inputs (CHECK_INPUT); attnd.flashinfer takes
        # the strided views too (merged through copies), checked against the same result below.
        va, sa, vb, sb = (t.contiguous() for t in (v[:, 0], s[:, 0], v[:, 2], s[:, 2]))
        try:
            want = FLASHINFER.merge_states(v, s)
            want2 = FLASHINFER.merge_state(va, sa, vb, sb)
        except Exception as e:  # noqa: BLE001
            if _missing_jit(e):
                pytest.skip(f"FlashInfer's cascade kernels are not in its JIT cache ({e})")
            raise
        got = afi.merge_states(v, s)
        got2 = afi.merge_state(va, sa, vb, sb)
        got_strided = afi.merge_state(v[:, 0], s[:, 0], v[:, 2], s[:, 2])
        (oa, orr), (la, lr) = TOL[dtype]
        for (gv, gs), (wv, ws) in ((got, want), (got2, want2), (got_strided, want2),
                                   (got, ref_merge(v, s))):
            assert gv.dtype == dtype and gs.dtype == torch.float32
            torch.testing.assert_close(gv.float(), wv.float(), atol=oa, rtol=orr)
            torch.testing.assert_close(gs, ws.float(), atol=1e-4, rtol=1e-5)
        mask = torch.arange(seq, device=DEV) % 3 != 1
        for m in (None, mask):
            vi, si = v[:, 0].clone(), s[:, 0].clone()
            afi.merge_state_in_place(vi, si, v[:, 2], s[:, 2], mask=m)
            torch.cuda.synchronize()
            keep = torch.ones(seq, dtype=torch.bool, device=DEV) if m is None else m
            torch.testing.assert_close(vi[keep].float(), want2[0][keep].float(), atol=oa,
                                       rtol=orr)
            torch.testing.assert_close(si[keep], want2[1][keep].float(), atol=1e-4, rtol=1e-5)
            assert torch.equal(vi[~keep], v[:, 0][~keep]) and torch.equal(si[~keep], s[:, 0][~keep])


# --- signatures against the real FlashInfer -----------------------------------------------------

SIGNATURE_NAMES = [
    "BatchDecodeWithPagedKVCacheWrapper.__init__", "BatchDecodeWithPagedKVCacheWrapper.run",
    "BatchPrefillWithPagedKVCacheWrapper.__init__", "BatchPrefillWithPagedKVCacheWrapper.plan",
    "BatchPrefillWithPagedKVCacheWrapper.run", "BatchPrefillWithRaggedKVCacheWrapper.__init__",
    "BatchPrefillWithRaggedKVCacheWrapper.plan", "BatchPrefillWithRaggedKVCacheWrapper.run",
    "MultiLevelCascadeAttentionWrapper.__init__", "MultiLevelCascadeAttentionWrapper.plan",
    "MultiLevelCascadeAttentionWrapper.run",
    "single_decode_with_kv_cache", "single_prefill_with_kv_cache", "merge_state",
    "merge_state_in_place", "merge_states", "append_paged_kv_cache", "get_seq_lens",
    "get_batch_indices_positions",
]


@pytest.mark.parametrize("name", SIGNATURE_NAMES)
def test_signatures_match_installed_flashinfer(name):
    """Every named parameter of the installed FlashInfer is ours too, same kind and default."""
    if FLASHINFER is None:
        pytest.skip(f"flashinfer cannot be imported ({FLASHINFER_WHY})")
    top, _, method = name.partition(".")

    def resolve(mod):
        obj = getattr(mod, top, None)
        if obj is None and mod is FLASHINFER:
            # The peer bundle's trimmed __init__ exports fewer names than FlashInfer's; the page
            # helpers are defined in flashinfer.page.
            obj = getattr(importlib.import_module("flashinfer.page"), top)
        return getattr(obj, method) if method else obj

    theirs = inspect.signature(resolve(FLASHINFER)).parameters
    mine = inspect.signature(resolve(afi)).parameters
    for p in theirs.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        assert p.name in mine, f"{name}: FlashInfer's {p.name} is missing"
        q = mine[p.name]
        assert q.kind == p.kind, f"{name}: {p.name} is {q.kind}, FlashInfer's {p.kind}"
        assert q.default == p.default, f"{name}: {p.name}={q.default!r}, FlashInfer's " \
                                       f"{p.default!r}"


def test_refusals_on_a_real_cache(attnd_ctx):
    """A tensor that is not an attnd pool, or a plan that does not fit the cache, is refused with
    a message saying what to do."""
    cache = attnd_ctx.allocate_paged_kv_cache(2, 8, 16, 2, 128, F16)
    try:
        w = afi.BatchDecodeWithPagedKVCacheWrapper(None)
        w.plan([0, 1], [3], [5], 8, 2, 128, 16, q_data_type=F16)
        q = torch.randn(1, 8, 128, device=DEV, dtype=F16)
        own = torch.empty_like(cache[0])
        with pytest.raises(ValueError, match="not memory of an attnd pool"):
            w.run(q, own)
        with pytest.raises(ValueError, match="bytes into layer 0"):
            w.run(q, cache[0][1:])
        with pytest.raises(ValueError, match="is bfloat16, planned float16"):
            w.run(q.to(BF16), cache[1])
        with pytest.raises(ValueError, match="names page 8"):  # in plan() or at run()
            w.plan([0, 1], [8], [5], 8, 2, 128, 16, q_data_type=F16)
            w.run(q, cache[1])
        o = afi.BatchDecodeWithPagedKVCacheWrapper(None)
        o.plan([0, 1], [3], [5], 8, 2, 128, 16, q_data_type=F16)
        assert o.run(q, cache[1]).shape == (1, 8, 128)
    finally:
        attnd_ctx.release(cache)


if __name__ == "__main__":  # the JIT step alone: python3 tests/python/gpu_flashinfer_dropin_test.py
    if FLASHINFER is None:
        sys.exit(f"flashinfer cannot be imported: {FLASHINFER_WHY}")
    prebuild_flashinfer()
