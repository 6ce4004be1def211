#!/usr/bin/env python3
"""A Hugging Face transformers Llama generating through attnd, checked against its own SDPA.

A LlamaForCausalLM with random weights from a fixed seed (nothing is downloaded) prefills a batch
of prompts of different lengths and decodes greedily, twice:

  * attnd: attention registered as ``attn_implementation="attnd"`` (attnd_hf.py), the KV cache in
    the pages of an attnd pool, prefill and decode run by the daemon (zero-copy CUDA IPC where
    the daemon is a CUDA one on this host);
  * SDPA: the same model object with its own ``attn_implementation="sdpa"`` and transformers'
    DynamicCache: once per prompt alone (the reference of the comparison) and once as a
    left-padded batch (the throughput peer).

Tokens and logits are compared by the tolerance rule of greedy_check.py; tokens per second of both
are reported. Exit code 0 when the comparison passes.

    build/bin/attnd --listen=unix:///tmp/attnd.sock --backend=cuda &
    python examples/hf_llama/generate.py --target unix:///tmp/attnd.sock

Needs torch and transformers (>= 4.48; the attention interface) besides the attnd package.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import greedy_check  # noqa: E402
from paged_batch import PagedBatch  # noqa: E402


@dataclass
class ModelSpec:
    """The random Llama: 4 layers at Llama-3-8B's attention geometry (hidden 4096, 32 query / 8
    KV heads, head_dim 128), a smaller MLP (8192), Llama-2's vocabulary size."""

    layers: int = 4
    hidden: int = 4096
    intermediate: int = 8192
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 32000
    max_positions: int = 4096
    seed: int = 0

    def describe(self) -> str:
        return (f"{self.layers} layers, hidden {self.hidden}, {self.heads} q / {self.kv_heads} KV "
                f"heads, head_dim {self.head_dim}, intermediate {self.intermediate}, vocab "
                f"{self.vocab}, random weights (seed {self.seed})")


@dataclass
class Decoded:
    """One greedy decoding: tokens [B, S], the logits each was taken from [B, S, V] (float32),
    seconds of the prefill and of the whole run (prefill + S-1 decode steps)."""

    tokens: np.ndarray
    logits: np.ndarray
    prefill_s: float
    total_s: float

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def steps(self) -> int:
        return int(self.tokens.shape[1])

    def rates(self) -> str:
        decode_s = self.total_s - self.prefill_s
        overall = self.batch * self.steps / self.total_s if self.total_s > 0 else float("nan")
        decode = (self.batch * (self.steps - 1) / decode_s
                  if self.steps > 1 and decode_s > 0 else float("nan"))
        return (f"prefill {self.prefill_s * 1e3:8.1f} ms, decode {decode:8.1f} tok/s "
                f"({decode_s / max(1, self.steps - 1) * 1e3:6.2f} ms/step), overall "
                f"{overall:8.1f} tok/s")


@dataclass
class Report:
    lines: List[str] = field(default_factory=list)
    verdicts: List[greedy_check.Verdict] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    attnd: Optional[Decoded] = None
    sdpa_batched: Optional[Decoded] = None

    @property
    def ok(self) -> bool:
        return not self.failures and all(v.ok for v in self.verdicts)

    def text(self) -> str:
        out = list(self.lines)
        out += ["FAIL: " + f for f in self.failures]
        out.append("RESULT: " + ("OK" if self.ok else "FAIL"))
        return "\n".join(out)


# --- the model -------------------------------------------------------------------------------

