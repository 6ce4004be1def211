#!/usr/bin/env python3
"""Turns the files of one GPU-host call into the side-by-side JSONL of ../shared/gpu/SIDE_BY_SIDE.md.

    bench/side_by_side.py --date 2026-12-01 --commit abc1234 --device "NVIDIA H200" \
        --fi fi_peer_decode.jsonl --fi fi_peer_prefill.jsonl \
        --attnd bench_decode.txt --attnd bench_prefill.txt > docs/bench-runs/<date>-h200-side-by-side.jsonl

Inputs: FlashInfer's fi_peer.jsonl and bench/fi_extra_peer.py's fi_extra.jsonl ("timing" rows;
pass both with --fi), and the output of decode_bench / prefill_bench ("JSON {...}" lines),
cascade_bench ("JSON {"bench":"cascade_decode",...}") and service_bench
("{"bench":"service",...}" lines) as scripts/gpu-host-bench.sh writes them. Service rows:
service-decode-b64-kv4096-hkv8-32layers-step (ASYNC; in-process for the in-process mode), its
-sync variant, and -decodebatch (the ASYNC step through client::DecodeBatch: UpdatePlan deltas,
plan_p50_us = the page-table update end to end). A "== <label>" line
names what follows; labels containing "(before" mark the tree before the change (impl
"attnd@<rev>"). attnd rows are the kernel the planner picks by default (decode: tensor cores for
a GQA group >= 4 at head_dim <= 128, else CUDA cores; prefill: paged, tile "auto"). Rows measured
twice (service rounds) are averaged; the single values go in "runs".

Feature rows (issue 15; phase `features` of scripts/gpu-host-bench.sh):
  treemask-<dt>-hd<D>-b<B>-q<qo>-kv<prefix>-hkv<Hkv>: tree-mask prefill (a qo-node draft tree on
      a prefix), TFLOP/s over the visible (query, key) pairs; FlashInfer "treemask" rows,
      prefill_bench rows with "mask":"tree". The causal prefill of the same shape is the usual
      append-<dt>-...-q<qo>-kv<prefix>-... row.
  cascade-<dt>-hd<D>-b<B>-prefix<P>-own<O>-hkv<Hkv>: cascade decode (a P-token prefix shared by
      the batch, O own tokens per request), and cascade-flat-<same>: the ordinary decode of the
      same batch (each request's table = prefix + own pages); FlashInfer "cascade" /
      "cascade-flat" rows, and both times of a cascade_bench row. Metric: TB/s of the batch's
      logical K+V bytes, 2*B*(P+O)*Hkv*D*bytes / time (the same numerator for both, so
      cascade / cascade-flat is the speedup).

Skewed-batch decode rows (issue 13's load balancing; phase `skew`):
  decode-skew-<dt>-hd<D>-b<B>-kv<short>-long<L>-hkv<Hkv>: B-1 requests of <short> tokens and one
      of L (the last); decode-<dt>-hd<D>-b<B>-kv<K>-hkv<Hkv>: the uniform batch of the same token
      count it is compared with. TB/s of the K+V bytes read, 2*tokens*Hkv*D*2. FlashInfer
      "decode-skew" rows of bench/fi_extra_peer.py (fa2-tc, fa2-cuda); decode_bench --skew lines
      ("bench":"decode_skew"): "balance": true -> impl "attnd", false (the schedule before
      balancing) -> "attnd-unbalanced".

FP8-KV decode rows (fp16 queries and output over an fp8 paged KV cache):
  decode-<e4m3|e5m2>-hd<D>-b<B>-kv<kv>-hkv<Hkv> (SIDE_BY_SIDE.md: the KV dtype in the dtype slot;
      fp16 queries); TB/s of the K+V bytes read, 2*B*kv*Hkv*D*itemsize (1 byte for fp8). FlashInfer
      "decode-fp8" rows of bench/fi_extra_peer.py (fa2-tc, fa2-cuda; its kv_dtype "f16" rows are
      FlashInfer's fp16-KV decode timed in the same process as its fp8 rows, named as the
      ordinary decode-fp16-... rows);
      decode_bench lines that carry "kv_dtype" ("e4m3" / "e5m2"), all of them: decode_bench times
      FP8 K/V only with the planner's kernel. attnd's fp16-KV decode lines carry no kv_dtype and
      keep their decode-<dt>-hd... names; an FP8 line's x_fp16 (the fp16 row's time over its
      own) is kept with it.
"""
import argparse
import collections
import json
import re
import sys


