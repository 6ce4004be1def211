#!/usr/bin/env python3
"""FlashInfer peer rows of attnd's feature benchmarks (issue 15), for the GPU host:

  (a) tree-mask prefill (speculative verification): B=16 requests, each a 64-node draft tree on a
      4096-token prefix (qo_len 64, kv_len 4160); tree parent(i) = (i - 1) // 4 (node 0 the root):
      row i sees kv 0..4095 and 4096 + j for j = i or an ancestor of i. 32 query heads, 8 or 32
      KV heads, head_dim 128, bf16, page size 16, pages in random order. FlashInfer's custom-mask
      path (BatchPrefillWithPagedKVCacheWrapper, mask mode CUSTOM) on fa2, and on fa3 if it takes
      masks (FlashInfer 0.7.4's sm90 kernels return cudaErrorNotSupported: the row then carries
      the error), op "treemask"; and the causal prefill of the same shape (fa2, fa3), op "append",
      so that the mask / causal time ratio can be read. Metric: TFLOP/s over the visible
      (query, key) pairs, 4 * Hq * D * pairs / time (treemask: B * sum_i (4096 + depth(i) + 1);
      append: B * sum_i (4096 + i + 1)).
  (b) cascade decode (MultiLevelCascadeAttentionWrapper, 2 levels): a 32768-token prefix shared by
      the whole batch, then 256 own tokens per request, B=64 and B=256, fp16, 32 query / 8 KV
      heads, head_dim 128, page 16 (bench/cascade_bench.cu's shapes), op "cascade"; and
      FlashInfer's flat decode of the same batch (BatchDecodeWithPagedKVCacheWrapper,
      use_tensor_cores=True; each request's page table = the prefix pages + its own pages), op
      "cascade-flat". Metric: TB/s of the batch's logical K+V bytes, 2 * B * (prefix + own) *
      Hkv * D * 2 (what the flat decode reads; the same numerator for both rows, so their ratio
      is the cascade's speedup). Each row also carries the bytes read at least once.
  (c) FP8-KV decode (bench/decode_bench.cu's FP8 rows), op "decode-fp8": fp16 queries and
      output over an fp8 paged KV cache, 32 query heads, head_dim 128, page 16, NHD, pages in
      random order; e4m3 at (B, kv, Hkv) = (64, 4096, 8), (64, 4096, 32), (1, 32768, 8),
      (256, 2048, 8), e5m2 at (64, 4096, 8), and the fp16-KV decode at (64, 4096, 8) (kv dtype
      "f16") so that the fp8 / fp16 time ratio comes from one process (fi_peer.py times fp16
      decode at every shape). Both of FlashInfer's fa2 decode paths: "fa2-tc"
      (BatchDecodeWithPagedKVCacheWrapper(use_tensor_cores=True, backend="fa2"): a batch
      prefill module, dtype_q fp16, dtype_kv fp8, dtype_o fp16) and "fa2-cuda"
      (use_tensor_cores=False: a batch decode module with dtype_kv fp8). The cache holds
      N(0, 1) / scale cast to the fp8 type (K / k_scale, V / v_scale), run() gets the scales as
      python floats (k_scale 0.5, v_scale 2.0; FI_EXTRA_FP8_SCALES="k,v"), so the dequantized
      K and V are O(1); the check's reference is float32 attention over fp8.float() * scale.
      FlashInfer 0.7.4's run() folds k_scale into sm_scale and applies v_scale after the
      kernel (out *= v_scale, a second kernel, inside the timed call; v_scale 1.0 skips it).
      Metric: TB/s of the K+V bytes read, 2 * B * kv * Hkv * D * itemsize (1 for fp8, 2 for
      fp16); each row carries "kv_dtype" ("e4m3", "e5m2", "f16") and the fp8 rows "x_fp16"
      (the fp16-KV row's time over theirs, same backend and shape, when that row ran).

  (d) skewed-batch decode (decode_bench --skew's rows), op "decode-skew": fp16 q and KV, 32
      query heads, head_dim 128, page 16, NHD, pages in random order, B=64 with 63 requests of
      512 tokens and one of 32768 (last), and the uniform batch of the same tokens (64 x 1016,
      "long_kv_len" 0), 8 and 32 KV heads; the decode-fp8 rows' fp16-KV path (fa2-tc, fa2-cuda)
      with per-request lengths. Metric: TB/s of K+V read, 2 * tokens * Hkv * D * 2; "kv_len" is
      the short requests' length, "long_kv_len" the long one's, "tokens" the total.
Method and environment: those of ../shared/gpu/flashinfer-peer/fi_peer.py, whose helpers this
file imports (the peer bundle carries fi_peer.py at its top level, so PYTHONPATH=/tmp/fi is
enough): its environment setup (JIT cache FI_PEER_CACHE, sm_90a, MAX_JOBS), its JIT specs (one
ninja run for every module these rows need; this file's make_spec adds the fp8-KV modules),
CUDA-event timing with inputs rotated over enough copies that >= FI_PEER_COLD_GB (1 GiB) of
other data is read between two uses of one copy, a host-ahead GPU sleep, median of
FI_PEER_REPS (30) after FI_PEER_WARMUP (5). Every kernel configuration that is timed is first
checked against a float32 torch reference on a small case. Every check and every row runs in
its own try, so one failure does not stop the rest.

    mkdir -p /tmp/fi && tar -xJf .fi-peer/flashinfer_peer.tar.xz -C /tmp/fi
    OUT=/tmp/out PYTHONPATH=/tmp/fi PYTHONUNBUFFERED=1 python3 bench/fi_extra_peer.py

Writes $OUT/fi_extra.jsonl (a "meta" line, "check" lines, and one "timing" line per row: op,
backend, config, median_us, min_us, metric, unit, dtype, head_dim, B, qo_len, kv_len, hq, hk,
page_size, ...; fi_peer.py's conventions, kv_len counting the prefix and the new tokens;
dtype is the query / output type, decode-fp8 rows add kv_dtype) and prints a table. Knobs:
FI_EXTRA_FILTER=<regex on the row label> (e.g. decode-fp8), FI_EXTRA_NO_CHECK=1,
FI_EXTRA_DRYRUN=1 (import FlashInfer, check the APIs the rows use and write the JIT modules'
ninja files; no GPU work; without torch it checks this file's own mask / case logic only),
FI_EXTRA_FP8_SCALES=<k_scale>,<v_scale> (0.5,2.0), and fi_peer.py's FI_PEER_REPS,
FI_PEER_WARMUP, FI_PEER_COLD_GB, FI_PEER_SLEEP, FI_PEER_CACHE, FI_PEER_MAX_JOBS.

Note: the trimmed peer bundle has no csrc/quantization.cu, so FlashInfer's packbits /
segment_packbits (what plan(custom_mask=...) calls to pack a boolean mask) cannot be JIT-built
there; the rows pass packed_custom_mask instead, packed here with numpy (little bit order).
FlashInfer 0.7.4's paged plan() offsets request b's packed bits by its *bit* offset
sum_{c<b} qo_len_c * kv_len_c (used by the kernel as a byte offset; measured on the H200), so
each request's bytes are placed there (MASK_LAYOUTS; the check confirms the layout). The kernel
reads the same bytes per request as after plan(custom_mask=...); packing is in plan(), which is
not timed.
"""
import inspect
import json
import math
import os
import re
import sys
import time
import traceback

