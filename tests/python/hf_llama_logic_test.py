"""The model example's logic without torch or transformers (examples/hf_llama): page bookkeeping
and positions (paged_batch), the tolerance rule (greedy_check), the attention function and its
KV steps against the CPU daemon with numpy tensors (attnd_hf.AttndKV, the same code the GPU test
runs with torch), and the transformers version adaptation on stand-in modules."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from attention_reference import reference_batch
from conftest import REPO

sys.path.insert(0, str(REPO / "examples" / "hf_llama"))

import attnd_hf  # noqa: E402
import greedy_check as gc  # noqa: E402
from paged_batch import PagedBatch, pack_rows, pages_for  # noqa: E402


# --- paged_batch -----------------------------------------------------------------------------

def test_pages_for():
    assert [pages_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        pages_for(3, 0)
    with pytest.raises(ValueError):
        pages_for(-1, 4)


def test_pack_rows_positions_restart_per_sequence():
    qo, pos, last = pack_rows([3, 1, 2], [0, 0, 0])
    assert qo == [0, 3, 4, 6]
    assert pos == [0, 1, 2, 0, 0, 1]
    assert last == [2, 3, 5]
    qo, pos, last = pack_rows([1, 1], [17, 5])  # decode: each token at its sequence's length
    assert qo == [0, 1, 2] and pos == [17, 5] and last == [0, 1]
    with pytest.raises(ValueError, match="new_tokens=0"):
        pack_rows([1, 0], [0, 0])
    with pytest.raises(ValueError):
        pack_rows([1], [0, 0])


def test_paged_batch_prefill_then_decode_across_page_boundaries():
    book = PagedBatch(3, page_size=4)
    need = book.plan_step([3, 4, 5])
    assert need == [1, 1, 2]
    book.give_pages(need, [10, 11, 12, 13])
    lay = book.advance([3, 4, 5])
    assert lay.kv_indptr == [0, 1, 2, 4]
    assert lay.kv_indices == [10, 11, 12, 13]
    assert lay.kv_last_page_len == [3, 4, 1]
    assert lay.qo_indptr == [0, 3, 7, 12]
    assert lay.positions == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert lay.last_rows == [2, 6, 11]
    assert lay.kv_lens == [3, 4, 5] and not lay.is_decode and lay.qo_tokens == 12
    # decode 1: seq 0 fills its page, seq 1 needs a new one, seq 2 has room
    need = book.plan_step([1, 1, 1])
    assert need == [0, 1, 0]
    book.give_pages(need, [20])
    lay = book.advance([1, 1, 1])
    assert lay.is_decode and lay.positions == [3, 4, 5]
    assert lay.kv_indices == [10, 11, 20, 12, 13]
    assert lay.kv_last_page_len == [4, 1, 2]
    assert lay.last_rows == [0, 1, 2]
    # decode 2: seq 0 needs a page now
    need = book.plan_step([1, 1, 1])
    assert need == [1, 0, 0]
    book.give_pages(need, [30])
    lay = book.advance([1, 1, 1])
    assert lay.kv_indices == [10, 30, 11, 20, 12, 13]
    assert lay.kv_last_page_len == [1, 2, 3]
    assert lay.kv_lens == [5, 6, 7]
    for b, n in enumerate(lay.kv_lens):  # the CSR invariant attnd checks
        pages = lay.kv_indptr[b + 1] - lay.kv_indptr[b]
        assert n == (pages - 1) * 4 + lay.kv_last_page_len[b]
    assert sorted(book.all_pages()) == [10, 11, 12, 13, 20, 30]


def test_paged_batch_refuses_bad_bookkeeping():
    book = PagedBatch(2, page_size=4)
    with pytest.raises(ValueError, match="lack pages"):
        book.advance([1, 1])
    with pytest.raises(ValueError, match="3 page ids for 2"):
        book.give_pages([1, 1], [1, 2, 3])
    book.give_pages([1, 1], [1, 2])
    with pytest.raises(ValueError, match="already in the batch"):
        book.give_pages([1, 0], [2])
    with pytest.raises(ValueError):
        book.plan_step([1])


def test_pages_for_run_counts_all_but_the_last_token():
    book = PagedBatch(3, page_size=16)
    # prompt + 63 appended tokens (the 64th generated token is never appended)
    assert book.pages_for_run([17, 100, 333], 64) == (
        pages_for(17 + 63, 16) + pages_for(100 + 63, 16) + pages_for(333 + 63, 16))


# --- greedy_check ----------------------------------------------------------------------------

def _logits(steps=8, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    lg = rng.normal(size=(steps, vocab))
    lg[:, 7] += 4.0  # a clear winner everywhere
    return lg


def test_judge_identical_runs_pass():
    lg = _logits()
    tok = lg.argmax(1)
    v = gc.judge_prompt(0, 10, tok, lg, tok, lg, lg, tol=0.05)
    assert v.ok and v.first_diff is None and v.equal_prefix == 8
    assert "8/8 tokens equal" in v.summary()


def test_judge_small_noise_passes_and_large_noise_fails():
    lg = _logits()
    tok = lg.argmax(1)
    noisy = lg + 0.01
    assert gc.judge_prompt(0, 10, tok, noisy, tok, lg, lg, tol=0.05).ok
    off = lg.copy()
    off[3, 11] += 0.2  # one logit off by more than tol, same prefix
    v = gc.judge_prompt(0, 10, tok, off, tok, lg, lg, tol=0.05)
    assert not v.ok and any("rule A: step 3" in f for f in v.failures)
    assert any("rule B: step 3" in f for f in v.failures)


def test_judge_near_tie_flip_is_accepted_and_later_steps_ignored():
    ref = _logits()
    ref[4, 7] = ref[4, 9] = 10.0
    ref[4, 9] -= 0.02  # reference prefers 7 by 0.02
    ref_tok = ref.argmax(1)
    att = ref.copy()
    att[4, 9] += 0.03  # attnd prefers 9 by 0.01
    att[5:] = _logits(seed=3)[5:]  # different prefix from here on: anything goes
    att_tok = att.argmax(1)
    assert att_tok[4] == 9 and ref_tok[4] == 7
    tf = att.copy()  # teacher-forced reference along attnd's tokens agrees with attnd
    v = gc.judge_prompt(1, 17, att_tok, att, ref_tok, ref, tf, tol=0.05)
    assert v.ok, v.report()
    assert v.first_diff == 4 and v.equal_prefix == 4
    assert abs(v.flip_gap - 0.02) < 1e-9
    assert "step 4: reference top-2 7@" in v.report()


def test_judge_flip_on_a_clear_margin_fails():
    ref = _logits()
    ref_tok = ref.argmax(1)
    att = ref.copy()
    att[2, 30] = att[2].max() + 1.0  # attnd picks another token where the reference is sure
    att_tok = att.argmax(1)
    v = gc.judge_prompt(0, 5, att_tok, att, ref_tok, ref, None, tol=0.05)
    assert not v.ok
    assert any("not a near tie" in f for f in v.failures)


def test_judge_teacher_forced_catches_drift_after_a_flip():
    ref = _logits()
    ref[1, 7] = ref[1, 9] = 9.0
    ref_tok = ref.argmax(1)
    att = ref.copy()
    att[1, 9] += 0.01
    att_tok = att.argmax(1)
    tf = att.copy()
    tf[6] += np.linspace(0, 1, tf.shape[1])  # after the flip the logits drift apart
    v = gc.judge_prompt(0, 5, att_tok, att, ref_tok, ref, tf, tol=0.05)
    assert v.first_diff == 1
    assert not v.ok and any("rule B: step 6" in f for f in v.failures)


def test_judge_tokens_must_be_the_argmax_of_their_logits():
    lg = _logits()
    tok = lg.argmax(1)
    bad = tok.copy()
    bad[0] = 3
    v = gc.judge_prompt(0, 5, bad, lg, tok, lg, None, tol=10.0)
    assert any("not the argmax of its own logits" in f for f in v.failures)


def test_judge_refuses_non_finite_and_mismatched_shapes():
    lg = _logits()
    tok = lg.argmax(1)
    nan = lg.copy()
    nan[2, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite logit at step 2"):
        gc.judge_prompt(0, 5, tok, nan, tok, lg, None, tol=0.05)
    with pytest.raises(ValueError, match="shapes"):
        gc.judge_prompt(0, 5, tok[:4], lg[:4], tok, lg, None, tol=0.05)


def test_tolerance_and_noise_floor():
    assert gc.tolerance("float16", 0.0) == gc.ABS_TOL["float16"]
    assert gc.tolerance("float16", 0.1) == pytest.approx(gc.NOISE_FACTOR * 0.1)
    assert gc.tolerance("float16", 0.01, 0.2) == pytest.approx(gc.IMPL_FACTOR * 0.2)
    with pytest.raises(ValueError):
        gc.tolerance("int8", 0.0)
    a = _logits()
    b = a.copy()
    b[3, 4] += 0.25
    assert gc.noise_floor(a, b) == pytest.approx(0.25)
    assert gc.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert gc.first_divergence([1, 2, 3], [1, 5, 3]) == 1


# --- attnd_hf against the CPU daemon (numpy tensors) ----------------------------------------

class _Config:
    def __init__(self, layers=2, heads=4, kv_heads=2, head_dim=16):
        self.num_hidden_layers = layers
        self.num_attention_heads = heads
        self.num_key_value_heads = kv_heads
        self.head_dim = head_dim
        self.hidden_size = heads * head_dim
        self._attn_implementation = "sdpa"


class _Layer:
    training = False

    def __init__(self, i):
        self.layer_idx = i


def _hf_layout(x):
    """[n, H, D] -> transformers' [1, H, n, D]."""
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)[None])


