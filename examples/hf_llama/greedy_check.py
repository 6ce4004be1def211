"""The tolerance-aware comparison of two greedy decodings of the same model (numpy only).

Greedy decoding takes the argmax of the logits at every step. Two correct implementations of the
same model (here: attention through attnd, and the model's own SDPA attention) compute logits that
differ by rounding, so wherever the reference's best two tokens are closer than that rounding the
argmax may flip, and from there on the two continue from different prefixes. A random-weight
model has many such near ties. The rule, per prompt, with tolerance ``tol`` on the logits:

A. Free run (both decode from their own tokens). Let ``d`` be the first step whose tokens differ
   (none: all equal). At every step ``t <= d`` both have seen the same tokens, so their logits
   must agree: ``max |attnd[t] - ref[t]| <= tol``. At ``d`` the flip must be a near tie of the
   reference: ``ref[d][ref_token] - ref[d][attnd_token] <= 2 * tol`` (which A's bound implies:
   each side's token may lose at most ``tol`` on the other side). Steps after ``d`` are not
   compared (different prefixes).
B. Teacher-forced (the reference model run once over the prompt and attnd's own tokens, so it
   sees attnd's prefixes at every step): at every step ``max |attnd[t] - tf[t]| <= tol``, and
   attnd's token is within ``2 * tol`` of the reference's best: ``max(tf[t]) - tf[t][token] <=
   2 * tol``. This covers the steps after a near-tie flip.
C. attnd's tokens are the argmax of the logits it reported.

``tol`` is ``max(ABS_TOL[dtype], NOISE_FACTOR * self_noise, IMPL_FACTOR * impl_noise)``, from the
spread of transformers' own computations of the same logits on the reference's tokens:
``self_noise``, SDPA against itself (its free run against its teacher-forced pass: incremental
decode against one causal forward: the rounding of the rest of the model), and ``impl_noise``,
transformers' eager attention against SDPA (both teacher-forced: another attention kernel's
rounding, which attnd's should not exceed by much).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

__all__ = ["ABS_TOL", "NOISE_FACTOR", "IMPL_FACTOR", "MAX_NOISE", "tolerance", "noise_floor",
           "first_divergence", "Verdict", "judge_prompt"]

# Logit tolerance floor by model dtype. Random-weight logits have a standard deviation of about
# initializer_range * sqrt(hidden_size) (~1.3 for hidden 4096) and reach ~5, where one fp16 step is
# 0.004. Measured at the test's shape in float16 (CPU backend, CPU torch, 2 prompts x 24 tokens):
# SDPA against itself 0.012, eager against SDPA 0.022, attnd against SDPA 0.013; bf16 has 3
# bits fewer (8x coarser).
ABS_TOL = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.3}
NOISE_FACTOR = 3.0
IMPL_FACTOR = 1.5
# A reference that disagrees with itself by more than this cannot judge anything.
MAX_NOISE = {"float32": 0.05, "float16": 0.5, "bfloat16": 2.0}


def tolerance(dtype: str, self_noise: float, impl_noise: float = 0.0) -> float:
    """The logit tolerance of a comparison in model dtype ``dtype`` given the reference's spread
    (module docstring)."""
    if dtype not in ABS_TOL:
        raise ValueError(f"no tolerance for dtype {dtype!r} (one of {sorted(ABS_TOL)})")
    return max(ABS_TOL[dtype], NOISE_FACTOR * float(self_noise), IMPL_FACTOR * float(impl_noise))


def _as_logits(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [steps, vocab], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} has a non-finite logit at step {bad[0]}, token {bad[1]}")
    return arr


def noise_floor(ref_logits, tf_ref_logits) -> float:
    """Largest |difference| between two reference computations of the same logits."""
    a, b = _as_logits(ref_logits, "ref_logits"), _as_logits(tf_ref_logits, "tf_ref_logits")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def first_divergence(tokens_a, tokens_b) -> Optional[int]:
    """First step where the two token sequences differ (None: equal)."""
    a, b = np.asarray(tokens_a), np.asarray(tokens_b)
    if a.shape != b.shape:
        raise ValueError(f"token sequences differ in length: {a.shape} vs {b.shape}")
    diff = np.nonzero(a != b)[0]
    return int(diff[0]) if diff.size else None


def _top2(row: np.ndarray):
    """((token, logit), (token, logit)) of the best two entries."""
    idx = np.argsort(-row, kind="stable")[:2]
    return (int(idx[0]), float(row[idx[0]])), (int(idx[1]), float(row[idx[1]]))


@dataclass
class Verdict:
    """One prompt's comparison; ``failures`` empty means it passes."""

    prompt: int
    prompt_len: int
    steps: int
    tol: float
    equal_prefix: int
    first_diff: Optional[int]
    flip_gap: float = 0.0           # ref[d][ref_token] - ref[d][attnd_token] at the first diff
    shared_max_diff: float = 0.0    # max |attnd - ref| over steps 0..d
    shared_max_step: int = 0
    tf_max_diff: float = 0.0        # max |attnd - teacher-forced ref| over every step
    tf_max_step: int = 0
    tf_worst_gap: float = 0.0       # max over steps of max(tf) - tf[attnd token]
    tf_worst_step: int = 0
    notes: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        head = f"prompt {self.prompt} ({self.prompt_len} tokens): "
        if self.first_diff is None:
            head += f"{self.steps}/{self.steps} tokens equal"
        else:
            head += (f"first {self.equal_prefix}/{self.steps} tokens equal, step {self.first_diff} "
                     f"flips on a reference gap of {self.flip_gap:.4f} (near tie if <= 2*tol = "
                     f"{2 * self.tol:.4f})")
        head += (f"; max |dlogit| same prefix {self.shared_max_diff:.3g} (step "
                 f"{self.shared_max_step}), teacher-forced {self.tf_max_diff:.3g} (step "
                 f"{self.tf_max_step}); tol {self.tol:.3g}; {'OK' if self.ok else 'FAIL'}")
        return head

    def report(self) -> str:
        lines = [self.summary()]
        lines += ["    " + n for n in self.notes]
        lines += ["    FAIL: " + f for f in self.failures]
        return "\n".join(lines)


