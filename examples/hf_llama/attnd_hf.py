"""Hugging Face transformers attention through attnd, with the KV cache in attnd pages.

    import attnd, attnd_hf
    attnd_hf.register()                                   # attn_implementation "attnd"
    attnd_hf.select_attention(model, "attnd")            # a Llama-family model already built
    with attnd.Client(target) as client, client.session("hf") as sess:
        kv = attnd_hf.AttndKV(sess, model.config, batch_size=3, max_pages=64)
        layout = kv.step([17, 100, 333], "prefill")       # pages, plan, positions of the step
        with kv.forward():                                # every layer's attention -> attnd
            out = model(input_ids=packed_ids, position_ids=torch.tensor([layout.positions]),
                        use_cache=False)

How it fits transformers: the model's attention layers (LlamaAttention and the like) project
q/k/v, apply RoPE themselves, and hand ``query [1, Hq, n, D]``, ``key``/``value [1, Hkv, n, D]`` of
the step's *new* tokens to the function registered under ``attn_implementation`` (transformers'
AttentionInterface). The model is called with ``use_cache=False``: it keeps no KV of its own. The
batch travels packed in one row (``input_ids [1, n]``, sequence after sequence, ``position_ids``
restarting per sequence), so no padding is computed and no attention mask is needed: attnd's plan
(:class:`paged_batch.StepLayout`) says which rows belong to which sequence, and the registered
function appends the new K/V to each sequence's pages and runs attnd's paged prefill (causal)
or decode over them, RoPE off (the keys are already rotated). The ``attention_mask`` transformers
passes (None for a custom implementation since 4.53, a causal mask over the packed row before)
is ignored: attnd's plan is the mask.

Version differences handled: the registration (``AttentionInterface.register``, 4.50+, or the
``ALL_ATTENTION_FUNCTIONS`` dict of 4.48/4.49), the switch (``model.set_attn_implementation``
where it exists, else the config attribute every attention layer reads), and whether the model
really dispatches through the interface: every ``forward()`` block counts the calls and fails,
saying so, unless each layer called attnd exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from paged_batch import PagedBatch, StepLayout

__all__ = ["ATTN_NAME", "AttentionRoutingError", "register", "select_attention",
           "attention_implementation", "attnd_attention_forward", "AttndKV", "model_geometry"]

ATTN_NAME = "attnd"
MIN_TRANSFORMERS = "4.48"


class AttentionRoutingError(RuntimeError):
    """The model did not send its attention through the registered attnd function as expected."""


_ACTIVE: Optional["AttndKV"] = None  # the AttndKV whose forward() block is running
_names = itertools.count(1)


def _transformers_version() -> str:
    try:
        import transformers

        return str(transformers.__version__)
    except Exception:  # noqa: BLE001  (only for messages)
        return "unknown"


def register(name: str = ATTN_NAME) -> str:
    """Registers :func:`attnd_attention_forward` as transformers attention ``name``; returns how
    ("AttentionInterface.register" or "ALL_ATTENTION_FUNCTIONS[...]").

    Raises RuntimeError naming the installed version when transformers has no attention interface
    (before 4.48 each attention implementation was its own module class)."""
    import transformers

    interface = getattr(transformers, "AttentionInterface", None)
    if interface is None:
        try:
            from transformers.modeling_utils import AttentionInterface as interface  # noqa: N813
        except ImportError:
            interface = None
    if interface is not None and callable(getattr(interface, "register", None)):
        interface.register(name, attnd_attention_forward)
        return "AttentionInterface.register"
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        raise RuntimeError(
            f"transformers {_transformers_version()} has no attention interface (neither "
            "transformers.AttentionInterface nor transformers.modeling_utils."
            f"ALL_ATTENTION_FUNCTIONS): install transformers >= {MIN_TRANSFORMERS}") from None
    ALL_ATTENTION_FUNCTIONS[name] = attnd_attention_forward  # a plain dict in 4.48 / 4.49
    return "ALL_ATTENTION_FUNCTIONS[...]"


def _configs(model) -> List[Any]:
    """Every distinct config object the model's modules hold (the attention layers read theirs)."""
    seen: Dict[int, Any] = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "num_attention_heads") and id(c) not in seen:
            seen[id(c)] = c
    return list(seen.values())


def attention_implementation(model) -> str:
    """The attention implementation the model's config names."""
    return str(getattr(model.config, "_attn_implementation", "?"))