import numpy as np

DRYRUN = os.environ.get("FI_EXTRA_DRYRUN") == "1"
if DRYRUN:
    os.environ["FI_PEER_DRYRUN"] = "1"  # fi_peer.jit_build then writes ninja files only


def _import_fi_peer():
    """fi_peer.py: from the bundle's top level (on PYTHONPATH), else beside the checkout."""
    try:
        import fi_peer
        return fi_peer
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.environ.get("FI_PEER_DIR"), "/tmp/fi",
              os.path.join(here, "..", "..", "shared", "gpu", "flashinfer-peer"),
              os.path.join(here, "..", "shared", "gpu", "flashinfer-peer")):
        if d and os.path.isfile(os.path.join(d, "fi_peer.py")):
            sys.path.insert(0, os.path.abspath(d))
            import fi_peer
            return fi_peer
    raise ImportError("fi_peer.py not found: put the FlashInfer peer bundle on PYTHONPATH "
                      "(PYTHONPATH=/tmp/fi) or set FI_PEER_DIR")


P = _import_fi_peer()  # sets the JIT environment (cache, arch list, MAX_JOBS, PATH) at import
log = P.log
FILTER = re.compile(os.environ.get("FI_EXTRA_FILTER", ""))
NO_CHECK = os.environ.get("FI_EXTRA_NO_CHECK") == "1"
HQ, PAGE, HD = P.HQ, P.PAGE, 128
TREE_PREFIX, TREE_NODES, TREE_B = 4096, 64, 16
CASCADE_PREFIX, CASCADE_OWN, CASCADE_HK = 32768, 256, 8
# FP8-KV decode (item (c)): (B, kv_len, Hkv) of the e4m3 rows; e5m2 and the fp16-KV reference
# row at the first shape. kv dtype names: the rows' "kv_dtype" -> the torch dtype's name.
FP8_SHAPES = ((64, 4096, 8), (64, 4096, 32), (1, 32768, 8), (256, 2048, 8))
FP8_REF_SHAPE = FP8_SHAPES[0]
FP8_BACKENDS = ("fa2-tc", "fa2-cuda")  # fi_peer.py's labels: tensor-core / CUDA-core decode
KV_DT = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2", "f16": "float16"}
FP8_KV = ("e4m3", "e5m2")
# Skewed-batch decode (item (d)): (short length, long length or 0 = uniform) at B=64.
SKEW_B, SKEW_SHAPES = 64, ((512, 32768), (1016, 0))


def _fp8_scales():
    ks, vs = os.environ.get("FI_EXTRA_FP8_SCALES", "0.5,2.0").split(",")
    return float(ks), float(vs)


FP8_K_SCALE, FP8_V_SCALE = _fp8_scales()


# ---------------------------------------------------------------- masks (numpy, no torch)
def tree_parent(i):
    return (i - 1) // 4 if i >= 1 else -1


def tree_mask(prefix, nodes):
    """[nodes, prefix + nodes] bool: row i sees kv 0..prefix-1 and prefix + j for j = i or an
    ancestor of i (parent(i) = (i - 1) // 4)."""
    m = np.zeros((nodes, prefix + nodes), bool)
    m[:, :prefix] = True
    for i in range(nodes):
        j = i
        while j >= 0:
            m[i, prefix + j] = True
            j = tree_parent(j)
    return m


# How packed_custom_mask is laid out for FlashInfer's paged prefill (plan()). "bitoffset":
# request b's packbits(mask_b, bitorder="little") at byte sum_{c<b} qo_len_c * kv_len_c, which
# is what FlashInfer 0.7.4 reads (its plan() passes the requests' bit offsets as mask_indptr and
# the kernel adds them to the mask pointer as bytes; measured on the H200: "segment" gives
# wrong rows from the second request on). "segment": segment_packbits' output (each request's
# bytes right after the previous one's), what plan(custom_mask=...) builds with byte offsets.
# The tree-mask check tries both and keeps the one that matches the reference.
MASK_LAYOUTS = ("bitoffset", "segment")
STATE = {"mask_layout": "bitoffset"}


def packed_masks(masks, layout="segment"):
    """packed_custom_mask of per-request bool masks in ``layout`` (see MASK_LAYOUTS)."""
    bits = [np.packbits(np.asarray(m, bool).reshape(-1), bitorder="little") for m in masks]
    if layout == "segment":
        return np.concatenate(bits)
    sizes = [np.asarray(m).size for m in masks]
    offsets = [sum(sizes[:b]) for b in range(len(masks))]
    out = np.zeros(offsets[-1] + bits[-1].size, np.uint8)
    for off, x in zip(offsets, bits):
        out[off:off + x.size] = x
    return out


def tree_pairs(prefix, nodes):
    return int(tree_mask(prefix, nodes).sum())


def causal_pairs(qo, kv):
    return sum(kv - qo + i + 1 for i in range(qo))


# ---------------------------------------------------------------- cases
def cases():
    out = []
    for hk in (8, 32):
        for backend in ("fa2", "fa3"):
            out.append(dict(op="treemask", backend=backend, dt="bf16", hd=HD, hk=hk, B=TREE_B,
                            qo=TREE_NODES, kv=TREE_PREFIX + TREE_NODES))
        for backend in ("fa2", "fa3"):
            out.append(dict(op="append", backend=backend, dt="bf16", hd=HD, hk=hk, B=TREE_B,
                            qo=TREE_NODES, kv=TREE_PREFIX + TREE_NODES))
    for b in (64, 256):
        out.append(dict(op="cascade", backend="auto", dt="f16", hd=HD, hk=CASCADE_HK, B=b,
                        qo=1, prefix=CASCADE_PREFIX, own=CASCADE_OWN))
        out.append(dict(op="cascade-flat", backend="fa2-tc", dt="f16", hd=HD, hk=CASCADE_HK, B=b,
                        qo=1, prefix=CASCADE_PREFIX, own=CASCADE_OWN))
    for hk in (8, 32):
        for short, long_len in SKEW_SHAPES:
            for backend in FP8_BACKENDS:
                out.append(dict(op="decode-skew", backend=backend, dt="f16", kvdt="f16", hd=HD,
                                hk=hk, B=SKEW_B, qo=1, kv=short, long_kv=long_len))
    for b, kv, hk in FP8_SHAPES:
        kvdts = ["e4m3"] + (["e5m2", "f16"] if (b, kv, hk) == FP8_REF_SHAPE else [])
        for kvdt in kvdts:
            for backend in FP8_BACKENDS:
                out.append(dict(op="decode-fp8", backend=backend, dt="f16", kvdt=kvdt, hd=HD,
                                hk=hk, B=b, qo=1, kv=kv))
    return out