def test_attnd_kv_prefill_and_decode_match_the_reference(client, unique_name):
    """The attention function over AttndKV steps: packed prefill (causal per sequence), then
    decode steps across page boundaries, every layer checked against the float64 reference."""
    cfg = _Config()
    hq, hkv, d, layers = 4, 2, 16, 2
    prompts = [3, 9, 20]
    steps = 6
    rng = np.random.default_rng(5)
    with client.session("hf-logic") as sess:
        book = PagedBatch(len(prompts), 4)
        kv = attnd_hf.AttndKV(sess, cfg, len(prompts), book.pages_for_run(prompts, steps + 1),
                              page_size=4, kv_dtype="float32", name=unique_name)
        ks = [[np.zeros((0, hkv, d)) for _ in prompts] for _ in range(layers)]
        vs = [[np.zeros((0, hkv, d)) for _ in prompts] for _ in range(layers)]
        mods = [_Layer(i) for i in range(layers)]
        try:
            for step in range(steps + 1):
                kind = "prefill" if step == 0 else "decode"
                new = prompts if step == 0 else [1] * len(prompts)
                lay = kv.step(new, kind)
                n = lay.qo_tokens
                with kv.forward():
                    for layer in range(layers):
                        q = rng.normal(size=(n, hq, d)).astype(np.float32)
                        k = rng.normal(size=(n, hkv, d)).astype(np.float32)
                        v = rng.normal(size=(n, hkv, d)).astype(np.float32)
                        o, w = attnd_hf.attnd_attention_forward(
                            mods[layer], _hf_layout(q), _hf_layout(k), _hf_layout(v), None,
                            scaling=d ** -0.5)
                        assert w is None and o.shape == (1, n, hq, d)
                        for b in range(len(prompts)):
                            lo, hi = lay.qo_indptr[b], lay.qo_indptr[b + 1]
                            ks[layer][b] = np.concatenate([ks[layer][b], k[lo:hi]])
                            vs[layer][b] = np.concatenate([vs[layer][b], v[lo:hi]])
                            assert ks[layer][b].shape[0] == lay.kv_lens[b]
                        ref, _ = reference_batch(q.astype(np.float64), lay.qo_indptr, ks[layer],
                                                 vs[layer], causal=True)
                        np.testing.assert_allclose(o[0], ref, atol=2e-5, rtol=2e-5,
                                                   err_msg=f"step {step} layer {layer}")
            assert kv.attention_calls == (steps + 1) * layers
        finally:
            kv.close()