def fi_rows(path):
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("kind") != "timing" or r.get("metric") is None:
            continue
        dt = DTYPES.get(r["dtype"], r["dtype"])
        extra = {"median_us": r["median_us"], "reps": r.get("reps")}
        if r["op"] == "decode":
            name = f"decode-{dt}-hd{r['head_dim']}-b{r['B']}-kv{r['kv_len']}-hkv{r['hk']}"
        elif r["op"] == "decode-fp8":  # kv_dtype "e4m3" / "e5m2", or "f16" (the fp16-KV row)
            name = decode_kv_name(dt, r["kv_dtype"], r["head_dim"], r["B"], r["kv_len"], r["hk"])
            extra.update(kv_dtype=r["kv_dtype"], x_fp16=r.get("x_fp16"),
                         resolved_backend=r.get("resolved_backend"))
        elif r["op"] == "decode-skew":
            name = skew_name(dt, r["head_dim"], r["B"], r["kv_len"], r.get("long_kv_len", 0),
                             r["hk"])
            extra["tokens"] = r.get("tokens")
        elif r["op"] == "prefill":
            name = f"prefill-{dt}-hd{r['head_dim']}-causal-b{r['B']}-L{r['qo_len']}-hkv{r['hk']}"
        elif r["op"] == "treemask":  # kv_len counts the prefix and the tree's tokens
            prefix = r["kv_len"] - r["qo_len"]
            name = treemask_name(dt, r["head_dim"], r["B"], r["qo_len"], prefix, r["hk"])
        elif r["op"] in ("cascade", "cascade-flat"):
            name = cascade_name(r["op"], dt, r["head_dim"], r["B"], r["prefix_len"],
                                r["own_len"], r["hk"])
            extra["resolved_backend"] = r.get("resolved_backend")
        else:  # append: kv_len counts the prefix and the new tokens
            prefix = r["kv_len"] - r["qo_len"]
            name = f"append-{dt}-hd{r['head_dim']}-b{r['B']}-q{r['qo_len']}-kv{prefix}-hkv{r['hk']}"
        yield name, f"flashinfer-{r['backend']}", r["unit"], r["metric"], extra


DTYPES = {"float16": "fp16", "bfloat16": "bf16"}
# a KV cache's type in decode_kv_name (FlashInfer's kv_dtype "f16", decode_bench's "e4m3"/"e5m2")
KV_DTYPES = {"f16": "fp16", "fp16": "fp16", "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16",
             "e4m3": "e4m3", "float8_e4m3fn": "e4m3", "e5m2": "e5m2", "float8_e5m2": "e5m2"}
# prefill_bench's explicit tile variants (--wide): never the planner's default
EXPLICIT_TILES = ("default", "wide", "wide3", "wide64", "sm90")


def decode_kv_name(dt, kv_dtype, head_dim, batch, kv_len, hkv):
    """Decode over a KV cache of type kv_dtype (FP8 K/V, fp16 queries): SIDE_BY_SIDE.md's
    decode-<e4m3|e5m2>-hd..., the KV dtype in the dtype slot; a 16-bit KV row of the same table
    keeps its ordinary decode name."""
    kv = KV_DTYPES.get(kv_dtype, kv_dtype)
    return f"decode-{kv}-hd{head_dim}-b{batch}-kv{kv_len}-hkv{hkv}"