def is_fp8(c):
    return c.get("kvdt") in FP8_KV


def kv_lens(c):
    """Per-request kv lengths of a decode-fp8 / decode-skew row (a skewed batch's long request
    last)."""
    if c.get("long_kv"):
        return [c["kv"]] * (c["B"] - 1) + [c["long_kv"]]
    return [c["kv"]] * c["B"]


def kv_bytes_read(c):
    """decode-fp8 / decode-skew rows' metric bytes: K and V read once, 2 * tokens * Hkv * D *
    itemsize."""
    return 2 * sum(kv_lens(c)) * c["hk"] * c["hd"] * (1 if is_fp8(c) else 2)


def config_str(c):
    s = f"{c['dt']} hd={c['hd']} B={c['B']} "
    if c["op"] == "decode-fp8":
        s = f"{c['dt']} kvdt={c['kvdt']} hd={c['hd']} B={c['B']} kv={c['kv']}"
    elif c["op"] == "decode-skew":
        s = f"{c['dt']} hd={c['hd']} B={c['B']} kv={c['kv']} long={c['long_kv']}"
    elif c["op"].startswith("cascade"):
        s += f"prefix={c['prefix']} own={c['own']}"
    else:
        s += f"qo={c['qo']} kv={c['kv']}"
    return s + f" hq={HQ} hk={c['hk']}"


def label(c):
    return f"{c['op']} {c['backend']} {config_str(c)}"


def selected():
    return [c for c in cases() if FILTER.search(label(c))]


def module_keys(cs):
    """fi_peer's (kind, backend, dt, hd) keys of every JIT module the rows (and checks) load:
    the prefill modules (custom masks are a runtime mask mode of the same module), fp16 fa2
    and fa3 for the cascade levels (auto: fa2 for <= 64 query rows per request, else fa3), fa2
    for the tensor-core decode, and the cascade module (merge_state_in_place). decode-fp8:
    ("prefill-fp8" | "decode-fp8", "fa2", <fp8 kv dtype>, hd) for the tensor-core / CUDA-core
    decode over an fp8 cache (this file's make_spec), fi_peer's ("prefill" | "decode", "fa2",
    "f16", hd) for the fp16-KV reference rows."""
    keys = []

    def add(k):
        if k not in keys:
            keys.append(k)

    for c in cs:
        if c["op"] in ("treemask", "append"):
            add(("prefill", c["backend"], c["dt"], c["hd"]))
        elif c["op"] == "cascade":
            add(("prefill", "fa2", c["dt"], c["hd"]))
            add(("prefill", "fa3", c["dt"], c["hd"]))
            add(("cascade", "-", "-", 0))
        elif c["op"] in ("decode-fp8", "decode-skew"):
            tc = c["backend"] == "fa2-tc"
            if is_fp8(c):
                add(("prefill-fp8" if tc else "decode-fp8", "fa2", c["kvdt"], c["hd"]))
            else:
                add(("prefill" if tc else "decode", "fa2", c["dt"], c["hd"]))
        else:
            add(("prefill", "fa2", c["dt"], c["hd"]))
    return keys


def fp8_module_args(torch, key):
    """The arguments decode.py's plan() (FlashInfer 0.7.4) passes for an fp8-KV decode over
    fp16 queries: tensor cores, get_batch_prefill_module(backend, q, kv, o, indptr.dtype, hd,
    hd, posenc NONE, use_sliding_window, use_logits_soft_cap, use_fp16_qk_reduction False,
    use_token_head_sf False); CUDA cores, get_batch_decode_module(q, kv, o, indptr.dtype, hd,
    hd, posenc NONE, use_sliding_window, use_logits_soft_cap)."""
    kind, backend, kvdt, hd = key
    q, kv = torch.float16, getattr(torch, KV_DT[kvdt])
    if kind == "decode-fp8":
        return (q, kv, q, torch.int32, hd, hd, 0, False, False)
    return (backend, q, kv, q, torch.int32, hd, hd, 0, False, False, False)


def make_spec(torch, key):
    """fi_peer.make_spec plus this file's fp8-KV kinds ("decode-fp8" / "prefill-fp8",
    backend, kv dtype "e4m3" | "e5m2", hd): the JitSpec the decode wrapper's plan() loads (same
    URI). Installed as fi_peer's make_spec below, so fi_peer.jit_build builds every module of
    the run in its one ninja run."""
    if key[0] not in ("decode-fp8", "prefill-fp8"):
        return _FI_PEER_MAKE_SPEC(torch, key)
    from flashinfer.jit.attention import modules as m
    args = fp8_module_args(torch, key)
    if key[0] == "decode-fp8":  # decode.get_batch_decode_module(...)
        return m.gen_batch_decode_module(*args)
    if key[1] == "fa2":  # prefill.get_batch_prefill_module("fa2", ...): the equal-stride primary
        gen = getattr(m, "_gen_batch_prefill_primary_module", None) or m.gen_batch_prefill_module
        return gen(*args)
    return m.gen_batch_prefill_module(*args)


_FI_PEER_MAKE_SPEC = P.make_spec
P.make_spec = make_spec  # fi_peer.jit_build looks make_spec up in its module at call time


def fp8_uri_problems(torch, specs):
    """Each fp8 spec's name against the URI that plan() computes from the same arguments
    (get_batch_decode_uri / get_batch_prefill_uri; the fa2 primary adds a suffix)."""
    from flashinfer.jit.attention import modules as m
    problems = []
    for key, spec in specs.items():
        if key[0] not in ("decode-fp8", "prefill-fp8"):
            continue
        args = fp8_module_args(torch, key)
        if key[0] == "decode-fp8":
            want, ok = m.get_batch_decode_uri(*args), spec.name == m.get_batch_decode_uri(*args)
        else:
            want = m.get_batch_prefill_uri(*args, False)
            ok = spec.name.startswith(want)
        if not ok or f"dtype_kv_{key[2]}_" not in spec.name or "dtype_q_f16_" not in spec.name:
            problems.append(f"JIT spec {key}: name {spec.name} is not plan()'s URI {want}")
    return problems