def test_attnd_kv_routing_errors(client, unique_name):
    cfg = _Config(layers=2)
    with client.session("hf-logic-err") as sess:
        kv = attnd_hf.AttndKV(sess, cfg, 1, 4, page_size=4, kv_dtype="float32", name=unique_name)
        try:
            q = np.zeros((1, 4, 3, 16), np.float32)
            k = np.zeros((1, 2, 3, 16), np.float32)
            with pytest.raises(attnd_hf.AttentionRoutingError, match="outside an AttndKV"):
                attnd_hf.attnd_attention_forward(_Layer(0), q, k, k, None)
            kv.step([3], "prefill")
            # a forward in which only layer 0 went through attnd: the model bypassed the interface
            with pytest.raises(attnd_hf.AttentionRoutingError, match=r"layers \[0\]"):
                with kv.forward():
                    attnd_hf.attnd_attention_forward(_Layer(0), q, k, k, None)
            with pytest.raises(ValueError, match="use_cache=False"):
                with kv.forward():
                    longer = np.zeros((1, 2, 5, 16), np.float32)
                    attnd_hf.attnd_attention_forward(_Layer(1), q, longer, longer, None)
            with pytest.raises(ValueError, match="packed in one row"):
                with kv.forward():
                    attnd_hf.attnd_attention_forward(_Layer(1), np.zeros((2, 4, 3, 16)), k, k, None)
            with pytest.raises(attnd_hf.AttentionRoutingError, match="layer_idx"):
                with kv.forward():
                    attnd_hf.attnd_attention_forward(_Layer(7), q, k, k, None)
            with pytest.raises(ValueError, match="one token per sequence"):
                kv.step([2], "decode")
        finally:
            kv.close()