def select_attention(model, name: str) -> str:
    """Makes the model's attention layers use implementation ``name`` ("attnd", "sdpa", ...);
    returns how. ``model.set_attn_implementation`` where transformers has it (it validates the
    name), else (or where it refuses or only warns) the config attribute the layers read."""
    how = []
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter(name)
            how.append("set_attn_implementation")
        except Exception as e:  # noqa: BLE001  (version differences: fall back, and say so)
            how.append(f"set_attn_implementation refused ({type(e).__name__}: {e})")
    for c in _configs(model):
        if getattr(c, "_attn_implementation", None) != name:
            if hasattr(c, "_attn_implementation_internal"):
                c._attn_implementation_internal = name
            else:
                c._attn_implementation = name
            if "config" not in how:
                how.append("config")
    bad = [c for c in _configs(model) if getattr(c, "_attn_implementation", None) != name]
    if bad:
        raise AttentionRoutingError(
            f"transformers {_transformers_version()}: could not set attn_implementation={name!r} "
            f"(config says {getattr(bad[0], '_attn_implementation', None)!r})")
    return " + ".join(how)


def model_geometry(config) -> Dict[str, int]:
    """Layers, query heads, KV heads and head_dim of a Llama-family config."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return dict(num_layers=int(config.num_hidden_layers), num_qo_heads=heads,
                num_kv_heads=kv_heads, head_dim=head_dim)


def attnd_attention_forward(module, query, key, value, attention_mask=None, scaling=None,
                            dropout=0.0, **kwargs):
    """The attention function transformers calls for ``attn_implementation="attnd"``.

    query [1, Hq, n, D], key/value [1, Hkv, n, D] (RoPE applied) of the n packed new tokens of the
    running step; returns (o [1, n, Hq, D], None). Works only inside ``AttndKV.forward()``."""
    kv = _ACTIVE
    if kv is None:
        raise AttentionRoutingError(
            "attnd attention was called outside an AttndKV.forward() block: the model is set to "
            f"attn_implementation={ATTN_NAME!r} but no attnd step is running")
    return kv.attend(module, query, key, value, scaling, dropout, kwargs)


def _token_major(x):
    """[1, H, n, D] -> contiguous [n, H, D]: a torch tensor (a copy unless the layout already is
    token-major, as transformers' projections make it), or a numpy array (the CI test's)."""
    if hasattr(x, "contiguous"):
        return x[0].transpose(0, 1).contiguous()
    return np.ascontiguousarray(np.swapaxes(np.asarray(x)[0], 0, 1))


class AttndKV:
    """The KV cache of one batch in an attnd pool, and the attnd side of each forward step.

    Args:
        session: an attnd session (``client.session(...)``).
        config: the model's config (layers, heads, head_dim are read from it).
        batch_size: sequences in the batch.
        max_pages: pages of the pool (``PagedBatch.pages_for_run`` sizes a generation).
        page_size: tokens per page.
        kv_dtype: the pool's K/V dtype ("float16", "bfloat16"; "float32" on the CPU backend).
        name: pool name (default: unique per process).
        ipc_method: as attnd's wrappers ("driver" or "torch").
    """

    def __init__(self, session, config, batch_size: int, max_pages: int, *, page_size: int = 16,
                 kv_dtype: str = "float16", name: Optional[str] = None,
                 ipc_method: str = "driver"):
        import attnd

        geo = model_geometry(config)
        self.num_layers = geo["num_layers"]
        self.num_qo_heads = geo["num_qo_heads"]
        self.num_kv_heads = geo["num_kv_heads"]
        self.head_dim = geo["head_dim"]
        self.session = session
        self.pool = session.create_pool(
            name or f"hf-llama-{os.getpid()}-{next(_names)}", num_layers=self.num_layers,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, page_size=page_size,
            kv_dtype=kv_dtype, num_pages=max_pages)
        self.book = PagedBatch(batch_size, page_size)
        self._prefill = attnd.BatchPrefillWrapper(self.pool, ipc_method=ipc_method)
        self._decode = attnd.BatchDecodeWrapper(self.pool, ipc_method=ipc_method)
        self._wrapper = None
        self.layout: Optional[StepLayout] = None
        self.layers_called: List[int] = []
        self.attention_calls = 0
        self.steps = 0

    # -- steps -------------------------------------------------------------------------------
    def step(self, new_tokens: Sequence[int], kind: str) -> StepLayout:
        """Prepares one forward step: allocates the pages the new tokens need, advances the
        lengths and plans the attnd run ("prefill": causal over each sequence's new rows;
        "decode": one new token per sequence). Returns the step's layout (positions included)."""
        if kind not in ("prefill", "decode"):
            raise ValueError(f"kind must be 'prefill' or 'decode', not {kind!r}")
        if kind == "decode" and any(int(n) != 1 for n in new_tokens):
            raise ValueError(f"a decode step takes one token per sequence, not {list(new_tokens)}")
        need = self.book.plan_step(new_tokens)
        if sum(need):
            self.book.give_pages(need, self.pool.allocate(sum(need)))
        layout = self.book.advance(new_tokens)
        if kind == "prefill":
            self._prefill.plan(layout.kv_indptr, layout.kv_indices, layout.kv_last_page_len,
                               layout.qo_indptr, self.num_qo_heads, causal=True,
                               pos_encoding="none")
            self._wrapper = self._prefill
        else:
            self._decode.plan(layout.kv_indptr, layout.kv_indices, layout.kv_last_page_len,
                              self.num_qo_heads, pos_encoding="none")
            self._wrapper = self._decode
        self.layout = layout
        self.steps += 1
        return layout

    @contextlib.contextmanager
    def forward(self):
        """The block of one model forward over the planned step: the registered attention
        function runs attnd for this batch, and on exit every layer must have called it once."""
        global _ACTIVE
        if self.layout is None:
            raise RuntimeError("AttndKV.forward() before step()")
        if _ACTIVE is not None:
            raise RuntimeError("another AttndKV.forward() block is running")
        self.layers_called = []
        _ACTIVE = self
        try:
            yield self
        finally:
            _ACTIVE = None
        if sorted(self.layers_called) != list(range(self.num_layers)):
            raise AttentionRoutingError(
                f"transformers {_transformers_version()}: one forward of this "
                f"{self.num_layers}-layer model called attnd attention for layers "
                f"{self.layers_called}: the model does not dispatch its attention through "
                f"transformers' attention interface (needs transformers >= {MIN_TRANSFORMERS} and "
                "a model that uses ALL_ATTENTION_FUNCTIONS)")

    def attend(self, module, query, key, value, scaling, dropout, kwargs):
        """One layer's attention of the running step (see attnd_attention_forward)."""
        layout = self.layout
        layer = getattr(module, "layer_idx", None)
        if layer is None or not 0 <= int(layer) < self.num_layers:
            raise AttentionRoutingError(f"attention module {type(module).__name__} has layer_idx "
                                        f"{layer!r} (the pool has {self.num_layers} layers)")
        layer = int(layer)
        if dropout and getattr(module, "training", False):
            raise ValueError("attnd attention is inference only (dropout in training mode)")
        for unsupported in ("sliding_window", "softcap", "s_aux"):
            if kwargs.get(unsupported) is not None:
                raise NotImplementedError(f"attnd_hf does not map transformers' {unsupported} "
                                          "(a Llama has none)")
        if len(query.shape) != 4 or query.shape[0] != 1:
            raise ValueError("attnd attention takes the batch packed in one row (input_ids [1, "
                             f"tokens]); got query of shape {tuple(query.shape)}")
        n = int(query.shape[2])
        if n != layout.qo_tokens:
            raise ValueError(f"layer {layer}: {n} query rows, the planned step has "
                             f"{layout.qo_tokens} (call step() with this forward's tokens)")
        if int(key.shape[2]) != n or int(value.shape[2]) != n:
            raise ValueError(f"layer {layer}: key has {key.shape[2]} rows for {n} new tokens: "
                             "call the model with use_cache=False (attnd holds the KV cache)")
        if (int(query.shape[1]) != self.num_qo_heads or int(key.shape[1]) != self.num_kv_heads
                or int(query.shape[3]) != self.head_dim):
            raise ValueError(f"layer {layer}: query {tuple(query.shape)} / key {tuple(key.shape)} "
                             f"do not match the pool ({self.num_qo_heads} q heads, "
                             f"{self.num_kv_heads} KV heads, head_dim {self.head_dim})")
        q, k, v = _token_major(query), _token_major(key), _token_major(value)
        o = self._wrapper.run(q, layer, k=k, v=v, sm_scale=scaling)   # [n, Hq, D], q's dtype
        self.layers_called.append(layer)
        self.attention_calls += 1
        return o[None], None                        # [1, n, Hq, D], no attention weights

    def close(self) -> None:
        """Deletes the plans and the pool (the daemon also frees them with the session)."""
        for w in (self._prefill, self._decode):
            w.delete()
        try:
            self.pool.delete()
        except Exception:  # noqa: BLE001  (the session may be gone; the daemon cleans up)
            pass