def skew_name(dt, head_dim, batch, kv_len, long_kv_len, hkv):
    """A skewed batch (batch - 1 requests of kv_len, one of long_kv_len), or (long_kv_len 0) the
    uniform batch it is compared with, named as an ordinary decode row."""
    if long_kv_len:
        return f"decode-skew-{dt}-hd{head_dim}-b{batch}-kv{kv_len}-long{long_kv_len}-hkv{hkv}"
    return f"decode-{dt}-hd{head_dim}-b{batch}-kv{kv_len}-hkv{hkv}"


def treemask_name(dt, head_dim, batch, qo_len, prefix, hkv):
    return f"treemask-{dt}-hd{head_dim}-b{batch}-q{qo_len}-kv{prefix}-hkv{hkv}"


def cascade_name(op, dt, head_dim, batch, prefix, own, hkv):
    """op: "cascade" or "cascade-flat" (the flat decode of the same batch)."""
    return f"{op}-{dt}-hd{head_dim}-b{batch}-prefix{prefix}-own{own}-hkv{hkv}"


def cascade_logical_bytes(batch, prefix, own, hkv, head_dim, itemsize=2):
    """K+V bytes of every request's whole sequence (what a flat decode reads)."""
    return 2 * batch * (prefix + own) * hkv * head_dim * itemsize


def default_decode_kernel(hq, hkv, head_dim):
    return "tensor" if hq // hkv >= 4 and head_dim <= 128 else "cuda-core"


