#!/usr/bin/env python3
"""Peer numbers: torch.nn.functional.scaled_dot_product_attention (FLASH, cuDNN, EFFICIENT
backends) on the shapes of bench/decode_bench and bench/prefill_bench, with a contiguous
(unpaged) cache, timed like bench_util.h: CUDA events around one call, L2 flushed before every
timed call, 5 warm-ups, median of 30.

  decode  fp16/bf16, 32 q heads, 32 or 8 kv heads (GQA), D=128: B=1/kv=32768, B=64/kv=4096,
          B=256/kv=2048; TB/s of K+V bytes read once (2*B*kv*Hkv*D*2).
  prefill bf16 causal, 32 heads, D=128: B=1 at 4k/8k/16k, B=16 at 1k; TFLOP/s counting half the
          square (4*B*H*L^2*D/2).
  append  128 queries onto kv 4096 (bottom-right causal), B=16, bf16, Hkv 32 or 8; TFLOP/s of
          the visible pairs.

Usage: python3 bench/torch_sdpa_peer.py [--quick] [--json OUT.jsonl]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

BACKENDS = [("FLASH", SDPBackend.FLASH_ATTENTION), ("cuDNN", SDPBackend.CUDNN_ATTENTION),
            ("EFFICIENT", SDPBackend.EFFICIENT_ATTENTION)]

_flush = None


def flush_l2():
    global _flush
    if _flush is None:
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        _flush = torch.empty(max(2 * l2, 64 << 20), dtype=torch.uint8, device="cuda")
    _flush.zero_()


def time_ms(fn, warmup=5, reps=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush_l2()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def run_backend(backend, q, k, v, **kw):
    gqa = q.shape[1] != k.shape[1]

    def call():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, **kw)

    try:
        call()
        torch.cuda.synchronize()
    except Exception as e:  # backend does not support this shape/dtype/mask
        return None, str(e).splitlines()[0][:60]
    return time_ms(call), ""


def rand(*shape, dtype):
    return torch.randn(*shape, dtype=dtype, device="cuda")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.cuda.get_device_properties(0)
    print(f"device: {dev.name} ({dev.multi_processor_count} SMs), torch {torch.__version__}")
    rows = []
    out = open(args.json, "w") if args.json else None

    def emit(rec):
        rows.append(rec)
        line = json.dumps(rec)
        print("JSON " + line, flush=True)
        if out:
            out.write(line + "\n")

    d, hq = 128, 32
    # ---- decode ----
    for dtype in ([torch.float16] if args.quick else [torch.float16, torch.bfloat16]):
        for b, kvl in [(1, 32768), (64, 4096), (256, 2048)]:
            for hkv in (32, 8):
                q = rand(b, hq, 1, d, dtype=dtype)
                k = rand(b, hkv, kvl, d, dtype=dtype)
                v = rand(b, hkv, kvl, d, dtype=dtype)
                nbytes = 2 * b * kvl * hkv * d * 2
                for name, be in BACKENDS:
                    ms, err = run_backend(be, q, k, v)
                    emit({"bench": "decode", "backend": name, "dtype": str(dtype)[6:],
                          "batch": b, "kv_len": kvl, "num_qo_heads": hq, "num_kv_heads": hkv,
                          "ms": ms, "tbps": nbytes / (ms * 1e-3) / 1e12 if ms else None,
                          "error": err})
                del q, k, v
                torch.cuda.empty_cache()
    # ---- prefill (causal, square) ----
    dtype = torch.bfloat16
    for b, l in [(1, 4096), (1, 8192), (1, 16384), (16, 1024)]:
        if args.quick and l > 8192:
            continue
        q = rand(b, hq, l, d, dtype=dtype)
        k = rand(b, hq, l, d, dtype=dtype)
        v = rand(b, hq, l, d, dtype=dtype)
        flops = 4 * b * hq * l * l * d / 2
        for name, be in BACKENDS:
            ms, err = run_backend(be, q, k, v, is_causal=True)
            emit({"bench": "prefill", "backend": name, "dtype": "bfloat16", "batch": b,
                  "qo_len": l, "kv_len": l, "num_qo_heads": hq, "num_kv_heads": hq, "causal": True,
                  "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12 if ms else None, "error": err})
        del q, k, v
    # ---- append: 128 queries at the end of 4096 keys (bottom-right causal) ----
    b, lq, lk = 16, 128, 4096
    mask = torch.ones(lq, lk, dtype=torch.bool, device="cuda").tril(diagonal=lk - lq)
    visible = int(mask.sum().item())
    for hkv in (32, 8):
        q = rand(b, hq, lq, d, dtype=dtype)
        k = rand(b, hkv, lk, d, dtype=dtype)
        v = rand(b, hkv, lk, d, dtype=dtype)
        flops = 4 * b * hq * visible * d
        for name, be in BACKENDS:
            ms, err = run_backend(be, q, k, v, attn_mask=causal_lower_right(lq, lk))
            if ms is None:  # backends without CausalBias support: an explicit boolean mask
                ms, err = run_backend(be, q, k, v, attn_mask=mask)
            emit({"bench": "append", "backend": name, "dtype": "bfloat16", "batch": b,
                  "qo_len": lq, "kv_len": lk, "num_qo_heads": hq, "num_kv_heads": hkv,
                  "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12 if ms else None, "error": err})
        del q, k, v

    print()
    print(f"{'bench':8} {'backend':10} {'dtype':9} {'B':>4} {'qo':>6} {'kv':>6} {'Hkv':>4} "
          f"{'ms':>9} {'rate':>14}")
    for r in rows:
        rate = ("n/a: " + r["error"]) if r["ms"] is None else (
            f"{r['tbps']:.2f} TB/s" if "tbps" in r else f"{r['tflops']:.0f} TFLOP/s")
        ms = "-" if r["ms"] is None else f"{r['ms']:.4f}"
        print(f"{r['bench']:8} {r['backend']:10} {r['dtype']:9} {r['batch']:>4} "
              f"{r.get('qo_len', 1):>6} {r['kv_len']:>6} {r['num_kv_heads']:>4} {ms:>9} {rate}")
    if out:
        out.close()


if __name__ == "__main__":
    main()