def judge_prompt(prompt: int, prompt_len: int, attnd_tokens, attnd_logits, ref_tokens, ref_logits,
                 tf_logits, tol: float) -> Verdict:
    """Applies rules A, B and C (module docstring) to one prompt.

    attnd_tokens, ref_tokens: [steps] generated tokens; attnd_logits, ref_logits: [steps, vocab]
    the logits each step's token was picked from; tf_logits: [steps, vocab] the reference's
    logits over attnd's own prefixes (None: skip rule B)."""
    a_tok = np.asarray(attnd_tokens, dtype=np.int64)
    r_tok = np.asarray(ref_tokens, dtype=np.int64)
    a = _as_logits(attnd_logits, "attnd_logits")
    r = _as_logits(ref_logits, "ref_logits")
    steps = int(a_tok.shape[0])
    if a.shape[0] != steps or r.shape[0] != steps or r_tok.shape[0] != steps or a.shape != r.shape:
        raise ValueError(f"shapes: attnd tokens {a_tok.shape} logits {a.shape}, reference tokens "
                         f"{r_tok.shape} logits {r.shape}")
    d = first_divergence(a_tok, r_tok)
    v = Verdict(prompt=prompt, prompt_len=prompt_len, steps=steps, tol=float(tol),
                equal_prefix=steps if d is None else d, first_diff=d)

    # C: tokens are the argmax of the reported logits (ties allowed)
    for t in range(steps):
        if a[t, a_tok[t]] < a[t].max():
            v.failures.append(f"step {t}: attnd token {a_tok[t]} (logit {a[t, a_tok[t]]:.4f}) is "
                              f"not the argmax of its own logits ({int(a[t].argmax())} at "
                              f"{a[t].max():.4f})")
            break
    for t in range(steps):
        if r[t, r_tok[t]] < r[t].max():
            v.failures.append(f"step {t}: reference token {r_tok[t]} is not the argmax of its "
                              "logits")
            break

    # A: same prefix -> logits agree; the first flip is a near tie
    last = steps - 1 if d is None else d
    if steps:
        diffs = np.abs(a[:last + 1] - r[:last + 1]).max(axis=1)
        v.shared_max_step = int(diffs.argmax())
        v.shared_max_diff = float(diffs.max())
        if v.shared_max_diff > tol:
            t = v.shared_max_step
            worst = int(np.abs(a[t] - r[t]).argmax())
            v.failures.append(
                f"rule A: step {t} (same prefix): |attnd - ref| = {v.shared_max_diff:.4f} > tol "
                f"{tol:.4f} at token {worst} (attnd {a[t, worst]:.4f}, ref {r[t, worst]:.4f})")
    if d is not None:
        (rt1, rl1), (rt2, rl2) = _top2(r[d])
        (at1, al1), (at2, al2) = _top2(a[d])
        v.flip_gap = float(r[d, r_tok[d]] - r[d, a_tok[d]])
        v.notes.append(f"step {d}: reference top-2 {rt1}@{rl1:.4f} {rt2}@{rl2:.4f} (margin "
                       f"{rl1 - rl2:.4f}); attnd top-2 {at1}@{al1:.4f} {at2}@{al2:.4f} (margin "
                       f"{al1 - al2:.4f}); tokens ref {int(r_tok[d])} attnd {int(a_tok[d])}")
        if v.flip_gap > 2 * tol:
            v.failures.append(f"rule A: step {d}: tokens differ (ref {int(r_tok[d])}, attnd "
                              f"{int(a_tok[d])}) where the reference prefers its token by "
                              f"{v.flip_gap:.4f} > 2*tol {2 * tol:.4f}: not a near tie")

    # B: teacher-forced along attnd's tokens
    if tf_logits is not None:
        tf = _as_logits(tf_logits, "tf_logits")
        if tf.shape != a.shape:
            raise ValueError(f"tf_logits shape {tf.shape} != attnd_logits {a.shape}")
        if steps:
            diffs = np.abs(a - tf).max(axis=1)
            v.tf_max_step = int(diffs.argmax())
            v.tf_max_diff = float(diffs.max())
            gaps = tf.max(axis=1) - tf[np.arange(steps), a_tok]
            v.tf_worst_step = int(gaps.argmax())
            v.tf_worst_gap = float(gaps.max())
            if v.tf_max_diff > tol:
                t = v.tf_max_step
                worst = int(np.abs(a[t] - tf[t]).argmax())
                v.failures.append(
                    f"rule B: step {t} (teacher-forced): |attnd - ref| = {v.tf_max_diff:.4f} > tol "
                    f"{tol:.4f} at token {worst} (attnd {a[t, worst]:.4f}, ref {tf[t, worst]:.4f})")
            if v.tf_worst_gap > 2 * tol:
                t = v.tf_worst_step
                v.failures.append(
                    f"rule B: step {t}: attnd's token {int(a_tok[t])} is {v.tf_worst_gap:.4f} "
                    f"below the reference's best ({int(tf[t].argmax())}) > 2*tol {2 * tol:.4f}")
    return v