def attnd_rows(path):
    impl = "attnd"
    for line in open(path):
        if line.startswith("== "):
            m = re.search(r"before[ ,(]+([0-9a-f]{7})", line)
            impl = f"attnd@{m.group(1)}" if m else "attnd"
            continue
        text = line[5:] if line.startswith("JSON ") else line
        if not text.startswith("{"):
            continue
        try:
            r = json.loads(text)
        except json.JSONDecodeError:
            continue
        b = r.get("bench")
        if b == "decode":
            suffix = "-rope" if r.get("rope") else ""
            if r.get("kv_dtype"):  # FP8 K/V: decode_bench times only the planner's kernel
                name = decode_kv_name(r["dtype"], r["kv_dtype"], r["head_dim"], r["batch"],
                                      r["kv_len"], r["num_kv_heads"]) + suffix
                yield name, impl, "TB/s", r["tbps"], {"kernel": r["kernel"], "ms": r["ms"],
                                                      "tbps_clean_l2": r.get("tbps_clean"),
                                                      "kv_dtype": r["kv_dtype"],
                                                      "x_fp16": r.get("x_fp16")}
                continue
            if r["kernel"] != default_decode_kernel(r["num_qo_heads"], r["num_kv_heads"], r["head_dim"]):
                continue
            name = (f"decode-{r['dtype']}-hd{r['head_dim']}-b{r['batch']}-kv{r['kv_len']}"
                    f"-hkv{r['num_kv_heads']}" + suffix)
            yield name, impl, "TB/s", r["tbps"], {"kernel": r["kernel"], "ms": r["ms"],
                                                  "tbps_clean_l2": r.get("tbps_clean")}
        elif b == "decode_skew":
            # --skew: the planner's default (balance on) is "attnd"; balance off, the schedule
            # before load balancing, is "attnd-unbalanced". Uniform rows only with balance on.
            # "balanced" (whether the plan did cut the batch) is optional: a line without it
            # still names its row.
            name = skew_name(r["dtype"], r["head_dim"], r["batch"], r["kv_len"],
                             r["long_kv_len"], r["num_kv_heads"])
            who = impl if r["balance"] else impl + "-unbalanced"
            yield name, who, "TB/s", r["tbps"], {"kernel": r["kernel"], "ms": r["ms"],
                                                 "chunks": r["chunks"],
                                                 "balanced": r.get("balanced"),
                                                 "tbps_clean_l2": r.get("tbps_clean"),
                                                 "tokens": r.get("tokens")}
        elif b == "prefill":
            # --mask rows (their JSON carries "mask"): any tile but --wide's explicit variants
            masked = r.get("mask") is not None
            tile_ok = r["tile"] in ("auto", "rope") or (masked and r["tile"] not in EXPLICIT_TILES)
            if r["kv"] != "paged" or not tile_ok or r["workload"].startswith("["):
                continue
            suffix = "-rope" if r.get("rope") else ""
            if r.get("mask") == "tree":
                # "tree 64 onto 4096 B16": the prefix from the name, else kv_len (prefill_bench's
                # kv_len of an append row is its prefix)
                m = re.search(r"(\d+) onto (\d+)", r["workload"])
                prefix = int(m.group(2)) if m else r["kv_len"]
                name = treemask_name(r["dtype"], r["head_dim"], r["batch"], r["qo_len"], prefix,
                                     r["num_kv_heads"]) + suffix
            elif r["workload"].startswith("append"):
                # The prefix from the name ("append 64 onto 4096 B16", kv_len 4160); the older
                # rows' kv_len is the number in their name.
                m = re.search(r"(\d+) onto (\d+)", r["workload"])
                prefix = int(m.group(2)) if m else r["kv_len"]
                name = (f"append-{r['dtype']}-hd{r['head_dim']}-b{r['batch']}-q{r['qo_len']}"
                        f"-kv{prefix}-hkv{r['num_kv_heads']}{suffix}")
            else:
                name = (f"prefill-{r['dtype']}-hd{r['head_dim']}-causal-b{r['batch']}"
                        f"-L{r['qo_len']}-hkv{r['num_kv_heads']}{suffix}")
            yield name, impl, "TFLOP/s", r["tflops"], {"median_us": r["median_us"],
                                                       "reps": r.get("reps")}
        elif b == "cascade_decode":
            dt = DTYPES.get(r["dtype"], r["dtype"])
            logical = cascade_logical_bytes(r["batch"], r["prefix_len"], r["own_len"],
                                            r["num_kv_heads"], r["head_dim"])
            for op, ms in (("cascade", r["cascade_ms"]), ("cascade-flat", r["flat_ms"])):
                name = cascade_name(op, dt, r["head_dim"], r["batch"], r["prefix_len"],
                                    r["own_len"], r["num_kv_heads"])
                yield name, impl, "TB/s", logical / (ms * 1e-3) / 1e12, {
                    "median_us": round(ms * 1e3, 2), "speedup": r.get("speedup"),
                    "max_abs_diff": r.get("max_abs_diff")}
        elif b == "service":
            base = "service-decode-b64-kv4096-hkv8-32layers-step"
            mode = r["mode"]
            if mode.startswith("in-process"):
                name, who = base, ("in-process" if impl == "attnd" else f"in-process{impl[5:]}")
            elif "DecodeBatch" in mode:  # one plan across steps, UpdatePlan deltas
                name, who = base + "-decodebatch", impl
            elif "ASYNC" in mode:
                name, who = base, impl
            else:
                name, who = base + "-sync", impl
            yield name, who, "us", r["step_p50_us"], {"p99_us": r["step_p99_us"],
                                                      "layer_p50_us": r["layer_p50_us"],
                                                      "plan_p50_us": r["plan_p50_us"],
                                                      "mode": mode}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--date", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--device", default="NVIDIA H200")
    ap.add_argument("--fi", action="append", default=[])
    ap.add_argument("--attnd", action="append", default=[])
    args = ap.parse_args()
    rows = collections.OrderedDict()
    sources = [(p, fi_rows) for p in args.fi] + [(p, attnd_rows) for p in args.attnd]
    for path, reader in sources:
        for name, impl, unit, value, extra in reader(path):
            rows.setdefault((name, impl), []).append((unit, value, extra))
    for (name, impl), runs in rows.items():
        unit = runs[0][0]
        value = sum(v for _, v, _ in runs) / len(runs)
        out = {"workload": name, "impl": impl, "metric": unit, "value": round(value, 4),
               "device": args.device, "commit": args.commit, "date": args.date}
        out.update({k: v for k, v in runs[0][2].items() if v is not None})
        if len(runs) > 1:
            out["runs"] = [round(v, 4) for _, v, _ in runs]
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