# --- transformers version adaptation (stand-in modules) -------------------------------------

def _fake_transformers(monkeypatch, *, interface: bool, table: bool):
    tf = types.ModuleType("transformers")
    tf.__version__ = "0.test"
    mu = types.ModuleType("transformers.modeling_utils")
    registered = {}
    if interface:
        class AttentionInterface:
            @classmethod
            def register(cls, key, fn):
                registered[key] = fn

        tf.AttentionInterface = AttentionInterface
    if table:
        mu.ALL_ATTENTION_FUNCTIONS = registered
    tf.modeling_utils = mu
    monkeypatch.setitem(sys.modules, "transformers", tf)
    monkeypatch.setitem(sys.modules, "transformers.modeling_utils", mu)
    return registered


def test_register_adapts_to_the_installed_interface(monkeypatch):
    reg = _fake_transformers(monkeypatch, interface=True, table=False)
    assert attnd_hf.register() == "AttentionInterface.register"
    assert reg["attnd"] is attnd_hf.attnd_attention_forward
    reg = _fake_transformers(monkeypatch, interface=False, table=True)
    assert attnd_hf.register() == "ALL_ATTENTION_FUNCTIONS[...]"
    assert reg["attnd"] is attnd_hf.attnd_attention_forward
    _fake_transformers(monkeypatch, interface=False, table=False)
    with pytest.raises(RuntimeError,
                       match=r"transformers 0.test has no attention interface.*>= 4.48"):
        attnd_hf.register()


class _Model:
    def __init__(self, setter=None):
        self.config = _Config()
        self.layer = types.SimpleNamespace(config=self.config)
        if setter is not None:
            self.set_attn_implementation = types.MethodType(setter, self)

    def modules(self):
        return [self, self.layer]


def test_select_attention_uses_the_setter_or_the_config():
    def good(self, name):
        self.config._attn_implementation = name

    def refuses(self, name):
        raise ValueError("not supported")

    def warns_only(self, name):
        pass  # transformers 4.5x only warns when a model cannot switch dynamically

    m = _Model(good)
    assert attnd_hf.select_attention(m, "attnd") == "set_attn_implementation"
    assert attnd_hf.attention_implementation(m) == "attnd"
    m = _Model(refuses)
    how = attnd_hf.select_attention(m, "attnd")
    assert "refused (ValueError: not supported)" in how and how.endswith("config")
    assert m.layer.config._attn_implementation == "attnd"
    m = _Model(warns_only)
    assert attnd_hf.select_attention(m, "attnd") == "set_attn_implementation + config"
    m = _Model()
    assert attnd_hf.select_attention(m, "sdpa") == ""
    assert attnd_hf.select_attention(m, "attnd") == "config"