def build_model(spec: ModelSpec, dtype, device):
    """LlamaForCausalLM of ``spec`` with random weights (torch.manual_seed(spec.seed)), in
    ``dtype`` on ``device``, eval mode, attention "sdpa"."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, use_cache=False, attn_implementation="sdpa")
    if int(getattr(config, "head_dim", spec.hidden // spec.heads)) != spec.head_dim:
        raise ValueError(f"this transformers derives head_dim from hidden/heads: pick hidden = "
                         f"heads * head_dim ({spec.heads * spec.head_dim})")
    torch.manual_seed(spec.seed)
    with torch.device(device):  # weights created (and initialized) on the device
        model = LlamaForCausalLM(config)
    return model.to(dtype=dtype).eval()


def make_prompts(lengths: Sequence[int], vocab: int, seed: int) -> List[List[int]]:
    """Random token ids (numpy's generator, fixed seed), one prompt per length."""
    rng = np.random.default_rng(seed + 1)
    return [[int(t) for t in rng.integers(0, vocab, size=int(n))] for n in lengths]


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kw(model) -> str:
    """The forward argument of transformers' KV cache: "cache" (5.2x+) or "past_key_values"."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


# --- decoding with transformers' own attention and cache ----------------------------------------

def hf_generate(model, prompts: Sequence[Sequence[int]], steps: int, device) -> Decoded:
    """Greedy decoding with the model's current attention and transformers' DynamicCache; a
    batch of several lengths is left-padded (attention_mask, position_ids from it)."""
    import torch

    kw = _cache_kw(model)
    lens = [len(p) for p in prompts]
    batch, width = len(prompts), max(lens)
    padded = len(set(lens)) > 1
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    lengths = torch.tensor(lens, device=device)
    toks, logits = [], []
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        if padded:
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        else:
            out = model(input_ids=ids, use_cache=True)
        lg = out.logits[:, -1].float()
        tok = lg.argmax(-1)
        toks.append(tok)
        logits.append(lg)
        _sync(device)
        t1 = time.perf_counter()
        for step in range(1, steps):
            args = {kw: _out_cache(out), "use_cache": True}
            if padded:
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
                args.update(attention_mask=mask, position_ids=(lengths + step - 1)[:, None])
            out = model(input_ids=tok[:, None], **args)
            lg = out.logits[:, -1].float()
            tok = lg.argmax(-1)
            toks.append(tok)
            logits.append(lg)
        _sync(device)
        t2 = time.perf_counter()
    return Decoded(tokens=torch.stack(toks, 1).cpu().numpy(),
                   logits=torch.stack(logits, 1).cpu().numpy(), prefill_s=t1 - t0, total_s=t2 - t0)


def teacher_forced(model, prompt: Sequence[int], generated: Sequence[int], device) -> np.ndarray:
    """The logits [S, V] the model (current attention, no cache) gives for each generated token
    when it sees the prompt and the tokens generated before it: one causal forward."""
    import torch

    seq = list(prompt) + [int(t) for t in generated[:-1]]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([seq], device=device), use_cache=False)
        lg = out.logits[0, len(prompt) - 1:].float()
    return lg.cpu().numpy()


# --- decoding through attnd -----------------------------------------------------------------

def attnd_generate(model, session, prompts: Sequence[Sequence[int]], steps: int, device, *,
                   page_size: int = 16, kv_dtype: str = "float16") -> Decoded:
    """Greedy decoding with attention through attnd (the model set to "attnd"): prefill of the
    packed prompts, then ``steps - 1`` decode steps of one token per prompt."""
    import torch
    import attnd_hf

    lens = [len(p) for p in prompts]
    pages = PagedBatch(len(prompts), page_size).pages_for_run(lens, steps)
    kv = attnd_hf.AttndKV(session, model.config, len(prompts), max_pages=pages,
                          page_size=page_size, kv_dtype=kv_dtype)
    toks, logits = [], []
    try:
        with torch.inference_mode():
            _sync(device)
            t0 = time.perf_counter()
            layout = kv.step(lens, "prefill")
            ids = torch.tensor([[t for p in prompts for t in p]], device=device)
            pos = torch.tensor([layout.positions], device=device)
            with kv.forward():
                out = model(input_ids=ids, position_ids=pos, use_cache=False)
            lg = out.logits[0, layout.last_rows].float()
            tok = lg.argmax(-1)
            toks.append(tok)
            logits.append(lg)
            _sync(device)
            t1 = time.perf_counter()
            for _ in range(1, steps):
                layout = kv.step([1] * len(prompts), "decode")
                pos = torch.tensor([layout.positions], device=device)
                with kv.forward():
                    out = model(input_ids=tok[None], position_ids=pos, use_cache=False)
                lg = out.logits[0].float()
                tok = lg.argmax(-1)
                toks.append(tok)
                logits.append(lg)
            _sync(device)
            t2 = time.perf_counter()
    finally:
        kv.close()
    return Decoded(tokens=torch.stack(toks, 1).cpu().numpy(),
                   logits=torch.stack(logits, 1).cpu().numpy(), prefill_s=t1 - t0, total_s=t2 - t0)


# --- the whole comparison -------------------------------------------------------------------

def run(target: str, *, spec: Optional[ModelSpec] = None, prompt_lengths=(17, 100, 333),
        steps: int = 64, dtype: Optional[str] = None, device: Optional[str] = None,
        page_size: int = 16, warmup: bool = True, log: Callable[[str], None] = print) -> Report:
    """Builds the model, decodes through SDPA and through attnd, compares; returns the report
    (``report.ok``, ``report.text()``); ``log`` gets each line as it comes."""
    import torch
    import transformers

    import attnd
    import attnd_hf

    spec = spec or ModelSpec()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("float16" if torch.device(device).type == "cuda" else "float32")
    torch_dtype = getattr(torch, dtype)
    rep = Report()

    def say(line: str) -> None:
        rep.lines.append(line)
        log(line)

    how_registered = attnd_hf.register()
    t = time.perf_counter()
    model = build_model(spec, torch_dtype, device)
    prompts = make_prompts(prompt_lengths, spec.vocab, spec.seed)
    on_cuda = torch.device(device).type == "cuda"
    say(f"transformers {transformers.__version__}, torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if on_cuda else ""))
    say(f"model: LlamaForCausalLM, {spec.describe()}, {dtype} (built in "
        f"{time.perf_counter() - t:.1f} s)")
    say(f"prompts: {', '.join(str(n) for n in prompt_lengths)} tokens; {steps} greedy tokens each; "
        f"attnd pages of {page_size} tokens")

    with attnd.Client(target, timeout=120) as client, client.session("hf-llama") as sess:
        info = client.server_info()
        zero_copy = bool(info.cuda_ipc) and on_cuda
        say(f"attnd: backend {info.backend} ({info.device}), zero-copy CUDA IPC {zero_copy}")

        def with_attnd(n_steps: int):
            """(Decoded, how the model was switched to attnd)."""
            how = attnd_hf.select_attention(model, attnd_hf.ATTN_NAME)
            try:
                return attnd_generate(model, sess, prompts, n_steps, device, page_size=page_size,
                                      kv_dtype=dtype), how
            finally:
                attnd_hf.select_attention(model, "sdpa")

        if warmup:  # kernels, cuBLAS handles, IPC registrations: not in the timings
            hf_generate(model, prompts, 2, device)
            with_attnd(2)
        attnd_hf.select_attention(model, "sdpa")
        rep.sdpa_batched = batched = hf_generate(model, prompts, steps, device)
        single = [hf_generate(model, [p], steps, device) for p in prompts]
        tf_ref = [teacher_forced(model, p, single[b].tokens[0], device)
                  for b, p in enumerate(prompts)]
        attnd_hf.select_attention(model, "eager")  # transformers' other attention, for scale
        tf_eager = [teacher_forced(model, p, single[b].tokens[0], device)
                    for b, p in enumerate(prompts)]
        attnd_hf.select_attention(model, "sdpa")
        rep.attnd, how_selected = with_attnd(steps)
        got = rep.attnd
        shared = len(getattr(sess, "buffers", ()))
        if zero_copy:
            say(f"zero copy: {shared} CUDA allocations of this process registered with attnd "
                "(q, k, v and o travel as buffer slices)")
            if not shared:
                rep.failures.append("the daemon takes CUDA IPC but no buffer was registered: "
                                    "the tensors went through the host")
        say(f"attention: attn_implementation={attnd_hf.ATTN_NAME!r} registered via "
            f"{how_registered}, selected via {how_selected}; every forward called attnd once per "
            f"layer ({spec.layers} layers, checked at each of the {steps} steps)")
        tf_attnd = [teacher_forced(model, p, got.tokens[b], device) for b, p in enumerate(prompts)]

    self_noise = max(greedy_check.noise_floor(single[b].logits[0], tf_ref[b])
                     for b in range(len(prompts)))
    eager_noise = max(greedy_check.noise_floor(tf_eager[b], tf_ref[b]) for b in range(len(prompts)))
    noise = max(self_noise, eager_noise)
    tol = greedy_check.tolerance(dtype, self_noise, eager_noise)
    say(f"tolerance: on the reference's tokens SDPA differs from itself (incremental decode vs "
        f"one causal forward) by {self_noise:.3g}, transformers' eager attention from SDPA by "
        f"{eager_noise:.3g}; tol = max({greedy_check.ABS_TOL[dtype]}, "
        f"{greedy_check.NOISE_FACTOR:g} x {self_noise:.3g}, {greedy_check.IMPL_FACTOR:g} x "
        f"{eager_noise:.3g}) = {tol:.3g} on the logits")
    if noise > greedy_check.MAX_NOISE[dtype]:
        rep.failures.append(f"the SDPA reference disagrees with itself by {noise:.3g} > "
                            f"{greedy_check.MAX_NOISE[dtype]}: no comparison can be trusted")
    say("attnd against SDPA, one prompt at a time (the rule: examples/hf_llama/README.md):")
    for b, p in enumerate(prompts):
        v = greedy_check.judge_prompt(b, len(p), got.tokens[b], got.logits[b], single[b].tokens[0],
                                      single[b].logits[0], tf_attnd[b], tol)
        rep.verdicts.append(v)
        say("  " + v.report().replace("\n", "\n  "))
    say("attnd against SDPA on the left-padded batch (information, not judged):")
    for b, p in enumerate(prompts):
        v = greedy_check.judge_prompt(b, len(p), got.tokens[b], got.logits[b], batched.tokens[b],
                                      batched.logits[b], None, tol)
        say(f"  prompt {b}: {v.equal_prefix}/{v.steps} tokens equal, max |dlogit| same prefix "
            f"{v.shared_max_diff:.3g}" + ("" if v.ok else f" ({v.failures[0]})"))
    seq_s = sum(d.total_s for d in single)
    seq_rate = len(prompts) * steps / seq_s if seq_s > 0 else float("nan")
    say(f"throughput, batch of {len(prompts)}, prefill + {steps - 1} decode steps:")
    say(f"  attnd          {got.rates()}")
    say(f"  SDPA batched   {batched.rates()}")
    say(f"  SDPA per prompt one after another: overall {seq_rate:8.1f} tok/s")
    for b in range(len(prompts)):
        head = " ".join(str(int(x)) for x in got.tokens[b][:16])
        say(f"  attnd tokens of prompt {b}: {head} ...")
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=os.environ.get("ATTND_TARGET", "unix:///tmp/attnd.sock"))
    ap.add_argument("--prompt-lengths", default="17,100,333",
                    help="comma-separated prompt lengths in tokens (default 17,100,333)")
    ap.add_argument("--steps", type=int, default=64, help="greedy tokens per prompt (default 64)")
    ap.add_argument("--dtype", choices=sorted(greedy_check.ABS_TOL), default=None,
                    help="model and KV dtype (default float16 on CUDA, float32 on CPU)")
    ap.add_argument("--device", default=None, help="torch device (default cuda if available)")
    ap.add_argument("--page-size", type=int, default=16)
    d = ModelSpec()
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab",
                 "seed"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    args = ap.parse_args(argv)
    spec = ModelSpec(layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                     heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                     vocab=args.vocab, seed=args.seed)
    lengths = [int(x) for x in args.prompt_lengths.split(",") if x.strip()]
    rep = run(args.target, spec=spec, prompt_lengths=lengths, steps=args.steps, dtype=args.dtype,
              device=args.device, page_size=args.page_size)
    for f in rep.failures:
        print("FAIL: " + f)
    print("RESULT: " + ("OK" if rep.ok else "FAIL"))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
