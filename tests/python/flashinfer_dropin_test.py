"""attnd.flashinfer without torch or a GPU: signature parity with FlashInfer 0.7.4, argument
checks, the pure logic the drop-in runs on (page tables, ragged layouts, options, KV-cache
resolution, LSE base conversion), and the merges and the ragged wrapper end to end through the CPU
daemon of the test run (numpy arrays travel inline there; FlashInfer code passes CUDA tensors,
which travel zero-copy). The GPU half is tests/python/gpu_flashinfer_dropin_test.py.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import attnd
import attnd.flashinfer as fi
from attention_reference import reference_attention, reference_batch, tree_mask, tree_parents
from attnd.flashinfer import _mapping as m
from attnd.flashinfer import cascade, decode, page, prefill

REPO = Path(__file__).resolve().parents[2]
REQ = inspect.Parameter.empty

# FlashInfer 0.7.4's documented signatures: (name, default) in order; "*" marks the start of
# keyword-only parameters, "*args" a var-positional. Taken from its API reference / docstrings.
FI_SIGNATURES = {
    "BatchDecodeWithPagedKVCacheWrapper.__init__": [
        ("float_workspace_buffer", REQ), ("kv_layout", "NHD"), ("use_cuda_graph", False),
        ("use_tensor_cores", False), ("paged_kv_indptr_buffer", None),
        ("paged_kv_indices_buffer", None), ("paged_kv_last_page_len_buffer", None),
        ("backend", "auto"), ("jit_args", None), ("jit_kwargs", None)],
    # plan(indptr, ..., page_size, *deprecated_positional_args, **kwargs) in 0.7.4, whose
    # positional order (_BATCH_DECODE_PLAN_LEGACY_POS_ARGS) is that of earlier releases.
    "BatchDecodeWithPagedKVCacheWrapper.plan": [
        ("indptr", REQ), ("indices", REQ), ("last_page_len", REQ), ("num_qo_heads", REQ),
        ("num_kv_heads", REQ), ("head_dim", REQ), ("page_size", REQ),
        ("pos_encoding_mode", "NONE"), ("window_left", -1), ("logits_soft_cap", None),
        ("q_data_type", "float16"), ("kv_data_type", None), ("o_data_type", None),
        ("data_type", None), ("sm_scale", None), ("rope_scale", None), ("rope_theta", None),
        ("non_blocking", True), ("block_tables", None), ("seq_lens", None),
        ("fixed_split_size", None), ("disable_split_kv", False), ("q_len_per_req", 1), "*",
        ("window_right", 0), ("is_causal", None), ("use_token_head_sf", False)],
    "BatchDecodeWithPagedKVCacheWrapper.run": [
        ("q", REQ), ("paged_kv_cache", REQ), "*args", ("q_scale", None), ("k_scale", None),
        ("v_scale", None), ("out", None), ("lse", None), ("return_lse", False),
        ("enable_pdl", None), ("window_left", None), ("sinks", None), ("q_len_per_req", None),
        ("skip_softmax_threshold_scale_factor", None), ("kv_cache_sf", None)],
    "BatchPrefillWithPagedKVCacheWrapper.__init__": [
        ("float_workspace_buffer", REQ), ("kv_layout", "NHD"), ("use_cuda_graph", False),
        ("qo_indptr_buf", None), ("paged_kv_indptr_buf", None), ("paged_kv_indices_buf", None),
        ("paged_kv_last_page_len_buf", None), ("custom_mask_buf", None),
        ("mask_indptr_buf", None), ("backend", "auto"), ("jit_args", None), ("jit_kwargs", None),
        ("variant_owns_mask", False), ("max_total_num_rows", None)],
    "BatchPrefillWithPagedKVCacheWrapper.plan": [
        ("qo_indptr", REQ), ("paged_kv_indptr", REQ), ("paged_kv_indices", REQ),
        ("paged_kv_last_page_len", REQ), ("num_qo_heads", REQ), ("num_kv_heads", REQ),
        ("head_dim_qk", REQ), ("page_size", REQ), ("head_dim_vo", None), ("custom_mask", None),
        ("packed_custom_mask", None), ("causal", False), ("pos_encoding_mode", "NONE"),
        ("use_fp16_qk_reduction", False), ("sm_scale", None), ("window_left", -1),
        ("logits_soft_cap", None), ("rope_scale", None), ("rope_theta", None),
        ("q_data_type", "float16"), ("kv_data_type", None), ("o_data_type", None),
        ("non_blocking", True), ("prefix_len_ptr", None), ("token_pos_in_items_ptr", None),
        ("token_pos_in_items_len", 0), ("max_item_len_ptr", None), ("seq_lens", None),
        ("seq_lens_q", None), ("block_tables", None), ("max_token_per_sequence", None),
        ("max_sequence_kv", None), ("fixed_split_size", None), ("disable_split_kv", False),
        ("uniform_q_len", None), ("use_token_head_sf", False)],
    "BatchPrefillWithPagedKVCacheWrapper.run": [
        ("q", REQ), ("paged_kv_cache", REQ), "*args", ("q_scale", None), ("k_scale", None),
        ("v_scale", None), ("out", None), ("lse", None), ("return_lse", False),
        ("lse_base", "log2"), ("lse_layout", "NH"), ("enable_pdl", None), ("window_left", None),
        ("sinks", None), ("kv_cache_sf", None), ("skip_softmax_threshold_scale_factor", None),
        ("use_fp16_softmax", None), ("uses_spcompress", None)],
    "BatchPrefillWithRaggedKVCacheWrapper.__init__": [
        ("float_workspace_buffer", REQ), ("kv_layout", "NHD"), ("use_cuda_graph", False),
        ("qo_indptr_buf", None), ("kv_indptr_buf", None), ("custom_mask_buf", None),
        ("mask_indptr_buf", None), ("backend", "auto"), ("jit_args", None), ("jit_kwargs", None),
        ("variant_owns_mask", False)],
    "BatchPrefillWithRaggedKVCacheWrapper.plan": [
        ("qo_indptr", REQ), ("kv_indptr", REQ), ("num_qo_heads", REQ), ("num_kv_heads", REQ),
        ("head_dim_qk", REQ), ("head_dim_vo", None), ("custom_mask", None),
        ("packed_custom_mask", None), ("causal", False), ("pos_encoding_mode", "NONE"),
        ("use_fp16_qk_reduction", False), ("window_left", -1), ("logits_soft_cap", None),
        ("sm_scale", None), ("rope_scale", None), ("rope_theta", None),
        ("q_data_type", "float16"), ("kv_data_type", None), ("o_data_type", None),
        ("non_blocking", True), ("prefix_len_ptr", None), ("token_pos_in_items_ptr", None),
        ("token_pos_in_items_len", 0), ("max_item_len_ptr", None), ("fixed_split_size", None),
        ("disable_split_kv", False), ("seq_lens", None), ("seq_lens_q", None),
        ("max_token_per_sequence", None), ("max_sequence_kv", None), ("v_indptr", None),
        ("o_indptr", None), ("qo_indptr_cpu", None), ("kv_indptr_cpu", None),
        ("uniform_q_len", None), ("use_token_head_sf", False)],
    "BatchPrefillWithRaggedKVCacheWrapper.run": [
        ("q", REQ), ("k", REQ), ("v", REQ), "*args", ("q_scale", None), ("k_scale", None),
        ("v_scale", None), ("o_scale", None), ("out", None), ("lse", None),
        ("return_lse", False), ("lse_base", "log2"), ("lse_layout", "NH"), ("enable_pdl", None),
        ("kv_cache_sf", None)],
    "single_decode_with_kv_cache": [
        ("q", REQ), ("k", REQ), ("v", REQ), ("kv_layout", "NHD"), ("pos_encoding_mode", "NONE"),
        ("use_tensor_cores", False), ("q_scale", None), ("k_scale", None), ("v_scale", None),
        ("window_left", -1), ("logits_soft_cap", None), ("sm_scale", None), ("rope_scale", None),
        ("rope_theta", None), ("return_lse", False)],
    "single_prefill_with_kv_cache": [
        ("q", REQ), ("k", REQ), ("v", REQ), ("scale_q", None), ("scale_k", None),
        ("scale_v", None), ("o_dtype", None), ("custom_mask", None), ("packed_custom_mask", None),
        ("causal", False), ("kv_layout", "NHD"), ("pos_encoding_mode", "NONE"),
        ("use_fp16_qk_reduction", False), ("sm_scale", None), ("window_left", -1),
        ("logits_soft_cap", None), ("rope_scale", None), ("rope_theta", None),
        ("backend", "auto"), ("return_lse", False), ("kv_cache_sf", None), ("k_scale", None),
        ("v_scale", None)],
    "MultiLevelCascadeAttentionWrapper.__init__": [
        ("num_levels", REQ), ("float_workspace_buffer", REQ), ("kv_layout", "NHD"),
        ("use_cuda_graph", False), ("qo_indptr_buf_arr", None), ("paged_kv_indptr_buf_arr", None),
        ("paged_kv_indices_buf_arr", None), ("paged_kv_last_page_len_buf_arr", None)],
    "MultiLevelCascadeAttentionWrapper.plan": [
        ("qo_indptr_arr", REQ), ("paged_kv_indptr_arr", REQ), ("paged_kv_indices_arr", REQ),
        ("paged_kv_last_page_len", REQ), ("num_qo_heads", REQ), ("num_kv_heads", REQ),
        ("head_dim", REQ), ("page_size", REQ), ("causal", False), ("pos_encoding_mode", "NONE"),
        ("use_fp16_qk_reduction", False), ("sm_scale", None), ("window_left", -1),
        ("logits_soft_cap", None), ("rope_scale", None), ("rope_theta", None),
        ("q_data_type", "float16"), ("kv_data_type", None)],
    "MultiLevelCascadeAttentionWrapper.run": [("q", REQ), ("paged_kv_cache", REQ)],
    "merge_state": [("v_a", REQ), ("s_a", REQ), ("v_b", REQ), ("s_b", REQ)],
    "merge_state_in_place": [("v", REQ), ("s", REQ), ("v_other", REQ), ("s_other", REQ),
                             ("mask", None)],
    "merge_states": [("v", REQ), ("s", REQ)],
    "append_paged_kv_cache": [
        ("append_key", REQ), ("append_value", REQ), ("batch_indices", REQ), ("positions", REQ),
        ("paged_kv_cache", REQ), ("kv_indices", REQ), ("kv_indptr", REQ),
        ("kv_last_page_len", REQ), ("kv_layout", "NHD")],
    "get_seq_lens": [("kv_indptr", REQ), ("kv_last_page_len", REQ), ("page_size", REQ)],
    "get_batch_indices_positions": [("append_indptr", REQ), ("seq_lens", REQ), ("nnz", REQ),
                                    ("batch_indices", None), ("positions", None)],
}

# attnd extensions not named attnd_*: keyword-only arguments after FlashInfer's, named and
# defaulted as the other wrappers' arguments of the same meaning (FlashInfer 0.7.4's cascade
# run() takes q and paged_kv_cache only and returns o).
EXTENSIONS = {"MultiLevelCascadeAttentionWrapper.run": dict(out=None, lse=None,
                                                            return_lse=False)}

# FlashInfer's module for each name (attnd.flashinfer mirrors flashinfer.<module>).
FI_MODULES = {
    "BatchDecodeWithPagedKVCacheWrapper": decode, "single_decode_with_kv_cache": decode,
    "BatchPrefillWithPagedKVCacheWrapper": prefill, "BatchPrefillWithRaggedKVCacheWrapper": prefill,
    "single_prefill_with_kv_cache": prefill, "merge_state": cascade,
    "merge_state_in_place": cascade, "merge_states": cascade,
    "MultiLevelCascadeAttentionWrapper": cascade, "append_paged_kv_cache": page,
    "get_seq_lens": page, "get_batch_indices_positions": page,
}


def ours(qualname: str):
    top, _, method = qualname.partition(".")
    obj = getattr(FI_MODULES[top], top)
    assert getattr(fi, top) is obj, f"attnd.flashinfer.{top} is not {FI_MODULES[top].__name__}'s"
    return getattr(obj, method) if method else obj


def expected_params(spec):
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    out = []
    for item in spec:
        if item == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
        elif item == "*args":
            out.append(("args", inspect.Parameter.VAR_POSITIONAL, REQ))
            kind = inspect.Parameter.KEYWORD_ONLY
        else:
            out.append((item[0], kind, item[1]))
    return out


@pytest.mark.parametrize("qualname", sorted(FI_SIGNATURES))
def test_signature_matches_flashinfer(qualname):
    """Same parameter names, order, kinds and defaults as FlashInfer 0.7.4; attnd's additions are
    keyword-only, after them, and named attnd_* (or listed in EXTENSIONS)."""
    params = [p for p in inspect.signature(ours(qualname)).parameters.values()
              if p.name != "self"]
    named = EXTENSIONS.get(qualname, {})
    is_extra = lambda p: p.name.startswith("attnd_") or p.name in named  # noqa: E731
    extra = [p for p in params if is_extra(p)]
    core = [p for p in params if not is_extra(p)]
    assert [(p.name, p.kind, p.default) for p in core] == expected_params(FI_SIGNATURES[qualname])
    assert params[len(core):] == extra, "attnd extensions must come last"
    assert {p.name for p in extra} >= set(named)
    for p in extra:  # attnd_* default to None
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == named.get(p.name)


def test_public_names_and_aliases():
    for name in ("BatchDecodeWithPagedKVCacheWrapper", "BatchPrefillWithPagedKVCacheWrapper",
                 "BatchPrefillWithRaggedKVCacheWrapper", "MultiLevelCascadeAttentionWrapper",
                 "single_decode_with_kv_cache", "single_prefill_with_kv_cache",
                 "single_prefill_with_kv_cache_return_lse", "merge_state", "merge_states",
                 "merge_state_in_place", "append_paged_kv_cache", "get_seq_lens",
                 "get_batch_indices_positions", "CUDAGraphBatchDecodeWithPagedKVCacheWrapper"):
        assert name in fi.__all__ and hasattr(fi, name)
    for cls in (fi.BatchDecodeWithPagedKVCacheWrapper, fi.BatchPrefillWithPagedKVCacheWrapper,
                fi.BatchPrefillWithRaggedKVCacheWrapper):
        assert cls.begin_forward is cls.plan
        assert cls.__dict__["run_return_lse"].keywords == {"return_lse": True}
    casc = fi.MultiLevelCascadeAttentionWrapper  # FlashInfer's aliases: begin_forward, forward
    assert casc.begin_forward is casc.plan and casc.forward is casc.run
    assert fi.single_prefill_with_kv_cache_return_lse.keywords == {"return_lse": True}


def test_import_needs_no_torch():
    """Importing attnd.flashinfer imports neither torch nor anything heavy."""
    code = ("import sys, attnd.flashinfer; "
            "bad = [m for m in ('torch', 'flashinfer') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_package_includes_the_module():
    """The installed attnd (what gpu-bundle.sh puts in .gpu-py) carries attnd/flashinfer."""
    here = Path(fi.__file__).parent
    assert here.parent == Path(attnd.__file__).parent
    for name in ("__init__", "_context", "_mapping", "_paged", "_single", "decode", "prefill",
                 "cascade", "page"):
        assert (here / f"{name}.py").is_file(), name


# --- options -----------------------------------------------------------------------------------

def test_pos_encoding_mode():
    assert m.pos_encoding("NONE") == "none"
    assert m.pos_encoding("ROPE_LLAMA") == "rope_llama"
    assert m.pos_encoding("rope_llama") == "rope_llama"

    class Mode:  # FlashInfer's PosEncodingMode members have a .name
        name = "ROPE_LLAMA"

    assert m.pos_encoding(Mode()) == "rope_llama"
    with pytest.raises(NotImplementedError, match="ALiBi"):
        m.pos_encoding("ALIBI")
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        m.pos_encoding("ROPE")


def test_kv_layout():
    assert m.check_kv_layout("NHD") == "NHD"
    with pytest.raises(NotImplementedError, match="NHD only"):
        m.check_kv_layout("HND")
    with pytest.raises(ValueError):
        m.check_kv_layout("nhd")


def test_window_soft_cap_scales():
    assert [m.window(w) for w in (None, -1, -5, 0, 7)] == [None, None, None, 0, 7]
    assert [m.soft_cap(c) for c in (None, 0, 0.0, -3.0, 30)] == [None, None, None, None, 30.0]
    assert m.sm_scale_for(None, 128) == pytest.approx(1 / math.sqrt(128))
    assert m.sm_scale_for(0.5, 128) == 0.5
    assert m.sm_scale_for(None, 64, q_scale=2.0, k_scale=0.25) == pytest.approx(0.5 / 8)
    assert m.v_scale_for(None) is None and m.v_scale_for(1.0) is None
    assert m.v_scale_for(0.5) == 0.5

    class FakeTensor:
        shape = (8,)

    with pytest.raises(NotImplementedError, match="q_scale as a tensor"):
        m.sm_scale_for(None, 64, q_scale=FakeTensor())


def test_lse_base():
    assert m.LOG2E * m.LN2 == pytest.approx(1.0, abs=1e-15)
    assert m.LOG2E == pytest.approx(1 / math.log(2), abs=1e-15)
    assert m.lse_factor("log2") == m.LOG2E
    assert m.lse_factor("ln") is None
    with pytest.raises(ValueError, match="lse_base"):
        m.lse_factor("e")
    with pytest.raises(ValueError, match="lse_layout"):
        m.check_lse_options("log2", "HND")
    # base 2 of FlashInfer: log2(sum 2^(s * log2 e)) = ln(sum e^s) * log2 e
    s = np.array([0.3, -1.2, 2.5])
    lse2 = np.log2(np.sum(np.exp2(s * m.LOG2E)))
    assert lse2 == pytest.approx(np.log(np.sum(np.exp(s))) * m.LOG2E)


def test_dtypes():
    assert m.dtype_name("float16") == "float16"
    assert m.dtype_name("bfloat16") == "bfloat16"
    assert m.dtype_name("torch.bfloat16") == "bfloat16"
    assert m.dtype_name(None) == "float16"
    assert m.dtype_name(None, default="bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="unsupported dtype"):
        m.dtype_name("int8")


def test_reject_unsupported():
    defaults = dict(custom_mask=None, token_pos_in_items_len=0, use_token_head_sf=False)
    m.reject_unsupported("api", dict(custom_mask=None, token_pos_in_items_len=0), defaults)
    with pytest.raises(NotImplementedError, match="custom_mask=.*not supported"):
        m.reject_unsupported("api", dict(custom_mask=[True, False]), defaults)
    with pytest.raises(NotImplementedError, match="token_pos_in_items_len=4"):
        m.reject_unsupported("api", dict(token_pos_in_items_len=4), defaults)
    with pytest.raises(NotImplementedError, match="use_token_head_sf=True"):
        m.reject_unsupported("api", dict(use_token_head_sf=True), defaults)


# --- page tables -------------------------------------------------------------------------------

def test_page_table_decode_and_prefill():
    t = m.page_table([0, 2, 3], [4, 1, 7, 99], [5, 16], 16)  # entries past indptr[-1] ignored
    assert t.kv_indices == [4, 1, 7] and t.kv_lens == [21, 16] and t.batch_size == 2
    assert t.qo_indptr == [0, 1, 2] and t.max_page == 7
    t = m.page_table(np.array([0, 1]), np.array([3], np.int32), [1], 1, [0, 1])
    assert t.kv_lens == [1] and t.qo_tokens == 1
    t = m.page_table([0, 2, 4], [0, 1, 2, 3], [3, 16], 16, q_len_per_req=3)
    assert t.qo_indptr == [0, 3, 6]
    t = m.page_table([0, 2, 4], [0, 1, 2, 3], [3, 16], 16, [0, 0, 10])
    assert t.qo_tokens == 10  # a request without queries is fine


@pytest.mark.parametrize("args,match", [
    (([0, 1], [0], [], 16), "batch is empty"),
    (([0, 1, 2], [0, 1], [1], 16), "indptr has 3 entries"),
    (([1, 2], [0, 1], [1], 16), r"indptr\[0\]=1"),
    (([0, 0, 1], [0], [1, 1], 16), "request 0 has 0 pages"),
    (([0, 1], [0], [0], 16), r"last_page_len\[0\]=0 is outside 1..page_size \(16\)"),
    (([0, 1], [0], [17], 16), r"last_page_len\[0\]=17"),
    (([0, 3], [0, 1], [1], 16), "indices has 2 entries"),
    (([0, 1], [-2], [1], 16), r"indices\[0\]=-2"),
    (([0, 1], [0], [1], 0), "page_size must be >= 1"),
    (([0, 1], [0.5], [1], 16), "integers"),
])
def test_page_table_errors(args, match):
    with pytest.raises(m.AttndFlashInferError, match=match):
        m.page_table(*args)


@pytest.mark.parametrize("qo,match", [
    ([0, 5, 4], "non-decreasing"),
    ([1, 2, 3], r"qo_indptr\[0\]=1"),
    ([0, 1], "qo_indptr has 2 entries"),
    ([0, 0, 0], "no query tokens"),
    ([0, 6, 7], "qo_len=6 > kv_len=5"),
])
def test_page_table_query_errors(qo, match):
    with pytest.raises(ValueError, match=match):
        m.page_table([0, 1, 2], [0, 1], [5, 3], 16, qo)


def test_heads_and_seq_lens():
    assert m.check_heads(32, 8, 128) == (32, 8, 128)
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        m.check_heads(8, 3, 128)
    with pytest.raises(ValueError, match="positive"):
        m.check_heads(8, 0, 128)
    assert m.seq_lens([0, 3, 3, 4], [5, 2, 16], 16) == [37, 2, 16]


# --- the KV cache tensor -> (pool, layer) -------------------------------------------------------

def layout(**kw):
    d = dict(key="pool-1", base_ptr=0x7F0000000000, num_layers=3, num_pages=10, page_size=16,
             num_kv_heads=2, head_dim=64, dtype="float16", itemsize=2, head_stride=128,
             token_stride=256, kv_stride=16 * 256, page_stride=2 * 16 * 256,
             layer_stride=10 * 2 * 16 * 256, device=0)
    d.update(kw)
    return m.PoolLayout(**d)


def layer_meta(lay, layer, pages=None, dtype="float16"):
    e = lay.itemsize
    return m.TensorMeta(lay.base_ptr + layer * lay.layer_stride,
                        (pages or lay.num_pages, 2, lay.page_size, lay.num_kv_heads, lay.head_dim),
                        tuple(s // e for s in (lay.page_stride, lay.kv_stride, lay.token_stride,
                                               lay.head_stride)) + (1,), e, dtype, lay.device)


def halves(meta, lay):
    s = meta.strides
    shape = (meta.shape[0],) + meta.shape[2:]
    k = m.TensorMeta(meta.ptr, shape, (s[0],) + s[2:], meta.itemsize, meta.dtype, meta.device)
    v = k._replace(ptr=meta.ptr + lay.kv_stride)
    return k, v


def test_resolve_single_tensor_and_halves():
    lay = layout()
    other = layout(key="pool-2", base_ptr=0x7E0000000000)
    r = m.resolve_kv_cache(layer_meta(lay, 2), [other, lay])
    assert (r.layout.key, r.layer, r.num_pages) == ("pool-1", 2, 10)
    r = m.resolve_kv_cache(halves(layer_meta(lay, 1), lay), [lay])
    assert (r.layer, r.num_pages) == (1, 10)
    r = m.resolve_kv_cache(layer_meta(lay, 0, pages=4), [lay])  # cache[layer][:4]
    assert r.num_pages == 4


def test_resolve_page_size_one_ignores_size_one_strides():
    lay = layout(page_size=1, kv_stride=256, page_stride=512, layer_stride=5120)
    meta = layer_meta(lay, 1)
    odd = meta._replace(strides=meta.strides[:2] + (12345,) + meta.strides[3:])
    assert m.resolve_kv_cache(odd, [lay]).layer == 1


def test_resolve_refusals():
    lay = layout()
    meta = layer_meta(lay, 1)
    elsewhere = meta._replace(ptr=0x100000)
    with pytest.raises(m.AttndFlashInferError, match="not memory of an attnd pool"):
        m.resolve_kv_cache(elsewhere, [lay])
    with pytest.raises(m.AttndFlashInferError, match="not memory of an attnd pool"):
        m.resolve_kv_cache(meta._replace(device=1), [lay])
    with pytest.raises(m.AttndFlashInferError, match="bytes into layer 1"):
        m.resolve_kv_cache(meta._replace(ptr=meta.ptr + lay.page_stride), [lay])  # cache[l][1:]
    with pytest.raises(m.AttndFlashInferError, match="dtype bfloat16"):
        m.resolve_kv_cache(layer_meta(lay, 1, dtype="bfloat16"), [lay])
    hnd = meta._replace(shape=(10, 2, 2, 16, 64))
    with pytest.raises(m.AttndFlashInferError, match="expected"):
        m.resolve_kv_cache(hnd, [lay])
    k, v = halves(meta, lay)
    with pytest.raises(m.AttndFlashInferError, match="not the V half"):
        m.resolve_kv_cache((k, v._replace(ptr=v.ptr + lay.layer_stride)), [lay])
    with pytest.raises(m.AttndFlashInferError, match="k_cache, v_cache"):
        m.resolve_kv_cache((k, v, v), [lay])
    with pytest.raises(m.AttndFlashInferError, match="strides"):
        m.resolve_kv_cache(meta._replace(strides=(2048, 1024, 64, 32, 1)), [lay])
    with pytest.raises(m.AttndFlashInferError, match="not memory of an attnd pool"):
        m.resolve_kv_cache(meta, [])


def test_plan_must_match_the_cache():
    lay = layout()
    r = m.resolve_kv_cache(layer_meta(lay, 0, pages=4), [lay])
    t = m.page_table([0, 2], [0, 3], [5], 16)
    m.check_plan_against_cache("api", t, 2, 64, "float16", r)
    with pytest.raises(ValueError, match="planned num_kv_heads=4"):
        m.check_plan_against_cache("api", t, 4, 64, "float16", r)
    with pytest.raises(ValueError, match="planned kv_data_type=bfloat16"):
        m.check_plan_against_cache("api", t, 2, 64, "bfloat16", r)
    with pytest.raises(ValueError, match="planned page_size=8"):
        m.check_plan_against_cache("api", m.page_table([0, 2], [0, 3], [5], 8), 2, 64,
                                   "float16", r)
    with pytest.raises(ValueError, match="names page 4, paged_kv_cache has 4 pages"):
        m.check_plan_against_cache("api", m.page_table([0, 2], [0, 4], [5], 16), 2, 64,
                                   "float16", r)


# --- LSE conversion and merges (through the CPU daemon, numpy arrays travel inline) ------------

def segment_state(logits, values, lo, hi):
    """Attention over keys lo..hi-1 of one row: (v, base-2 lse); empty -> (nan, -inf)."""
    if hi <= lo:
        return np.full(values.shape[-1], np.nan), -np.inf
    s = logits[lo:hi]
    w = np.exp(s - s.max())
    return (w[:, None] * values[lo:hi]).sum(0) / w.sum(), (s.max() + np.log(w.sum())) * m.LOG2E


def split_states(seed=7, seq=3, heads=2, dim=8, keys=50, cuts=(0, 0, 13, 13, 31, 50)):
    """States of the key segments between ``cuts`` (two empty ones: s = -inf, v = NaN) and the
    state over all keys, float64: (v [seq, n, H, D], s [seq, n, H], ref_v, ref_s)."""
    rng = np.random.default_rng(seed)
    n = len(cuts) - 1
    v, s = np.zeros((seq, n, heads, dim)), np.zeros((seq, n, heads))
    ref_v, ref_s = np.zeros((seq, heads, dim)), np.zeros((seq, heads))
    for r in range(seq):
        for h in range(heads):
            logits = rng.normal(size=keys) * 3
            values = rng.normal(size=(keys, dim))
            for i in range(n):
                v[r, i, h], s[r, i, h] = segment_state(logits, values, cuts[i], cuts[i + 1])
            ref_v[r, h], ref_s[r, h] = segment_state(logits, values, 0, keys)
    return v, s, ref_v, ref_s


def f32(*xs):
    return [np.asarray(x, dtype=np.float32) for x in xs]


def test_lse_conversion_helpers():
    from attnd.flashinfer import _arrays as a

    ops = a.NumpyArrays()
    s2 = np.array([[1.5, -np.inf], [0.0, -3.25]], dtype=np.float32)
    ln = a.to_ln(ops, s2)
    assert ln is not s2 and ln.dtype == np.float32
    np.testing.assert_array_equal(ln, s2 * np.float32(m.LN2))
    assert np.isneginf(ln[0, 1])
    back = a.to_log2_(ops, ln)
    assert back is ln
    np.testing.assert_allclose(back, s2, rtol=1e-6)
    np.testing.assert_array_equal(a.to_ln(ops, s2.astype(np.float16)).dtype, np.float32)
    # finish_lse: NH in place (or into dest), HN into dest or a new array, base log2 or ln
    nat = np.arange(6, dtype=np.float32).reshape(3, 2)
    x = nat.copy()
    assert a.finish_lse(ops, x, "log2", "NH") is x
    np.testing.assert_allclose(x, nat * m.LOG2E, rtol=1e-6)
    dest = np.full((3, 2), np.nan, np.float32)
    assert a.finish_lse(ops, nat.copy(), "ln", "NH", dest) is dest
    np.testing.assert_array_equal(dest, nat)
    hn = np.full((2, 3), np.nan, np.float32)
    assert a.finish_lse(ops, nat.copy(), "log2", "HN", hn) is hn
    np.testing.assert_allclose(hn, nat.T * m.LOG2E, rtol=1e-6)
    new = a.finish_lse(ops, nat.copy(), "ln", "HN")
    assert new.shape == (2, 3) and new.flags.c_contiguous
    np.testing.assert_array_equal(new, nat.T)
    with pytest.raises(ValueError, match="lse_base"):
        a.finish_lse(ops, nat, "e", "NH")
    with pytest.raises(m.AttndFlashInferError, match="expected a torch tensor"):
        a.arrays_for([1.0])


@pytest.fixture(scope="module")
def cpu_ctx(daemon):
    with fi.Context(daemon.target) as ctx:
        yield ctx


TOL32 = dict(rtol=1e-5, atol=2e-5)


def test_merges_equal_attention_over_the_union(cpu_ctx):
    """merge_states / merge_state / merge_state_in_place take and return base-2 LSEs; the daemon
    merges natural-log ones; the result is attention over all the keys (empty states weigh 0)."""
    v, s, ref_v, ref_s = split_states()
    v, s = f32(v, s)
    mv, ms = fi.merge_states(v, s, attnd_context=cpu_ctx)
    assert mv.dtype == np.float32 and ms.dtype == np.float32 and ms.shape == ref_s.shape
    assert not np.isnan(mv).any()
    np.testing.assert_allclose(mv, ref_v, **TOL32)
    np.testing.assert_allclose(ms, ref_s, **TOL32)
    # pairwise: states 0..2 and 3..4 merged separately (the first pair is both empty), then
    a = fi.merge_states(v[:, :3], s[:, :3], attnd_context=cpu_ctx)
    b = fi.merge_states(v[:, 3:], s[:, 3:], attnd_context=cpu_ctx)
    pv, ps = fi.merge_state(a[0], a[1], b[0], b[1], attnd_context=cpu_ctx)
    np.testing.assert_allclose(pv, ref_v, **TOL32)
    np.testing.assert_allclose(ps, ref_s, **TOL32)
    # in place: (a) becomes (a + b); the inputs b are not touched
    b_before = (b[0].copy(), b[1].copy())
    va, sa = a[0].copy(), a[1].copy()
    assert fi.merge_state_in_place(va, sa, b[0], b[1], attnd_context=cpu_ctx) is None
    np.testing.assert_allclose(va, ref_v, **TOL32)
    np.testing.assert_allclose(sa, ref_s, **TOL32)
    assert np.array_equal(b[0], b_before[0]) and np.array_equal(b[1], b_before[1])


def test_merge_state_matches_base2_formula_and_keeps_v_dtype(cpu_ctx):
    rng = np.random.default_rng(3)
    v_a = rng.normal(size=(6, 4, 16)).astype(np.float16)
    v_b = rng.normal(size=(6, 4, 16)).astype(np.float32)  # converted to v_a's dtype
    s_a = (rng.normal(size=(6, 4)) * 5).astype(np.float32)
    s_b = (rng.normal(size=(6, 4)) * 5).astype(np.float16)  # read as float32
    s_a[0] = -np.inf  # row 0: only b
    v, s = fi.merge_state(v_a, s_a, v_b, s_b, attnd_context=cpu_ctx)
    assert v.dtype == np.float16 and s.dtype == np.float32
    wa, wb = np.exp2(s_a.astype(np.float64)), np.exp2(s_b.astype(np.float64))
    ref_s = np.log2(wa + wb)
    ref_v = (wa[..., None] * v_a.astype(np.float64)
             + wb[..., None] * v_b.astype(np.float16).astype(np.float64)) / (wa + wb)[..., None]
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v.astype(np.float64), ref_v, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(v[0].astype(np.float64), v_b[0].astype(np.float16), atol=2e-3)


def test_merge_state_in_place_mask_and_fallbacks(cpu_ctx):
    rng = np.random.default_rng(5)
    v = rng.normal(size=(5, 2, 8)).astype(np.float32)
    s = (rng.normal(size=(5, 2)) * 3).astype(np.float32)
    vo = rng.normal(size=(5, 2, 8)).astype(np.float32)
    so = (rng.normal(size=(5, 2)) * 3).astype(np.float32)
    want_v, want_s = fi.merge_state(v, s, vo, so, attnd_context=cpu_ctx)
    mask = np.array([True, False, True, False, False])
    mv, ms = v.copy(), s.copy()
    fi.merge_state_in_place(mv, ms, vo, so, mask=mask, attnd_context=cpu_ctx)
    np.testing.assert_allclose(mv[mask], want_v[mask], **TOL32)
    np.testing.assert_allclose(ms[mask], want_s[mask], **TOL32)
    assert np.array_equal(mv[~mask], v[~mask]) and np.array_equal(ms[~mask], s[~mask])
    # s not float32, v not contiguous: merged into new arrays, written back
    s16 = s.astype(np.float16)
    v_nc = np.asfortranarray(v)
    ref = fi.merge_state(v, s16.astype(np.float32), vo, so, attnd_context=cpu_ctx)
    fi.merge_state_in_place(v_nc, s16, vo, so, attnd_context=cpu_ctx)
    np.testing.assert_allclose(v_nc, ref[0], **TOL32)
    np.testing.assert_allclose(s16, ref[1].astype(np.float16), rtol=1e-3)
    with pytest.raises(ValueError, match="mask"):
        fi.merge_state_in_place(v.copy(), s.copy(), vo, so, mask=np.ones(4, bool),
                                attnd_context=cpu_ctx)


def test_merge_refused_by_the_daemon_leaves_s_as_it_was(cpu_ctx):
    """head_dim 6 is not a multiple of 4: the daemon refuses the merge before it runs; the
    in-place path has turned s into natural log first and turns it back."""
    rng = np.random.default_rng(8)
    v = rng.normal(size=(3, 2, 6)).astype(np.float32)
    s = (rng.normal(size=(3, 2)) * 3).astype(np.float32)
    v0, s0 = v.copy(), s.copy()
    with pytest.raises(attnd.AttndError, match="head_dim"):
        fi.merge_state_in_place(v, s, v.copy(), s.copy(), attnd_context=cpu_ctx)
    assert np.array_equal(v, v0)
    np.testing.assert_allclose(s, s0, rtol=1e-6)  # one rounding of x * ln2 * log2e at most


def test_merge_shape_errors(cpu_ctx):
    v = np.zeros((2, 3, 4), np.float32)
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        fi.merge_state(v, s[:, :2], v, s, attnd_context=cpu_ctx)
    with pytest.raises(ValueError, match="differ"):
        fi.merge_state(v, s, v[:1], s[:1], attnd_context=cpu_ctx)
    with pytest.raises(ValueError, match="num_states"):
        fi.merge_states(v, s, attnd_context=cpu_ctx)
    mv, ms = fi.merge_states(np.zeros((2, 0, 3, 4), np.float32), np.zeros((2, 0, 3), np.float32),
                             attnd_context=cpu_ctx)
    assert (mv == 0).all() and np.isneginf(ms).all()


# --- wrappers without torch --------------------------------------------------------------------

def test_constructors_refuse_what_attnd_cannot_do():
    with pytest.raises(NotImplementedError, match="CUDA graph"):
        fi.BatchDecodeWithPagedKVCacheWrapper(None, "NHD", use_cuda_graph=True)
    with pytest.raises(NotImplementedError, match="NHD only"):
        fi.BatchPrefillWithPagedKVCacheWrapper(None, "HND")
    with pytest.raises(NotImplementedError, match="JIT"):
        fi.BatchDecodeWithPagedKVCacheWrapper(None, jit_args=["x"])
    with pytest.raises(NotImplementedError, match="variant_owns_mask"):
        fi.BatchPrefillWithPagedKVCacheWrapper(None, variant_owns_mask=True)
    # The custom-mask buffers are CUDA-graph buffers: accepted and not used, as the others.
    fi.BatchPrefillWithPagedKVCacheWrapper(None, custom_mask_buf=object(),
                                           mask_indptr_buf=object())
    with pytest.raises(ValueError, match="num_levels=0 must be >= 1"):
        fi.MultiLevelCascadeAttentionWrapper(0, None, "NHD")
    with pytest.raises(NotImplementedError, match=r"num_levels=18: .*at most 16 shared levels"):
        fi.MultiLevelCascadeAttentionWrapper(18, None, "NHD")
    with pytest.raises(NotImplementedError, match="CUDA graph"):
        fi.MultiLevelCascadeAttentionWrapper(2, None, "NHD", use_cuda_graph=True)
    with pytest.raises(NotImplementedError, match="NHD only"):
        fi.MultiLevelCascadeAttentionWrapper(2, None, "HND")
    c = fi.MultiLevelCascadeAttentionWrapper(17, None, "NHD", qo_indptr_buf_arr=[object()],
                                             paged_kv_indptr_buf_arr=[object()])
    c.reset_workspace_buffer(object(), [object()] * 17)
    assert not c.is_cuda_graph_enabled
    with pytest.raises(NotImplementedError, match="CUDA graph"):
        fi.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(None, 8)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(None, "NHD", use_tensor_cores=True, backend="fa2")
    assert w.use_tensor_cores and not w.is_cuda_graph_enabled


def test_decode_plan_checks_and_records():
    w = fi.BatchDecodeWithPagedKVCacheWrapper(None, "NHD")
    w.plan([0, 2, 3], [5, 6, 7], [3, 16], 32, 8, 128, 16, pos_encoding_mode="ROPE_LLAMA",
           window_left=63, logits_soft_cap=30.0, q_data_type="bfloat16", sm_scale=0.1,
           rope_theta=5e5)
    sp = w._spec
    assert (sp.kind, sp.num_qo_heads, sp.num_kv_heads, sp.head_dim) == ("decode", 32, 8, 128)
    assert (sp.q_dtype, sp.kv_dtype, sp.pos_encoding) == ("bfloat16", "bfloat16", "rope_llama")
    assert (sp.window_left, sp.logits_soft_cap, sp.sm_scale, sp.rope_theta) == (63, 30.0, 0.1,
                                                                                 5e5)
    assert sp.table.kv_lens == [19, 16] and not sp.causal
    w.plan([0, 1], [0], [1], 8, 8, 64, 16, data_type="float16", q_data_type=None)
    assert (w._spec.q_dtype, w._spec.window_left, w._spec.pos_encoding) == ("float16", None,
                                                                           "none")
    w.plan([0, 1, 2], [0, 1], [4, 4], 8, 2, 64, 16, q_len_per_req=3)  # speculative verify
    assert (w._spec.kind, w._spec.causal, w._spec.table.qo_indptr) == ("prefill", True,
                                                                       [0, 3, 6])
    with pytest.raises(ValueError, match="qo_len=5 > kv_len=4"):
        w.plan([0, 1], [0], [4], 8, 2, 64, 16, q_len_per_req=5)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        w.plan([0, 1], [0], [1], 6, 4, 64, 16)
    with pytest.raises(NotImplementedError, match="ALiBi"):
        w.plan([0, 1], [0], [1], 8, 8, 64, 16, pos_encoding_mode="ALIBI")
    with pytest.raises(NotImplementedError, match="window_right=-1"):
        w.plan([0, 1], [0], [1], 8, 8, 64, 16, window_right=-1)
    with pytest.raises(NotImplementedError, match="kv_data_type=float8_e4m3fn"):
        w.plan([0, 1], [0], [1], 8, 8, 64, 16, kv_data_type="float8_e4m3fn")
    with pytest.raises(NotImplementedError, match="o_data_type=float32"):
        w.plan([0, 1], [0], [1], 8, 8, 64, 16, o_data_type="float32")
    with pytest.raises(ValueError, match=r"last_page_len\[0\]=17"):
        w.plan([0, 1], [0], [17], 8, 8, 64, 16)


def test_prefill_plan_checks_and_records():
    w = fi.BatchPrefillWithPagedKVCacheWrapper(None, "NHD", backend="fa3")
    w.plan([0, 3, 20], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16, causal=True,
           use_fp16_qk_reduction=True, seq_lens=[20, 32], fixed_split_size=4)
    sp = w._spec
    assert (sp.kind, sp.causal, sp.table.qo_indptr, sp.table.kv_lens) == (
        "prefill", True, [0, 3, 20], [4, 32])
    with pytest.raises(ValueError, match="qo_len=5 > kv_len=4"):
        w.plan([0, 5, 6], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16)
    with pytest.raises(NotImplementedError, match="head_dim_vo=64"):
        w.plan([0, 1], [0, 1], [0], [4], 16, 4, 128, 16, head_dim_vo=64)
    with pytest.raises(NotImplementedError, match="prefix_len_ptr"):
        w.plan([0, 1], [0, 1], [0], [4], 16, 4, 128, 16, prefix_len_ptr=[0])


# --- custom masks (FlashInfer's custom_mask / packed_custom_mask -> attnd's plan mask) ---------

def fi_flat_mask(masks):
    """FlashInfer's custom_mask argument: every request's [qo_len, kv_len] block, flattened and
    concatenated (mask_indptr = cumsum(qo_len * kv_len))."""
    return np.concatenate([np.asarray(mk, bool).reshape(-1) for mk in masks])


def fi_packed_mask(masks):
    """A packed_custom_mask as FlashInfer 0.7.4's paged kernel reads it (measured on the GPU
    host): request b's numpy.packbits(mask_b, bitorder="little") at byte offset
    sum_{c<b} qo_len_c * kv_len_c (plan() passes the requests' bit offsets as mask_indptr, and
    the kernel adds them to the mask pointer as bytes). One request: plain packbits."""
    sizes = [np.asarray(mk).size for mk in masks]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    out = np.zeros(offsets[-1] + (sizes[-1] + 7) // 8, np.uint8)
    for off, mk in zip(offsets, masks):
        bits = np.packbits(np.asarray(mk, bool).reshape(-1), bitorder="little")
        out[off:off + bits.size] = bits
    return out


def test_custom_mask_wire_is_flashinfers_layout():
    rng = np.random.default_rng(21)
    qo, kv = [3, 1, 5], [10, 1, 13]  # 30, 1 and 65 bits: ends inside bytes
    masks = [rng.random((a, b)) < 0.5 for a, b in zip(qo, kv)]
    want = attnd.pack_custom_mask(masks)
    assert len(want) == 4 + 1 + 9
    assert m.packed_mask_offsets(qo, kv) == [0, 30, 31]
    assert m.custom_mask_wire("api", qo, kv, custom_mask=fi_flat_mask(masks)) == want
    packed = fi_packed_mask(masks)
    assert packed.size == 31 + 9
    assert m.custom_mask_wire("api", qo, kv, packed_custom_mask=packed) == want
    # bytes past the last request's are not read (as in FlashInfer)
    assert m.custom_mask_wire("api", qo, kv, packed_custom_mask=np.concatenate(
        [packed, np.full(5, 0xFF, np.uint8)])) == want
    # one request: packed_custom_mask is its packbits
    assert m.custom_mask_wire("api", qo[:1], kv[:1], packed_custom_mask=np.packbits(
        masks[0].reshape(-1), bitorder="little")) == attnd.pack_custom_mask(masks[:1])
    assert m.custom_mask_wire("api", qo, kv, custom_mask=fi_flat_mask(masks).astype(np.uint8)) \
        == want  # 0/1 integers as booleans
    # packed_custom_mask wins over custom_mask, as in FlashInfer's plan()
    assert m.custom_mask_wire("api", qo, kv, custom_mask=np.zeros(96, bool),
                              packed_custom_mask=packed) == want
    assert m.custom_mask_wire("api", qo, kv) is None
    with pytest.raises(m.AttndFlashInferError, match="custom_mask has 95 elements, expected 96"):
        m.custom_mask_wire("api", qo, kv, custom_mask=fi_flat_mask(masks)[:-1])
    # the per-request segment_packbits form is too short for FlashInfer's offsets
    with pytest.raises(m.AttndFlashInferError,
                       match="packed_custom_mask has 14 bytes, needs at least 40"):
        m.custom_mask_wire("api", qo, kv, packed_custom_mask=np.frombuffer(want, np.uint8))
    with pytest.raises(m.AttndFlashInferError, match="packed_custom_mask must be uint8"):
        m.custom_mask_wire("api", qo, kv, packed_custom_mask=fi_flat_mask(masks))
    with pytest.raises(m.AttndFlashInferError, match="custom_mask must be boolean"):
        m.custom_mask_wire("api", qo, kv, custom_mask=fi_flat_mask(masks).astype(np.float32))


def test_prefill_plan_takes_custom_masks():
    rng = np.random.default_rng(22)
    qo, kv = [3, 17], [4, 32]
    masks = [rng.random((a, b)) < 0.5 for a, b in zip(qo, kv)]
    w = fi.BatchPrefillWithPagedKVCacheWrapper(None, "NHD", backend="fa3")
    # With a mask FlashInfer's mask mode is CUSTOM and causal is ignored: attnd's plan runs
    # causal=False with the mask (the window and the soft cap still apply).
    w.plan([0, 3, 20], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16, causal=True,
           custom_mask=fi_flat_mask(masks), window_left=7, logits_soft_cap=20.0)
    sp = w._spec
    assert (sp.causal, sp.custom_mask, sp.window_left, sp.logits_soft_cap) == (
        False, attnd.pack_custom_mask(masks), 7, 20.0)
    w.plan([0, 3, 20], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16,
           packed_custom_mask=fi_packed_mask(masks))
    assert w._spec.custom_mask == attnd.pack_custom_mask(masks) and not w._spec.causal
    w.plan([0, 3, 20], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16, causal=True)
    assert w._spec.custom_mask is None and w._spec.causal
    with pytest.raises(ValueError, match="packed_custom_mask has 5 bytes, needs at least 80"):
        w.plan([0, 3, 20], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16,
               packed_custom_mask=fi_packed_mask(masks)[:5])
    with pytest.raises(ValueError, match="custom_mask has 555 elements, expected 556"):
        w.plan([0, 3, 20], [0, 1, 3], [0, 9, 2], [4, 16], 16, 4, 128, 16,
               custom_mask=fi_flat_mask(masks)[1:])
    # The ragged wrapper still refuses masks (attnd's RunRagged has none).
    r = fi.BatchPrefillWithRaggedKVCacheWrapper(None)
    with pytest.raises(NotImplementedError, match="custom_mask"):
        r.plan([0, 3], [0, 4], 8, 2, 128, custom_mask=fi_flat_mask(masks[:1]))
    with pytest.raises(NotImplementedError, match="packed_custom_mask"):
        r.plan([0, 3], [0, 4], 8, 2, 128, packed_custom_mask=fi_packed_mask(masks[:1]))


def test_prefill_custom_mask_reaches_the_daemon_plan(cpu_ctx, unique_name):
    """The drop-in's daemon-side plan (made for a pool view, here a CPU pool on numpy arrays)
    carries the mask: a tree mask on a prefix, FlashInfer-flattened, against the reference."""
    import types

    rng = np.random.default_rng(23)
    hq, hkv, d, page = 4, 2, 64, 4
    prefixes, nodes = [9, 0], [6, 5]
    kv_lens = [a + b for a, b in zip(prefixes, nodes)]
    sess = cpu_ctx.session
    pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=hkv, head_dim=d,
                            page_size=page, kv_dtype="float32", num_pages=8)
    pages = pool.allocate(6)
    indptr, last = [0, 4, 6], [kv_lens[0] - 3 * page, kv_lens[1] - page]
    k = rng.standard_normal((sum(kv_lens), hkv, d)).astype(np.float32)
    v = rng.standard_normal((sum(kv_lens), hkv, d)).astype(np.float32)
    fill = attnd.BatchPrefillWrapper(pool)
    fill.plan(indptr, pages, last, [0, kv_lens[0], sum(kv_lens)], num_qo_heads=hq)
    fill.append_kv(k, v, 0)
    masks = [tree_mask(tree_parents(rng, n), p) for p, n in zip(prefixes, nodes)]
    qo = [0, nodes[0], sum(nodes)]
    w = fi.BatchPrefillWithPagedKVCacheWrapper(None, "NHD", attnd_context=cpu_ctx)
    w.plan(qo, indptr, pages, last, hq, hkv, d, page, causal=True,
           custom_mask=fi_flat_mask(masks), q_data_type="float32")
    view = types.SimpleNamespace(pool=pool, layout=types.SimpleNamespace(key="cpu-pool",
                                                                         num_pages=8))
    inner = w._inner_for(view)  # what run() makes for the pool its cache tensor lies in
    q = rng.standard_normal((qo[-1], hq, d)).astype(np.float32)
    o, lse = inner.run(q, 0, causal=w._spec.causal, return_lse=True)
    starts = [0, kv_lens[0]]
    for b in range(2):
        kb, vb = k[starts[b]:starts[b] + kv_lens[b]], v[starts[b]:starts[b] + kv_lens[b]]
        ref_o, ref_lse = reference_attention(q[qo[b]:qo[b + 1]], kb, vb, custom_mask=masks[b])
        np.testing.assert_allclose(o[qo[b]:qo[b + 1]], ref_o, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(lse[qo[b]:qo[b + 1]], ref_lse, rtol=1e-5, atol=1e-4)
    w.delete()


# --- MultiLevelCascadeAttentionWrapper (an attnd cascade plan) ---------------------------------

# A 3-level batch of 4 requests on page size 16: level 0 one group (pages 0, 1: 32 tokens),
# level 1 two groups ({0, 1}: page 2, 3 tokens; {2, 3}: pages 3, 4, 21 tokens), level 2 each
# request's own page (5 .. 8, 1 .. 4 tokens): FlashInfer's per-level lists.
CASC_QO = [[0, 4], [0, 2, 4], [0, 1, 2, 3, 4]]
CASC_INDPTR = [[0, 2], [0, 1, 3], [0, 1, 2, 3, 4]]
CASC_INDICES = [[0, 1], [2, 3, 4], [5, 6, 7, 8]]
CASC_LAST = [[16], [3, 5], [1, 2, 3, 4]]


def casc_plan(w, qo=CASC_QO, indptr=CASC_INDPTR, indices=CASC_INDICES, last=CASC_LAST, **kw):
    w.plan(qo, indptr, indices, last, 8, 2, 64, 16, **kw)
    return w._spec


def test_cascade_plan_maps_levels_and_records():
    """Levels 0 .. L-2 become the plan's cascade levels (groups = their qo_indptr row ranges),
    level L-1 the plan's table; one query row per request plans attnd decode (causal changes
    nothing there), more plan a prefill with ``causal`` (FlashInfer's last level only)."""
    w = fi.MultiLevelCascadeAttentionWrapper(3, None, "NHD")
    sp = casc_plan(w, causal=True, sm_scale=0.1, logits_soft_cap=30.0, q_data_type="bfloat16",
                   use_fp16_qk_reduction=True, rope_theta=5e5)
    assert (sp.kind, sp.causal, sp.q_dtype, sp.kv_dtype) == ("decode", False, "bfloat16",
                                                             "bfloat16")
    assert (sp.table.qo_indptr, sp.table.kv_indices, sp.table.kv_lens) == (
        [0, 1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4])
    assert [(lv.qo_indptr, lv.kv_indptr, lv.kv_indices, lv.kv_last_page_len, lv.kv_lens)
            for lv in sp.cascade_levels] == [([0, 4], [0, 2], [0, 1], [16], [32]),
                                             ([0, 2, 4], [0, 1, 3], [2, 3, 4], [3, 5], [3, 21])]
    assert (sp.sm_scale, sp.logits_soft_cap, sp.pos_encoding, sp.window_left, sp.max_page) == (
        0.1, 30.0, "none", None, 8)
    assert w._run_options()["causal"] is False and w._run_options()["window_left"] == -1
    # prefill-like last level (request 0 three rows, request 2 none: level 1's first group holds
    # rows 0 .. 4, its second 4 .. 8); numpy / lists as FlashInfer's tensors; indices may be
    # longer than indptr[-1] (ignored, as FlashInfer reads that many)
    sp = casc_plan(w, qo=[np.array([0, 8]), [0, 4, 8], np.array([0, 3, 4, 4, 8], np.int32)],
                   indices=[[0, 1, 99], [2, 3, 4], [5, 6, 7, 8]], last=[[16], [3, 5], [3, 2, 3, 4]],
                   causal=True)
    assert (sp.kind, sp.causal, sp.table.qo_indptr) == ("prefill", True, [0, 3, 4, 4, 8])
    assert sp.cascade_levels[0].kv_indices == [0, 1]
    assert casc_plan(w, qo=[[0, 8], [0, 4, 8], [0, 3, 4, 4, 8]],
                     last=[[16], [3, 5], [3, 2, 3, 4]]).causal is False  # FlashInfer's default
    # one level is an ordinary plan: RoPE and windows are attnd's to run there
    one = fi.MultiLevelCascadeAttentionWrapper(1, None)
    one.plan([[0, 1, 2]], [[0, 1, 2]], [[0, 1]], [[3, 4]], 8, 2, 64, 16,
             pos_encoding_mode="ROPE_LLAMA", window_left=4)
    sp = one._spec
    assert (sp.kind, sp.cascade_levels, sp.pos_encoding, sp.window_left) == (
        "decode", (), "rope_llama", 4)


@pytest.mark.parametrize("change,error,match", [
    (dict(qo=CASC_QO[:2]), ValueError,
     r"qo_indptr_arr must be a list of num_levels = 3 tensors \(one per level\), got 2 entries"),
    (dict(last=[[16, 16], [3, 5], [1, 2, 3, 4]]), ValueError,
     r"paged_kv_indptr_arr\[0\] has 2 entries, expected num_groups \+ 1 = 3 "
     r"\(num_groups = len\(paged_kv_last_page_len\[0\]\)\)"),
    # attnd: every group of a shared level has >= 1 page
    (dict(indptr=[[0, 2], [0, 0, 3], [0, 1, 2, 3, 4]]), ValueError,
     r"group 0 has 0 pages \(paged_kv_indptr_arr\[1\]\[0\]=0, paged_kv_indptr_arr\[1\]\[1\]=0\)"
     ": every group needs at least one page"),
    (dict(last=[[17], [3, 5], [1, 2, 3, 4]]), ValueError,
     r"paged_kv_last_page_len\[0\]\[0\]=17 is outside 1..page_size \(16\)"),
    # attnd: a group holds whole requests of the last level
    (dict(qo=[[0, 5], [0, 3, 5], [0, 1, 2, 4, 5]], last=[[16], [3, 5], [1, 2, 3, 4]]),
     ValueError, r"qo_indptr_arr\[1\]\[1\]=3 is not a request boundary of the last level "
     r"\(qo_indptr_arr\[2\]\): attnd's shared levels group whole requests"),
    (dict(qo=[[0, 4], [0, 2, 5], [0, 1, 2, 3, 4]]), ValueError,
     r"qo_indptr_arr\[1\] runs from 0 to 5; it must cover the batch's query rows 0 .. 4"),
    (dict(qo=[[0, 4], [0, 3, 2, 4], [0, 1, 2, 3, 4]], indptr=[[0, 2], [0, 1, 2, 3],
                                                               [0, 1, 2, 3, 4]],
          last=[[16], [3, 5, 5], [1, 2, 3, 4]]), ValueError,
     r"qo_indptr_arr\[1\] must be non-decreasing: qo_indptr_arr\[1\]\[2\]=2 < "
     r"qo_indptr_arr\[1\]\[1\]=3"),
    # attnd: a shared level's pages are read only (not where the last level's queries sit)
    (dict(indices=[[0, 7], [2, 3, 4], [5, 6, 7, 8]]), ValueError,
     r"paged_kv_indices_arr\[0\]\[1\]=7: page 7 holds query tokens of request 2 of the last "
     r"level \(paged_kv_indices_arr\[2\]\); attnd appends there"),
    # the last level follows the paged wrappers' rules, named by level
    (dict(qo=[[0, 5], [0, 2, 5], [0, 2, 3, 4, 5]]), ValueError,
     r"request 0 of the last level \(qo_indptr_arr\[2\], paged_kv_indptr_arr\[2\]\) has "
     "qo_len=2 > kv_len=1"),
    (dict(indptr=[[0, 2], [0, 1, 3], [0, 1, 1, 3, 4]]), ValueError,
     r"request 1 has 0 pages \(paged_kv_indptr_arr\[2\]\[1\]=1"),
    (dict(pos_encoding_mode="ROPE_LLAMA"), NotImplementedError,
     "pos_encoding_mode='ROPE_LLAMA' with num_levels=3: attnd's cascade plans take no RoPE"),
    (dict(pos_encoding_mode="ALIBI"), NotImplementedError, "ALiBi"),
    (dict(window_left=3), NotImplementedError,
     "window_left=3 with num_levels=3: attnd's cascade plans take no sliding window"),
    (dict(kv_data_type="float8_e4m3fn"), NotImplementedError, "kv_data_type=float8_e4m3fn"),
    (dict(num_qo_heads=7), ValueError, "multiple of num_kv_heads"),
])
def test_cascade_plan_refusals_name_the_argument(change, error, match):
    """What attnd's cascade plans cannot express is refused at plan(), before anything is sent,
    naming the argument and the entry; a refused plan() keeps the previous one."""
    w = fi.MultiLevelCascadeAttentionWrapper(3, None, "NHD")
    before = casc_plan(w)
    args = dict(qo=CASC_QO, indptr=CASC_INDPTR, indices=CASC_INDICES, last=CASC_LAST)
    kw = {k: change[k] for k in change if k not in args}
    args.update({k: change[k] for k in change if k in args})
    heads = kw.pop("num_qo_heads", 8)
    with pytest.raises(error, match=match) as err:
        w.plan(args["qo"], args["indptr"], args["indices"], args["last"], heads, 2, 64, 16, **kw)
    if error is ValueError:
        assert str(err.value).startswith("MultiLevelCascadeAttentionWrapper.plan: ") or \
            "num_kv_heads" in str(err.value)
    assert w._spec is before


def cascade_batch(pool, rng, shared, own, qo, page, hkv, d):
    """Random K/V in random pages of ``pool``: ``shared`` lists each shared level's groups,
    outermost first, as (requests in the group, kv_len); ``own`` each request's own kv_len,
    ``qo`` its query rows. Returns FlashInfer's four per-level lists, the query rows' indptr and
    each request's keys and values over all its levels (its groups' then its own)."""
    segs = [n for level in shared for _, n in level] + list(own)
    counts = [-(-n // page) for n in segs]
    pages = [int(x) for x in rng.permutation(pool.allocate(sum(counts)))]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    seg_pages = [pages[starts[s]:starts[s + 1]] for s in range(len(segs))]
    lasts = [n - (c - 1) * page for n, c in zip(segs, counts)]
    kv = [(rng.standard_normal((n, hkv, d)).astype(np.float32),
           rng.standard_normal((n, hkv, d)).astype(np.float32)) for n in segs]
    fill = attnd.BatchPrefillWrapper(pool)  # every token of every segment, one append
    fill.plan(starts, pages, lasts, np.concatenate([[0], np.cumsum(segs)]), num_qo_heads=hkv)
    fill.append_kv(np.concatenate([k for k, _ in kv]), np.concatenate([v for _, v in kv]), 0)
    fill.delete()
    rows = np.concatenate([[0], np.cumsum(qo)]).astype(np.int32)
    lists = ([], [], [], [])  # qo_indptr_arr, paged_kv_indptr_arr, _indices_arr, _last_page_len
    mine = [[] for _ in own]
    s = 0
    for level in shared + [[(1, n) for n in own]]:
        qo_ind, indptr, indices, last, b = [0], [0], [], [], 0
        for count, _ in level:
            indices += seg_pages[s]
            indptr.append(len(indices))
            last.append(lasts[s])
            for r in range(b, b + count):
                mine[r].append(s)
            b += count
            qo_ind.append(int(rows[b]))
            s += 1
        assert b == len(own)
        for out, x in zip(lists, (qo_ind, indptr, indices, last)):
            out.append(np.array(x, np.int32))
    ks = [np.concatenate([kv[x][0] for x in mine[r]]) for r in range(len(own))]
    vs = [np.concatenate([kv[x][1] for x in mine[r]]) for r in range(len(own))]
    return lists, rows, ks, vs


CASCADE_CASES = [
    dict(id="2-levels-decode-mha", hq=4, hkv=4, shared=[[(4, 37)]], own=[1, 5, 16, 9],
         qo=[1, 1, 1, 1]),
    dict(id="3-levels-decode-gqa-softcap", hq=8, hkv=2,
         shared=[[(5, 20)], [(2, 9), (1, 4), (2, 12)]], own=[3, 1, 8, 4, 6], qo=[1] * 5,
         causal=True, soft_cap=10.0),
    dict(id="2-levels-prefill-gqa-causal", hq=8, hkv=2, shared=[[(2, 13), (2, 30)]],
         own=[6, 9, 4, 12], qo=[3, 9, 1, 5], causal=True, sm_scale=0.2),
    dict(id="3-levels-prefill-gqa-noncausal", hq=8, hkv=4, shared=[[(4, 17)], [(3, 6), (1, 8)]],
         own=[5, 7, 4, 8], qo=[2, 7, 1, 3]),
    # a request without query rows: level 1's first group has no rows
    dict(id="3-levels-prefill-causal-empty-group", hq=8, hkv=2,
         shared=[[(4, 11)], [(1, 6), (3, 10)]], own=[5, 7, 4, 8], qo=[0, 7, 2, 3], causal=True,
         soft_cap=8.0),
]


@pytest.mark.parametrize("case", CASCADE_CASES, ids=[c["id"] for c in CASCADE_CASES])
def test_cascade_reaches_the_daemon_plan(cpu_ctx, unique_name, case):
    """The drop-in's daemon-side cascade plan (made for a pool view, here a CPU pool on numpy
    arrays) with the options run() sends equals attention of each request over its levels'
    keys concatenated (float64 reference): the shared levels fully visible, causal on the last."""
    import types

    rng = np.random.default_rng(zlib.crc32(case["id"].encode()))
    hq, hkv, d, page = case["hq"], case["hkv"], 64, 4
    sess = cpu_ctx.session
    pool = sess.create_pool(unique_name, num_layers=1, num_kv_heads=hkv, head_dim=d,
                            page_size=page, kv_dtype="float32", num_pages=48)
    (qo_arr, indptr_arr, indices_arr, last_arr), rows, ks, vs = cascade_batch(
        pool, rng, case["shared"], case["own"], case["qo"], page, hkv, d)
    w = fi.MultiLevelCascadeAttentionWrapper(len(case["shared"]) + 1, None, "NHD",
                                             attnd_context=cpu_ctx)
    w.plan(qo_arr, indptr_arr, indices_arr, last_arr, hq, hkv, d, page,
           causal=case.get("causal", False), sm_scale=case.get("sm_scale"),
           logits_soft_cap=case.get("soft_cap"), q_data_type="float32")
    decode = all(n == 1 for n in case["qo"])
    assert w._spec.kind == ("decode" if decode else "prefill")
    view = types.SimpleNamespace(pool=pool, layout=types.SimpleNamespace(key="cpu-pool",
                                                                         num_pages=48))
    inner = w._inner_for(view)  # what run() makes for the pool its cache tensor lies in
    assert inner.qo_tokens == rows[-1] and inner.kv_tokens == sum(case["own"])
    q = rng.standard_normal((rows[-1], hq, d)).astype(np.float32)
    o, lse = inner.run(q, 0, return_lse=True, **w._run_options())
    ref_o, ref_lse = reference_batch(q, rows, ks, vs, causal=case.get("causal", False),
                                     sm_scale=case.get("sm_scale"),
                                     soft_cap=case.get("soft_cap") or 0.0)
    np.testing.assert_allclose(o, ref_o, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-4)
    w.delete()
    assert w._inner == {}


def test_runs_refused_before_torch_is_needed():
    w = fi.BatchDecodeWithPagedKVCacheWrapper(None)
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(None, None)
    w.plan([0, 1], [0], [1], 8, 8, 64, 16)
    with pytest.raises(NotImplementedError, match="custom JIT"):
        w.run(None, None, 1.0)
    with pytest.raises(NotImplementedError, match="sinks"):
        w.run(None, None, sinks=[0.0])
    with pytest.raises(ValueError, match="q_len_per_req=2, planned 1"):
        w.run(None, None, q_len_per_req=2)
    p = fi.BatchPrefillWithPagedKVCacheWrapper(None)
    p.plan([0, 1], [0, 1], [0], [4], 8, 8, 64, 16)
    with pytest.raises(ValueError, match="lse_base"):
        p.run(None, None, return_lse=True, lse_base="e")
    r = fi.BatchPrefillWithRaggedKVCacheWrapper(None, "NHD")
    with pytest.raises(RuntimeError, match="before plan"):
        r.run(None, None, None)
    r.plan([0, 4], [0, 9], 8, 2, 128, causal=True)
    with pytest.raises(NotImplementedError, match="custom JIT"):
        r.run(None, None, None, 1.0)
    with pytest.raises(NotImplementedError, match="kv_cache_sf"):
        r.run(None, None, None, kv_cache_sf=object())
    with pytest.raises(ValueError, match="lse_layout"):
        r.run(None, None, None, return_lse=True, lse_layout="NHD")
    with pytest.raises(ValueError, match="kv_indptr"):
        r.plan([0, 4], [0, 4, 9], 8, 2, 128)
    assert r._spec is None  # a failed plan leaves the wrapper unplanned
    # single_prefill takes custom masks now; its tensors are checked first.
    with pytest.raises(ValueError, match="q must be a 3-D CUDA tensor"):
        fi.single_prefill_with_kv_cache(None, None, None, custom_mask=[True])


def test_readme_documents_every_name_and_ignored_argument():
    text = (REPO / "client" / "python" / "README.md").read_text()
    section = text.split("## FlashInfer drop-in", 1)
    assert len(section) == 2, "client/python/README.md has no 'FlashInfer drop-in' section"
    body = section[1].split("\n## ", 1)[0]
    for name in fi.__all__:
        assert name in body, f"{name} is not in the README's FlashInfer section"
    for name in m.IGNORED_ARGUMENTS:
        assert f"`{name}`" in body, f"ignored argument {name} is not documented"
    assert "attnd.flashinfer" in (REPO / "README.md").read_text()


# --- with the CPU daemon of the test run ---------------------------------------------------------

def test_context_needs_a_cuda_daemon(daemon):
    with fi.Context(daemon.target) as ctx:
        assert ctx.session.server_info().backend == "cpu"
        with pytest.raises(RuntimeError, match="needs a CUDA daemon on this host"):
            ctx.allocate_paged_kv_cache(1, 4, 16, 2, 64, "float16")
        with pytest.raises(NotImplementedError, match="NHD only"):
            ctx.allocate_paged_kv_cache(1, 4, 16, 2, 64, "float16", kv_layout="HND")
        w = fi.BatchDecodeWithPagedKVCacheWrapper(None, attnd_context=ctx)
        w.plan([0, 1], [0], [1], 8, 8, 64, 16)  # no pool of that geometry: planned at run()
        assert w._inner == {}
    assert ctx.closed
    with pytest.raises(RuntimeError, match="closed"):
        ctx.session  # noqa: B018


def test_default_context(daemon, monkeypatch):
    from attnd.flashinfer import _context

    monkeypatch.setattr(_context, "_default", None)
    assert _context.peek_context() is None
    monkeypatch.setenv("ATTND_TARGET", daemon.target)
    ctx = fi.get_context()
    try:
        assert fi.get_context() is ctx and _context.peek_context() is ctx
        assert ctx.session.server_info().backend == "cpu"
        other = fi.connect(daemon.target)
        assert fi.get_context() is other
        other.close()
        assert _context.peek_context() is None
    finally:
        ctx.close()
        fi.set_context(None)


# --- BatchPrefillWithRaggedKVCacheWrapper through RunRagged (CPU daemon, inline arrays) -------

def test_ragged_layout_checks():
    lay = m.ragged_layout(np.array([0, 3, 3, 8]), [0, 5, 9, 9])
    assert (lay.qo_indptr, lay.kv_indptr, lay.batch_size) == ([0, 3, 3, 8], [0, 5, 9, 9], 3)
    assert (lay.qo_tokens, lay.kv_tokens) == (8, 9)
    for qo, kv, match in (([0, 4], [0, 4, 9], "both be"), ([0], [0], "both be"),
                          ([1, 4], [0, 4], r"qo_indptr\[0\]=1"),
                          ([0, 4], [2, 4], r"kv_indptr\[0\]=2"),
                          ([0, 4, 3], [0, 1, 2], "non-decreasing"),
                          ([0, 1, 2], [0, 5, 4], r"kv_indptr\[2\]=4 < kv_indptr\[1\]=5"),
                          ([0, 0], [0, 3], "no query tokens"), ([0, 1.5], [0, 2], "integers")):
        with pytest.raises(m.AttndFlashInferError, match=match):
            m.ragged_layout(qo, kv)


def test_ragged_constructor_and_plan_refusals():
    with pytest.raises(NotImplementedError, match="CUDA graph"):
        fi.BatchPrefillWithRaggedKVCacheWrapper(None, use_cuda_graph=True)
    with pytest.raises(NotImplementedError, match="custom masks"):
        fi.BatchPrefillWithRaggedKVCacheWrapper(None, mask_indptr_buf=object())
    with pytest.raises(NotImplementedError, match="JIT"):
        fi.BatchPrefillWithRaggedKVCacheWrapper(None, jit_args=["x"])
    with pytest.raises(ValueError, match="kv_layout"):
        fi.BatchPrefillWithRaggedKVCacheWrapper(None, "NDH")
    w = fi.BatchPrefillWithRaggedKVCacheWrapper(None, "HND", backend="fa3")
    assert not w.is_cuda_graph_enabled
    w.plan([0, 3], [0, 5], 8, 2, 64, causal=True, window_left=7, logits_soft_cap=0.0,
           pos_encoding_mode="ROPE_LLAMA", rope_theta=5e5, q_data_type="bfloat16",
           v_indptr=[0, 5], qo_indptr_cpu=[0, 3], fixed_split_size=16)
    sp = w._spec
    assert (sp.num_qo_heads, sp.num_kv_heads, sp.head_dim, sp.dtype) == (8, 2, 64, "bfloat16")
    assert sp.options == dict(causal=True, sm_scale=None, pos_encoding="rope_llama",
                              rope_theta=5e5, rope_scale=None, logits_soft_cap=None,
                              window_left=7)
    for kwargs, match in ((dict(head_dim_vo=32), "head_dim_vo=32"),
                          (dict(custom_mask=[True]), "custom_mask"),
                          (dict(kv_data_type="float8_e4m3fn"), "kv_data_type"),
                          (dict(pos_encoding_mode="ALIBI"), "ALiBi")):
        with pytest.raises(NotImplementedError, match=match):
            w.plan([0, 3], [0, 5], 8, 2, 64, **kwargs)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        w.plan([0, 3], [0, 5], 6, 4, 64)


RAGGED_QO, RAGGED_KV = [5, 1, 9, 4], [12, 7, 9, 2]  # append, decode-like, prefill, qo > kv


def ragged_batch(seed, hq=4, hkv=2, d=64, qo_lens=RAGGED_QO, kv_lens=RAGGED_KV):
    rng = np.random.default_rng(seed)
    qo = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    kv = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q = rng.standard_normal((qo[-1], hq, d)).astype(np.float32)
    k = rng.standard_normal((kv[-1], hkv, d)).astype(np.float32)
    v = rng.standard_normal((kv[-1], hkv, d)).astype(np.float32)
    return qo, kv, q, k, v


def ragged_reference(qo, kv, q, k, v, **opts):
    """float64 (o, base-2 lse) per request; a request with qo_len > kv_len has its first
    qo_len - kv_len rows before the sequence (causal: no keys, o = 0, lse = -inf)."""
    os_, ls_ = [], []
    for b in range(len(qo) - 1):
        qb, kb, vb = q[qo[b]:qo[b + 1]], k[kv[b]:kv[b + 1]], v[kv[b]:kv[b + 1]]
        extra = max(0, len(qb) - len(kb))
        o, lse = reference_attention(qb[extra:], kb, vb, **opts)
        if extra:
            assert opts.get("causal"), "the reference places rows before the sequence only causally"
            o = np.concatenate([np.zeros((extra,) + o.shape[1:]), o])
            lse = np.concatenate([np.full((extra, lse.shape[1]), -np.inf), lse])
        os_.append(o)
        ls_.append(lse)
    return np.concatenate(os_), np.concatenate(ls_) * m.LOG2E


@pytest.mark.parametrize("case", [
    dict(causal=True),
    dict(causal=True, window_left=3, logits_soft_cap=4.0, sm_scale=0.2),
    dict(causal=True, pos_encoding_mode="ROPE_LLAMA", rope_theta=1e4),
    dict(causal=False, hkv=4),
], ids=["causal", "window-softcap-scale", "rope", "noncausal-mha"])
def test_ragged_run_matches_the_reference(cpu_ctx, case):
    case = dict(case)
    hkv = case.pop("hkv", 2)
    qo_lens, kv_lens = (RAGGED_QO, RAGGED_KV) if case["causal"] else ([3, 4], [6, 4])
    qo, kv, q, k, v = ragged_batch(11, hkv=hkv, qo_lens=qo_lens, kv_lens=kv_lens)
    w = fi.BatchPrefillWithRaggedKVCacheWrapper(None, "NHD", attnd_context=cpu_ctx)
    w.plan(qo, kv, 4, hkv, 64, q_data_type="float32", **case)
    o, lse = w.run(q, k, v, return_lse=True)
    assert o.shape == q.shape and o.dtype == np.float32 and lse.shape == (len(q), 4)
    ref_o, ref_lse = ragged_reference(
        qo, kv, q, k, v, causal=case["causal"], sm_scale=case.get("sm_scale"),
        soft_cap=case.get("logits_soft_cap", 0.0), window_left=case.get("window_left", -1),
        rope="pos_encoding_mode" in case)
    np.testing.assert_allclose(o, ref_o, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, rtol=2e-5, atol=2e-5)
    assert np.array_equal(w.run(q, k, v), o)  # plan once, run again (without lse)
    o2, lse2 = w.run_return_lse(q, k, v)
    assert np.array_equal(o2, o) and np.array_equal(lse2, lse)


def test_ragged_hnd_out_and_lse_buffers(cpu_ctx):
    qo, kv, q, k, v = ragged_batch(12)
    w = fi.BatchPrefillWithRaggedKVCacheWrapper(None, "NHD", attnd_context=cpu_ctx)
    w.plan(qo, kv, 4, 2, 64, causal=True, q_data_type="float32")
    o, lse = w.run(q, k, v, return_lse=True)
    h = fi.BatchPrefillWithRaggedKVCacheWrapper(None, "HND", attnd_context=cpu_ctx)
    h.begin_forward(qo, kv, 4, 2, 64, causal=True, q_data_type="float32")
    out = np.full(q.shape, np.nan, np.float32)
    hn = np.full((4, len(q)), np.nan, np.float32)
    o_h, lse_h = h.run(q, np.ascontiguousarray(k.swapaxes(0, 1)),
                       np.ascontiguousarray(v.swapaxes(0, 1)), out=out, lse=hn, return_lse=True,
                       lse_base="ln", lse_layout="HN")
    assert o_h is out and lse_h is hn
    np.testing.assert_array_equal(o_h, o)
    np.testing.assert_allclose(lse_h.T, lse * m.LN2, rtol=1e-6)
    nh = np.full((len(q), 4), np.nan, np.float32)
    assert w.run(q, k, v, lse=nh, return_lse=True)[1] is nh
    np.testing.assert_array_equal(nh, lse)


def test_ragged_run_checks_the_tensors(cpu_ctx):
    qo, kv, q, k, v = ragged_batch(13)
    w = fi.BatchPrefillWithRaggedKVCacheWrapper(None, attnd_context=cpu_ctx)
    w.plan(qo, kv, 4, 2, 64, q_data_type="float32", causal=True)
    with pytest.raises(ValueError, match=r"q has shape \(18, 4, 64\), expected \(19, 4, 64\)"):
        w.run(q[:-1], k, v)
    with pytest.raises(ValueError, match="k has shape"):
        w.run(q, k[:, :1], v)
    with pytest.raises(ValueError, match="v is float16, planned float32"):
        w.run(q, k, v.astype(np.float16))
    with pytest.raises(ValueError, match="out has shape"):
        w.run(q, k, v, out=np.empty((19, 4, 32), np.float32))
    with pytest.raises(ValueError, match="lse has shape"):
        w.run(q, k, v, lse=np.empty((4, 19), np.float32), return_lse=True)
    with pytest.raises(ValueError, match="must be contiguous"):
        w.run(q, k, v, out=np.empty((64, 4, 19), np.float32).T)
    w.plan(qo, kv, 4, 2, 64, q_data_type="float16")
    with pytest.raises(ValueError, match="q is float32, planned float16"):
        w.run(q, k, v)