# ---------------------------------------------------------------- torch helpers
def ref_attn_mask(torch, q, k, v, mask):
    """float32 reference with a [qo, kv] bool mask (True = visible; no row may be empty)."""
    q, k, v = q.float(), k.float(), v.float()
    hq, hk = q.shape[1], k.shape[1]
    k = k.repeat_interleave(hq // hk, dim=1)
    v = v.repeat_interleave(hq // hk, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hqk,khd->qhd", p, v)


class SharedPrefix:
    """A paged KV cache (copies of it) holding a prefix shared by B requests and each request's
    own tokens, pages in random order: the two cascade levels' tables and the flat table."""

    def __init__(self, torch, B, prefix_len, own_lens, hk, hd, dtype, copies=1, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.B, self.prefix_len, self.own_lens = B, prefix_len, list(own_lens)
        self.prefix_pages = -(-prefix_len // PAGE)
        own_pages = [-(-n // PAGE) for n in own_lens]
        self.num_pages = self.prefix_pages + sum(own_pages)
        perm = torch.randperm(self.num_pages, generator=g, device="cuda").to(torch.int32)
        self.prefix_idx = perm[:self.prefix_pages]
        self.own_indptr_h = [0]
        for p in own_pages:
            self.own_indptr_h.append(self.own_indptr_h[-1] + p)
        self.own_idx = perm[self.prefix_pages:]
        dev = "cuda"
        i32 = torch.int32
        self.prefix_indptr = torch.tensor([0, self.prefix_pages], dtype=i32, device=dev)
        self.prefix_last = torch.tensor([(prefix_len - 1) % PAGE + 1], dtype=i32, device=dev)
        self.own_indptr = torch.tensor(self.own_indptr_h, dtype=i32, device=dev)
        self.own_last = torch.tensor([(n - 1) % PAGE + 1 for n in own_lens], dtype=i32,
                                     device=dev)
        # flat: prefix pages then own pages per request (needs a whole-page prefix)
        self.flat_ok = prefix_len % PAGE == 0
        flat_idx, flat_indptr = [], [0]
        for b in range(B):
            flat_idx.append(self.prefix_idx)
            flat_idx.append(self.own_idx[self.own_indptr_h[b]:self.own_indptr_h[b + 1]])
            flat_indptr.append(flat_indptr[-1] + self.prefix_pages + own_pages[b])
        self.flat_idx = torch.cat(flat_idx)
        self.flat_indptr = torch.tensor(flat_indptr, dtype=i32, device=dev)
        self.caches = []
        for _ in range(copies):
            t = torch.empty(self.num_pages, 2, PAGE, hk, hd, dtype=dtype, device=dev)
            t.uniform_(-1, 1, generator=g)
            self.caches.append(t)

    def kv_of(self, b, copy=0):
        """Request b's keys and values: the prefix's tokens, then its own."""
        import torch

        own = self.own_idx[self.own_indptr_h[b]:self.own_indptr_h[b + 1]]
        pg = torch.cat([self.prefix_idx, own]).long()
        c = self.caches[copy][pg]
        pre = self.prefix_pages * PAGE
        n = self.own_lens[b]
        k = c[:, 0].reshape(-1, c.shape[-2], c.shape[-1])
        v = c[:, 1].reshape(-1, c.shape[-2], c.shape[-1])
        keep = list(range(self.prefix_len)) + list(range(pre, pre + n))
        return k[keep], v[keep]


# ---------------------------------------------------------------- wrappers
def make_treemask(torch, fi, ws, c, pk, qo_indptr, masks, layout=None):
    w = fi.prefill.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend=c["backend"])
    d = getattr(torch, P.DT[c["dt"]])
    packed = torch.from_numpy(packed_masks(masks, layout or STATE["mask_layout"])).to("cuda")
    w.plan(qo_indptr, pk.indptr, pk.indices, pk.last, HQ, c["hk"], c["hd"], PAGE,
           packed_custom_mask=packed, causal=False, q_data_type=d, kv_data_type=d,
           o_data_type=d)
    return w


def make_cascade(torch, fi, ws, c, sp):
    w = fi.cascade.MultiLevelCascadeAttentionWrapper(2, ws, "NHD")
    d = getattr(torch, P.DT[c["dt"]])
    B = sp.B
    qo = [torch.tensor([0, B], dtype=torch.int32, device="cuda"),
          torch.arange(B + 1, dtype=torch.int32, device="cuda")]
    w.plan(qo, [sp.prefix_indptr, sp.own_indptr], [sp.prefix_idx, sp.own_idx],
           [sp.prefix_last, sp.own_last], HQ, c["hk"], c["hd"], PAGE, causal=False,
           q_data_type=d, kv_data_type=d)
    return w


def make_flat(torch, fi, ws, c, sp):
    w = fi.decode.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True,
                                                     backend="fa2")
    d = getattr(torch, P.DT[c["dt"]])
    last = sp.own_last
    w.plan(sp.flat_indptr, sp.flat_idx, last, HQ, c["hk"], c["hd"], PAGE, q_data_type=d,
           kv_data_type=d, o_data_type=d)
    return w


def level_backends(w):
    return "+".join(str(getattr(x, "_backend", "?")) for x in
                    getattr(w, "_batch_prefill_wrappers", []))


def kv_scales(c):
    """(k_scale, v_scale) that run() gets: the fp8 rows' scales, None for fp16 KV."""
    return (FP8_K_SCALE, FP8_V_SCALE) if is_fp8(c) else (None, None)


def kv_cache(torch, num_pages, c, seed):
    """[num_pages, 2, PAGE, Hkv, D] of c's kv dtype: N(0, 1) values, for fp8 divided by the
    scale (K / k_scale, V / v_scale) and cast, so that fp8.float() * scale is O(1). Built 256 MiB
    of float32 at a time."""
    d = getattr(torch, KV_DT[c["kvdt"]])
    ks, vs = kv_scales(c)
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (2, PAGE, c["hk"], c["hd"])
    t = torch.empty((num_pages,) + shape, dtype=d, device="cuda")
    step = max(1, (256 << 20) // (4 * math.prod(shape)))
    for p0 in range(0, num_pages, step):
        n = min(step, num_pages - p0)
        x = torch.randn((n,) + shape, generator=g, dtype=torch.float32, device="cuda")
        if ks is not None:
            x[:, 0] /= ks
            x[:, 1] /= vs
        t[p0:p0 + n] = x.to(d)
    return t


def dequantized(torch, cache, c):
    """float32 copy of a cache, fp8 values times their scale (the reference's K and V)."""
    x = cache.float()
    ks, vs = kv_scales(c)
    if ks is not None:
        x[:, 0] *= ks
        x[:, 1] *= vs
    return x


def make_decode_fp8(torch, fi, ws, c, pk):
    """fi_peer.make_decode with the cache's kv dtype: fa2, tensor cores for "fa2-tc"."""
    w = fi.decode.BatchDecodeWithPagedKVCacheWrapper(
        ws, "NHD", use_tensor_cores=c["backend"] == "fa2-tc", backend="fa2")
    d = getattr(torch, P.DT[c["dt"]])
    w.plan(pk.indptr, pk.indices, pk.last, HQ, c["hk"], c["hd"], PAGE, q_data_type=d,
           kv_data_type=getattr(torch, KV_DT[c["kvdt"]]), o_data_type=d)
    return w


# ---------------------------------------------------------------- checks
def check_treemask(torch, fi, ws, c):
    d = getattr(torch, P.DT[c["dt"]])
    prefixes, nodes = [300, 0, 1000], [64, 21, 5]
    kv_lens = [p + n for p, n in zip(prefixes, nodes)]
    pk = P.Paged(torch, kv_lens, c["hk"], c["hd"], d, seed=5)
    qi = [0]
    for n in nodes:
        qi.append(qi[-1] + n)
    qo_indptr = torch.tensor(qi, dtype=torch.int32, device="cuda")
    q = torch.randn(qi[-1], HQ, c["hd"], dtype=d, device="cuda")
    masks = [tree_mask(p, n) for p, n in zip(prefixes, nodes)]
    ref = torch.cat([ref_attn_mask(torch, q[qi[b]:qi[b + 1]], *pk.kv_of(b),
                                   torch.from_numpy(masks[b]).to("cuda"))
                     for b in range(len(nodes))])
    layouts = [STATE["mask_layout"]] + [x for x in MASK_LAYOUTS if x != STATE["mask_layout"]]
    for layout in layouts:  # the first layout whose result matches the reference
        w = make_treemask(torch, fi, ws, c, pk, qo_indptr, masks, layout)
        o = w.run(q, pk.caches[0])
        rel, mx = P.rel_err(torch, o, ref)
        if rel < 2e-2:
            break
        log(f"  (treemask {c['backend']}: packed_custom_mask layout {layout!r} gives rel "
            f"{rel:.2e}; trying the next)")
    if rel < 2e-2:
        STATE["mask_layout"] = layout
    return P.record_check(f"treemask {c['backend']} {c['dt']} hd={c['hd']} hk={c['hk']} "
                          f"nodes{nodes} prefix{prefixes} mask layout {layout}", rel, mx, 2e-2)


def check_cascade(torch, fi, ws, c, flat):
    """B=80 (> 64 query rows: the shared level on fa3 under auto), a 300-token prefix (not whole
    pages, cascade only) or 320 (flat), own lengths 1..40."""
    d = getattr(torch, P.DT[c["dt"]])
    B = 80
    own = [1 + (7 * b) % 40 for b in range(B)]
    prefix = 320 if flat else 300
    sp = SharedPrefix(torch, B, prefix, own, c["hk"], c["hd"], d, seed=6)
    q = torch.randn(B, HQ, c["hd"], dtype=d, device="cuda")
    if flat:
        w = make_flat(torch, fi, ws, c, sp)
        o = w.run(q, sp.caches[0])
        resolved = "fa2-tc"
    else:
        w = make_cascade(torch, fi, ws, c, sp)
        o = w.run(q, sp.caches[0])
        resolved = level_backends(w)
    ref = torch.cat([P.ref_attn(torch, q[b:b + 1], *sp.kv_of(b), False)[0] for b in range(B)])
    rel, mx = P.rel_err(torch, o, ref)
    return P.record_check(f"{c['op']} {resolved} {c['dt']} hd={c['hd']} hk={c['hk']} B={B} "
                          f"prefix={prefix} own=1..40", rel, mx, 2e-2)


def check_decode_fp8(torch, fi, ws, c):
    """fi_peer.check_decode's ragged lengths over c's kv dtype and scales; the reference is
    float32 attention over the dequantized cache."""
    import copy

    d = getattr(torch, P.DT[c["dt"]])
    kv_lens = [7, 16, 300, 1025, 4096]
    pk = P.Paged(torch, kv_lens, c["hk"], c["hd"], d, copies=0, seed=11)  # page tables only
    pk.caches = [kv_cache(torch, pk.num_pages, c, seed=12)]
    q = torch.randn(len(kv_lens), HQ, c["hd"], dtype=d, device="cuda")
    w = make_decode_fp8(torch, fi, ws, c, pk)
    ks, vs = kv_scales(c)
    o = w.run(q, pk.caches[0], k_scale=ks, v_scale=vs)
    ref_pk = copy.copy(pk)
    ref_pk.caches = [dequantized(torch, pk.caches[0], c)]
    ref = torch.cat([P.ref_attn(torch, q[b:b + 1], *ref_pk.kv_of(b), False)[0]
                     for b in range(len(kv_lens))])
    rel, mx = P.rel_err(torch, o, ref)
    scales = f" k_scale={ks:g} v_scale={vs:g}" if ks is not None else ""
    return P.record_check(f"{c['op']} {c['backend']} {c['dt']} kv {c['kvdt']} hd={c['hd']} "
                          f"hk={c['hk']} kv{kv_lens}{scales}", rel, mx, 2e-2)


def may_be_unsupported(c):
    """FlashInfer 0.7.4's sm90 (fa3) prefill kernels return cudaErrorNotSupported for
    MaskMode::kCustom (hopper/prefill_sm90.cuh): a failure there is reported as such, not as a
    failure of the run."""
    return c["op"] == "treemask" and c["backend"] == "fa3"


def case_key(c):
    return (c["op"], c["backend"], c["dt"], c["hk"], c.get("kvdt"))


def run_checks(torch, fi, ws, cs):
    """One check per timed kernel configuration (the ones that may be unsupported last);
    returns {key: error} of the checks that raised (their rows are not timed)."""
    failed = {}
    seen = set()
    for c in sorted(cs, key=may_be_unsupported):
        key = case_key(c)
        if key in seen:
            continue
        seen.add(key)
        try:
            if c["op"] == "treemask":
                check_treemask(torch, fi, ws, c)
            elif c["op"] == "append":
                P.check_prefill(torch, fi, ws, c)  # causal, ragged lengths, random pages
            elif c["op"] in ("decode-fp8", "decode-skew"):
                check_decode_fp8(torch, fi, ws, c)
            else:
                check_cascade(torch, fi, ws, c, flat=c["op"] == "cascade-flat")
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {str(e)[-800:]}"
            unsupported = may_be_unsupported(c)
            P.CHECKS.append(dict(kind="check", name=label(c), error=err, ok=unsupported,
                                 unsupported=unsupported))
            log(f"  {label(c)}: {'UNSUPPORTED by FlashInfer' if unsupported else 'FAILED'} "
                f"{err[-500:]}")
            failed[key] = err
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return failed


# ---------------------------------------------------------------- timing
def time_prefill(torch, fi, ws, c):
    d = getattr(torch, P.DT[c["dt"]])
    B, hk, hd, qo, kv = c["B"], c["hk"], c["hd"], c["qo"], c["kv"]
    io_bytes = B * (2 * qo * HQ + 2 * kv * hk) * hd * 2
    n = P.copies_for(io_bytes)
    pk = P.Paged(torch, [kv] * B, hk, hd, d, copies=n, seed=7)
    qo_indptr = torch.arange(B + 1, dtype=torch.int32, device="cuda") * qo
    qs = [torch.randn(B * qo, HQ, hd, dtype=d, device="cuda") for _ in range(n)]
    outs = [torch.empty(B * qo, HQ, hd, dtype=d, device="cuda") for _ in range(n)]
    t = time.time()
    extra = {}
    if c["op"] == "treemask":
        masks = [tree_mask(kv - qo, qo)] * B
        w = make_treemask(torch, fi, ws, c, pk, qo_indptr, masks)
        pairs = B * tree_pairs(kv - qo, qo)
        extra = dict(mask="tree", tree="parent(i)=(i-1)//4", prefix_len=kv - qo,
                     mask_layout=STATE["mask_layout"])
    else:
        w = P.make_prefill(torch, fi, ws, c, pk, qo_indptr)  # causal=True
        pairs = B * causal_pairs(qo, kv)
        extra = dict(causal=True, prefix_len=kv - qo)
    plan_s = time.time() - t
    calls = [(lambda i=i: w.run(qs[i], pk.caches[i], out=outs[i])) for i in range(n)]
    med, mn = P.bench(torch, calls)
    metric = 4 * HQ * hd * pairs / (med * 1e-6) / 1e12
    resolved = getattr(w, "_backend", None)
    return dict(kind="timing", op=c["op"], backend=c["backend"], config=config_str(c),
                median_us=round(med, 2), min_us=round(mn, 2), metric=round(metric, 3),
                unit="TFLOP/s", dtype=P.DT[c["dt"]], head_dim=hd, B=B, qo_len=qo, kv_len=kv,
                hq=HQ, hk=hk, page_size=PAGE, layout="NHD", pairs=pairs, copies=n,
                plan_s=round(plan_s, 3), reps=P.REPS, warmup=P.WARMUP,
                resolved_backend=str(resolved), **extra)


def time_cascade(torch, fi, ws, c):
    d = getattr(torch, P.DT[c["dt"]])
    B, hk, hd = c["B"], c["hk"], c["hd"]
    num_pages = -(-c["prefix"] // PAGE) + B * -(-c["own"] // PAGE)
    distinct = num_pages * 2 * PAGE * hk * hd * 2  # bytes read at least once (the cache)
    n = P.copies_for(distinct)
    sp = SharedPrefix(torch, B, c["prefix"], [c["own"]] * B, hk, hd, d, copies=n, seed=8)
    qs = [torch.randn(B, HQ, hd, dtype=d, device="cuda") for _ in range(n)]
    t = time.time()
    if c["op"] == "cascade":
        w = make_cascade(torch, fi, ws, c, sp)
        calls = [(lambda i=i: w.run(qs[i], sp.caches[i])) for i in range(n)]
        resolved = level_backends(w)
    else:
        w = make_flat(torch, fi, ws, c, sp)
        outs = [torch.empty(B, HQ, hd, dtype=d, device="cuda") for _ in range(n)]
        calls = [(lambda i=i: w.run(qs[i], sp.caches[i], out=outs[i])) for i in range(n)]
        resolved = "fa2-tc"
    plan_s = time.time() - t
    med, mn = P.bench(torch, calls)
    logical = 2 * B * (c["prefix"] + c["own"]) * hk * hd * 2
    return dict(kind="timing", op=c["op"], backend=c["backend"], config=config_str(c),
                median_us=round(med, 2), min_us=round(mn, 2),
                metric=round(logical / (med * 1e-6) / 1e12, 3), unit="TB/s",
                metric_bytes="logical K+V bytes 2*B*(prefix+own)*hk*D*2",
                bytes_logical=logical, bytes_distinct=distinct,
                tbps_distinct=round(distinct / (med * 1e-6) / 1e12, 3), dtype=P.DT[c["dt"]],
                head_dim=hd, B=B, qo_len=1, kv_len=c["prefix"] + c["own"],
                prefix_len=c["prefix"], own_len=c["own"], hq=HQ, hk=hk, page_size=PAGE,
                layout="NHD", copies=n, plan_s=round(plan_s, 3), reps=P.REPS, warmup=P.WARMUP,
                resolved_backend=resolved, use_tensor_cores=c["op"] == "cascade-flat")


def time_decode_fp8(torch, fi, ws, c):
    d = getattr(torch, P.DT[c["dt"]])
    B, hk, hd, kv = c["B"], c["hk"], c["hd"], c["kv"]
    kv_bytes = kv_bytes_read(c)
    n = P.copies_for(kv_bytes)
    pk = P.Paged(torch, kv_lens(c), hk, hd, d, copies=0, seed=9)  # page tables only
    pk.caches = [kv_cache(torch, pk.num_pages, c, seed=20 + i) for i in range(n)]
    qs = [torch.randn(B, HQ, hd, dtype=d, device="cuda") for _ in range(n)]
    outs = [torch.empty(B, HQ, hd, dtype=d, device="cuda") for _ in range(n)]
    ks, vs = kv_scales(c)
    t = time.time()
    w = make_decode_fp8(torch, fi, ws, c, pk)
    plan_s = time.time() - t
    calls = [(lambda i=i: w.run(qs[i], pk.caches[i], k_scale=ks, v_scale=vs, out=outs[i]))
             for i in range(n)]
    med, mn = P.bench(torch, calls)
    resolved = getattr(w, "resolved_backend", None) or getattr(w, "_backend", None)
    extra = {}
    if ks is not None:
        extra = dict(k_scale=ks, v_scale=vs,
                     v_scale_applied="not at all (v_scale 1.0)" if vs == 1.0 else
                     "out *= v_scale after the kernel (FlashInfer's run()), timed")
    return dict(kind="timing", op=c["op"], backend=c["backend"], config=config_str(c),
                median_us=round(med, 2), min_us=round(mn, 2),
                metric=round(kv_bytes / (med * 1e-6) / 1e12, 3), unit="TB/s",
                metric_bytes="K+V bytes read 2*tokens*hk*D*itemsize(kv dtype)",
                bytes_kv=kv_bytes, dtype=P.DT[c["dt"]], kv_dtype=c["kvdt"],
                kv_torch_dtype=KV_DT[c["kvdt"]], head_dim=hd, B=B, qo_len=1, kv_len=kv, hq=HQ,
                hk=hk, page_size=PAGE, layout="NHD", copies=n, plan_s=round(plan_s, 3),
                long_kv_len=c.get("long_kv", 0), tokens=sum(kv_lens(c)),
                reps=P.REPS, warmup=P.WARMUP, resolved_backend=str(resolved),
                use_tensor_cores=bool(getattr(w, "use_tensor_cores", c["backend"] == "fa2-tc")),
                **extra)


def add_fp16_ratios(rows):
    """x_fp16 on each fp8 decode-fp8 row: the fp16-KV row's median over its own (same
    backend, B, kv, hk; measured in this process)."""
    f16 = {(r["backend"], r["B"], r["kv_len"], r["hk"]): r for r in rows
           if r.get("op") == "decode-fp8" and r.get("kv_dtype") == "f16" and "error" not in r}
    for r in rows:
        if r.get("op") != "decode-fp8" or r.get("kv_dtype") not in FP8_KV or "error" in r:
            continue
        ref = f16.get((r["backend"], r["B"], r["kv_len"], r["hk"]))
        if ref:
            r["x_fp16"] = round(ref["median_us"] / r["median_us"], 3)


# ---------------------------------------------------------------- dry run
def self_check():
    """This file's own logic (no torch): the tree, the masks' packing, the pair counts."""
    m = tree_mask(4096, 64)
    depth = []
    for i in range(64):
        dd, j = 0, i
        while j > 0:
            j = tree_parent(j)
            dd += 1
        depth.append(dd)
    assert m.shape == (64, 4160) and m[:, :4096].all()
    assert [int(x) for x in m[:, 4096:].sum(1)] == [x + 1 for x in depth]
    assert max(depth) == 3 and m[63, 4096 + 15] and m[63, 4096 + 3] and m[63, 4096]
    assert tree_pairs(4096, 64) == 64 * 4096 + sum(x + 1 for x in depth)
    assert causal_pairs(64, 4160) == sum(4096 + i + 1 for i in range(64))
    pk = packed_masks([m, m[:5, :100]], "segment")
    assert pk.dtype == np.uint8 and pk.size == 64 * 4160 // 8 + (500 + 7) // 8
    assert np.array_equal(np.unpackbits(pk[:33280], bitorder="little").astype(bool),
                          m.reshape(-1))
    pb = packed_masks([m, m[:5, :100]], "bitoffset")
    assert pb.size == 64 * 4160 + (500 + 7) // 8 and np.array_equal(pb[:33280], pk[:33280])
    assert np.array_equal(pb[64 * 4160:], pk[33280:])
    labels = [label(c) for c in cases()]
    assert len(labels) == len(set(labels)) == 32, labels
    # decode-skew: both backends x Hkv 8, 32 x the skewed batch and its equal-token uniform one
    skew = [c for c in cases() if c["op"] == "decode-skew"]
    assert [c for c in cases() if re.search("decode-skew", label(c))] == skew and len(skew) == 8
    for c in skew:
        lens = kv_lens(c)
        assert len(lens) == 64 and sum(lens) == 65024 and lens[-1] == max(lens), lens
        assert kv_bytes_read(c) == 2 * 65024 * c["hk"] * 128 * 2
    # decode-fp8: e4m3 at every shape, e5m2 and fp16 KV at the reference shape, both backends
    fp8 = [c for c in cases() if c["op"] == "decode-fp8"]
    assert [c for c in cases() if re.search("decode-fp8", label(c))] == fp8 and len(fp8) == 12
    got = sorted((c["B"], c["kv"], c["hk"], c["kvdt"], c["backend"]) for c in fp8)
    want = sorted([(b, kv, hk, "e4m3", be) for b, kv, hk in FP8_SHAPES for be in FP8_BACKENDS]
                  + [FP8_REF_SHAPE + (dt, be) for dt in ("e5m2", "f16") for be in FP8_BACKENDS])
    assert got == want, got
    assert all(c["hd"] == 128 and c["dt"] == "f16" and c["qo"] == 1 for c in fp8)
    one = dict(B=64, kv=4096, hk=8, hd=128)
    assert kv_bytes_read(dict(one, kvdt="e4m3")) == 2 * 64 * 4096 * 8 * 128
    assert kv_bytes_read(dict(one, kvdt="f16")) == 2 * kv_bytes_read(dict(one, kvdt="e5m2"))
    assert label(fp8[0]) == "decode-fp8 fa2-tc f16 kvdt=e4m3 hd=128 B=64 kv=4096 hq=32 hk=8"
    keys = module_keys(fp8)
    assert keys == [("prefill-fp8", "fa2", "e4m3", 128), ("decode-fp8", "fa2", "e4m3", 128),
                    ("prefill-fp8", "fa2", "e5m2", 128), ("decode-fp8", "fa2", "e5m2", 128),
                    ("prefill", "fa2", "f16", 128), ("decode", "fa2", "f16", 128)], keys
    # one check per kernel configuration (backend, kv dtype, GQA group), whatever the shape
    assert len({case_key(c) for c in fp8}) == 2 * 4
    assert P.make_spec is make_spec and _FI_PEER_MAKE_SPEC is not make_spec
    rows = [dict(op="decode-fp8", backend=be, B=64, kv_len=4096, hk=8, kv_dtype=dt,
                 median_us=us) for be, dt, us in (("fa2-tc", "f16", 300.0),
                                                  ("fa2-tc", "e4m3", 150.0),
                                                  ("fa2-cuda", "e5m2", 100.0))]
    add_fp16_ratios(rows)
    assert rows[1]["x_fp16"] == 2.0 and "x_fp16" not in rows[0] and "x_fp16" not in rows[2]
    return dict(tree_pairs=tree_pairs(4096, 64), causal_pairs=causal_pairs(64, 4160),
                rows=labels)


def api_check(fi):
    """The FlashInfer APIs the rows use, as this bundle has them."""
    problems = []
    pre = inspect.signature(fi.prefill.BatchPrefillWithPagedKVCacheWrapper.plan).parameters
    for name in ("custom_mask", "packed_custom_mask", "causal", "o_data_type"):
        if name not in pre:
            problems.append(f"BatchPrefillWithPagedKVCacheWrapper.plan has no {name}")
    casc = getattr(fi.cascade, "MultiLevelCascadeAttentionWrapper", None)
    if casc is None:
        problems.append("flashinfer.cascade has no MultiLevelCascadeAttentionWrapper")
    else:
        cp = inspect.signature(casc.plan).parameters
        for name in ("qo_indptr_arr", "paged_kv_indptr_arr", "paged_kv_indices_arr",
                     "paged_kv_last_page_len", "q_data_type", "kv_data_type"):
            if name not in cp:
                problems.append(f"MultiLevelCascadeAttentionWrapper.plan has no {name}")
    dec = inspect.signature(fi.decode.BatchDecodeWithPagedKVCacheWrapper.__init__).parameters
    if "use_tensor_cores" not in dec:
        problems.append("BatchDecodeWithPagedKVCacheWrapper has no use_tensor_cores")
    run = inspect.signature(fi.decode.BatchDecodeWithPagedKVCacheWrapper.run).parameters
    for name in ("k_scale", "v_scale", "out"):
        if name not in run:
            problems.append(f"BatchDecodeWithPagedKVCacheWrapper.run has no {name}")
    import torch
    for name in KV_DT.values():
        if not hasattr(torch, name):
            problems.append(f"torch has no {name}")
    from flashinfer.jit.attention import modules as m
    for name in ("gen_batch_decode_module", "get_batch_decode_uri", "get_batch_prefill_uri"):
        if not hasattr(m, name):
            problems.append(f"flashinfer.jit.attention.modules has no {name}")
    if not hasattr(fi.cascade, "merge_state_in_place"):
        problems.append("flashinfer.cascade has no merge_state_in_place")
    from flashinfer.jit import env as jit_env
    for src in ("batch_prefill.cu", "batch_prefill_sm90.cu", "cascade.cu", "batch_decode.cu"):
        if not (jit_env.FLASHINFER_CSRC_DIR / src).exists():
            problems.append(f"csrc/{src} is missing")
    quant = (jit_env.FLASHINFER_CSRC_DIR / "quantization.cu").exists()
    return problems, quant


# ---------------------------------------------------------------- main
def main():
    own = self_check()
    log("== fi_extra_peer: " + ", ".join(f"{k}={v}" for k, v in own.items() if k != "rows"))
    cs = selected()
    t_imp = time.time()
    try:
        import torch
    except ImportError:
        if DRYRUN:
            log("  torch is not installed: dry run of this file's own logic only "
                f"({len(cs)} rows: " + "; ".join(label(c) for c in cs) + ")")
            return 0
        raise
    try:
        import flashinfer as fi
        import flashinfer.cascade  # noqa: F401
        import flashinfer.decode  # noqa: F401
        import flashinfer.prefill  # noqa: F401
        import tvm_ffi
    except Exception:  # noqa: BLE001
        log("import flashinfer FAILED:\n" + traceback.format_exc())
        return 2
    try:
        problems, have_quant = api_check(fi)
    except Exception as e:  # noqa: BLE001
        problems, have_quant = [f"api check raised {type(e).__name__}: {e}"], None
    meta = dict(kind="meta", harness="fi_extra_peer", flashinfer=fi.__version__,
                flashinfer_path=os.path.dirname(fi.__file__),
                tvm_ffi=getattr(tvm_ffi, "__version__", "?"),
                import_s=round(time.time() - t_imp, 2), api_problems=problems,
                csrc_quantization=have_quant, rows=[label(c) for c in cs])
    if not DRYRUN:
        meta.update(P.env_report(torch))
    log("== environment ==")
    for k, v in meta.items():
        if k not in ("kind", "rows"):
            log(f"  {k}: {v}")
    keys = module_keys(cs)
    log(f"\n== JIT: {len(keys)} modules for {len(cs)} rows (MAX_JOBS={os.environ['MAX_JOBS']}, "
        f"cache {P.CACHE}) ==")
    jit_s, jit_err, specs = P.jit_build(torch, keys)  # with this file's make_spec
    try:
        uri_problems = fp8_uri_problems(torch, specs)
    except Exception as e:  # noqa: BLE001
        uri_problems = [f"fp8 URI check raised {type(e).__name__}: {e}"]
    for p in uri_problems if not DRYRUN else []:  # the dry run lists every problem below
        log(f"  {p}")
    problems += uri_problems  # meta["api_problems"] is this list
    meta["jit_s"] = round(jit_s, 1)
    meta["mask_layout"] = STATE  # the packed_custom_mask layout used (updated by the check)
    meta["jit_modules"] = [s.name for s in specs.values()]
    meta["jit_failed"] = {(specs[k].name if k in specs else str(k)): e
                          for k, e in jit_err.items()}
    log(f"  JIT compile time: {jit_s:.1f} s ({len(jit_err)} failed)")
    if DRYRUN:
        for p in problems:
            log(f"  API PROBLEM: {p}")
        log(f"  dry run: {len(cs)} rows, {len(specs)} module specs, "
            f"{len(problems)} API problems, {len(jit_err)} spec failures")
        return 1 if (jit_err or problems) else 0

    ws = torch.empty(P.WORKSPACE_BYTES, dtype=torch.uint8, device="cuda")
    failed = {}
    if not NO_CHECK:
        log("\n== correctness vs float32 torch reference (rel = ||o-ref||/||ref||, max abs) ==")
        failed = run_checks(torch, fi, ws, cs)

    log(f"\n== timings (CUDA events, median/min of {P.REPS} after {P.WARMUP} warm-up; inputs "
        f"rotated, >= {P.COLD_BYTES / 2**30:g} GiB read between reuses; random page order; "
        f"host-ahead sleep {'on' if P.HOST_AHEAD else 'off'}) ==")
    rows = []
    for c in sorted(cs, key=may_be_unsupported):
        key = case_key(c)
        unsupported = may_be_unsupported(c)
        if key in failed:
            rows.append(dict(kind="timing", op=c["op"], backend=c["backend"],
                             config=config_str(c), unsupported=unsupported,
                             error=f"not timed: its check raised ({failed[key][-600:]})"))
            log(f"  {label(c)}: not timed (its check raised)")
            continue
        try:
            if c["op"] in ("decode-fp8", "decode-skew"):
                r = time_decode_fp8(torch, fi, ws, c)
            elif c["op"].startswith("cascade"):
                r = time_cascade(torch, fi, ws, c)
            else:
                r = time_prefill(torch, fi, ws, c)
            rows.append(r)
            log(f"  {r['op']:12s} {r['backend']:8s} {r['config']:44s} median {r['median_us']:10.1f}"
                f" us (min {r['min_us']:10.1f})  {r['metric']:8.3f} {r['unit']}"
                f"  [{r['resolved_backend']}, plan {r['plan_s']:.2f} s, {r['copies']} copies]")
        except Exception as e:  # noqa: BLE001
            rows.append(dict(kind="timing", op=c["op"], backend=c["backend"],
                             config=config_str(c), unsupported=unsupported,
                             error=f"{type(e).__name__}: {str(e)[-1000:]}"))
            log(f"  {label(c)}: {'UNSUPPORTED by FlashInfer' if unsupported else 'FAILED'} "
                f"{type(e).__name__}: {str(e)[-800:]}")
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    log(f"\nFlashInfer {meta['flashinfer']} extra rows on {meta.get('device')}: hq={HQ}, "
        f"page={PAGE}, NHD, random page order, cold inputs")
    add_fp16_ratios(rows)
    log(f"{'op':12s} {'backend':8s} {'config':44s} {'median_us':>10s} {'metric':>9s} unit")
    by = {}
    for r in rows:
        if "error" in r:
            log(f"{r['op']:12s} {r['backend']:8s} {r['config']:44s} {'FAILED':>10s}")
            continue
        log(f"{r['op']:12s} {r['backend']:8s} {r['config']:44s} {r['median_us']:10.1f} "
            f"{r['metric']:9.3f} {r['unit']}")
        by[(r["op"], r["backend"], r["config"])] = r
    for (op, be, cfg), r in by.items():  # the ratios the rows are for
        if op == "treemask":
            a = by.get(("append", be, cfg))
            if a:
                log(f"  treemask/causal time {be} {cfg}: {r['median_us'] / a['median_us']:.3f}")
        if op == "cascade":
            f = by.get(("cascade-flat", "fa2-tc", cfg))
            if f:
                log(f"  cascade speedup over flat decode {cfg}: "
                    f"{f['median_us'] / r['median_us']:.2f}x")
        if op == "decode-fp8" and "x_fp16" in r:
            log(f"  fp16-KV / {r['kv_dtype']}-KV decode time {be} {cfg}: {r['x_fp16']:.3f}")
    n_unsup = sum(1 for r in rows if r.get("unsupported") and "error" in r)
    n_fail = sum(1 for r in rows if "error" in r) - n_unsup
    n_bad = sum(1 for c in P.CHECKS if not c.get("ok")) + n_fail
    log(f"\n{len(rows) - n_fail - n_unsup} timed, {n_fail} failed, {n_unsup} unsupported by "
        f"FlashInfer; checks: {sum(1 for c in P.CHECKS if c.get('ok') and 'error' not in c)} ok, "
        f"{sum(1 for c in P.CHECKS if not c.get('ok'))} bad")
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "fi_extra.jsonl")
        with open(path, "w") as f:
            for r in [meta] + P.CHECKS + rows:
                f.write(json.dumps(r) + "\n")
        log(f"wrote {path}")
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
