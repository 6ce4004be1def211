"""FlashInfer's arguments in attnd's terms: pure functions, no torch, no daemon.

Everything the drop-in decides before it touches a tensor lives here, so that it is testable
without a GPU (tests/python/flashinfer_dropin_test.py): option names and defaults, the page table
checks (paged, cascade levels, ragged), which arguments attnd cannot honour, the KV-cache tensor
-> (pool, layer) resolution (on plain metadata: pointers, shapes, strides), the LSE base.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from attnd import _requests as _rq
from attnd import tensors as _t

LOG2E = 1.4426950408889634  # log2(e): natural-log LSE * LOG2E = base-2 LSE (FlashInfer's)
LN2 = 0.6931471805599453    # ln(2):   base-2 LSE * LN2 = natural-log LSE (attnd's wire API)


class AttndFlashInferError(ValueError):
    """A FlashInfer call that attnd can read but not run as given (bad shapes, a cache that is
    not an attnd pool, ...). A ValueError, like FlashInfer's own argument errors."""


# --- options ---------------------------------------------------------------------------------

def pos_encoding(mode: Any) -> str:
    """FlashInfer's pos_encoding_mode ("NONE" / "ROPE_LLAMA" / "ALIBI", or an enum with that
    ``name``) -> attnd's pos_encoding ("none" / "rope_llama")."""
    name = getattr(mode, "name", mode)
    key = str(name).upper() if name is not None else "NONE"
    if key == "NONE":
        return "none"
    if key == "ROPE_LLAMA":
        return "rope_llama"
    if key == "ALIBI":
        raise NotImplementedError(
            "pos_encoding_mode='ALIBI': attnd has no ALiBi bias (its kernels support 'NONE' and "
            "'ROPE_LLAMA')")
    raise ValueError(f"pos_encoding_mode must be 'NONE', 'ROPE_LLAMA' or 'ALIBI', got {mode!r}")


def check_kv_layout(kv_layout: Any) -> str:
    """Only "NHD": an attnd pool is [num_pages][2][page_size][num_kv_heads][head_dim] per layer."""
    if kv_layout == "NHD":
        return "NHD"
    if kv_layout == "HND":
        raise NotImplementedError(
            "kv_layout='HND': attnd pools are NHD only ([num_pages, 2, page_size, num_kv_heads, "
            "head_dim] per layer); use kv_layout='NHD'")
    raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")


def dtype_name(dtype: Any, default: str = "float16") -> str:
    """A FlashInfer dtype argument (a torch dtype or its name; None = ``default``) as attnd's
    name: "float16", "bfloat16", "float32", "float8_e4m3fn"."""
    if dtype is None:
        return default
    try:
        return _t.dtype_name(dtype)
    except ValueError:
        raise ValueError(f"unsupported dtype {dtype!r}: attnd runs float16 and bfloat16 "
                         "(float32 on its CPU backend)") from None


def window(window_left: Any) -> Optional[int]:
    """window_left -> attnd's window (None = off). FlashInfer: -1 (or any negative) = no window;
    w >= 0: a query at position p sees keys p - w .. p (its upper bound is the causal one)."""
    if window_left is None:
        return None
    w = int(window_left)
    return w if w >= 0 else None


def soft_cap(logits_soft_cap: Any) -> Optional[float]:
    """logits_soft_cap -> attnd's (None = off). Both compute cap * tanh(sm_scale * q.k / cap)."""
    if logits_soft_cap is None:
        return None
    cap = float(logits_soft_cap)
    return cap if cap > 0.0 else None


def _scalar(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if hasattr(value, "numel") or hasattr(value, "shape"):  # a tensor: per-head fp8 scales
        raise NotImplementedError(
            f"{name} as a tensor (FlashInfer's fp8 calibration): attnd takes float scales only")
    return float(value)


def sm_scale_for(sm_scale: Any, head_dim: int, q_scale: Any = None, k_scale: Any = None) -> float:
    """The softmax scale a run uses: sm_scale (None = 1/sqrt(head_dim)) times q_scale and
    k_scale when given, as FlashInfer folds them in."""
    scale = 1.0 / math.sqrt(int(head_dim)) if sm_scale is None else float(sm_scale)
    for name, s in (("q_scale", q_scale), ("k_scale", k_scale)):
        f = _scalar(name, s)
        if f is not None:
            scale *= f
    return scale


def v_scale_for(v_scale: Any) -> Optional[float]:
    """The output multiplier (FlashInfer multiplies o by v_scale); None when it is 1 or unset."""
    f = _scalar("v_scale", v_scale)
    return None if f is None or f == 1.0 else f


def check_lse_options(lse_base: str, lse_layout: str) -> None:
    if lse_base not in ("log2", "ln"):
        raise ValueError(f"lse_base must be 'log2' or 'ln', got {lse_base!r}")
    if lse_layout not in ("NH", "HN"):
        raise ValueError(f"lse_layout must be 'NH' or 'HN', got {lse_layout!r}")


def lse_factor(lse_base: str = "log2") -> Optional[float]:
    """What attnd's natural-log LSE is multiplied by to give the asked base (None: as it is)."""
    check_lse_options(lse_base, "NH")
    return LOG2E if lse_base == "log2" else None


def reject_unsupported(api: str, given: Dict[str, Any], defaults: Dict[str, Any]) -> None:
    """Raises NotImplementedError for the first argument of ``given`` that is not its default
    in ``defaults`` (the FlashInfer arguments attnd cannot honour)."""
    for name, default in defaults.items():
        value = given.get(name, default)
        if value is default or _plain_equal(value, default):
            continue
        raise NotImplementedError(f"{api}: {name}={_short(value)} is not supported by attnd "
                                  f"(only the default, {default!r}); see client/python/README.md, "
                                  "'FlashInfer drop-in'")


def _plain_equal(a: Any, b: Any) -> bool:
    if a is None or b is None or hasattr(a, "shape"):
        return a is b
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def _short(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"<tensor of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Arguments accepted and ignored: kernel selection, host-side hints and scheduling knobs that
# attnd decides itself (documented in client/python/README.md, checked by the CI test).
IGNORED_ARGUMENTS = (
    "float_workspace_buffer", "int_workspace_buffer", "backend", "use_tensor_cores",
    "enable_pdl", "non_blocking", "use_fp16_qk_reduction", "fixed_split_size",
    "disable_split_kv", "block_tables", "seq_lens", "seq_lens_q", "max_token_per_sequence",
    "max_sequence_kv", "uniform_q_len", "qo_indptr_cpu", "kv_indptr_cpu", "use_fp16_softmax",
    "uses_spcompress", "v_indptr", "o_indptr",
)


# --- page tables -----------------------------------------------------------------------------

class PageTable(NamedTuple):
    """A validated batch: CSR page table, query rows, per-request lengths (plain int lists)."""

    kv_indptr: List[int]
    kv_indices: List[int]
    kv_last_page_len: List[int]
    qo_indptr: List[int]
    kv_lens: List[int]
    page_size: int

    @property
    def batch_size(self) -> int:
        return len(self.kv_last_page_len)

    @property
    def qo_tokens(self) -> int:
        return self.qo_indptr[-1]

    @property
    def max_page(self) -> int:
        return max(self.kv_indices) if self.kv_indices else -1


def _ints(name: str, values: Any) -> List[int]:
    try:
        return _rq.int32_list(name, values)
    except ValueError as e:
        raise AttndFlashInferError(str(e)) from None


class TableNames(NamedTuple):
    """What a page table's fields are called in messages: the wrappers' own arguments, or one
    level's entries of MultiLevelCascadeAttentionWrapper.plan's lists."""

    indptr: str = "indptr"
    indices: str = "indices"
    last_page_len: str = "last_page_len"
    qo_indptr: str = "qo_indptr"
    unit: str = "request"        # what one entry of the table is
    count: str = "batch_size"    # how many there are
    where: str = ""              # said after "request b" in the qo_len > kv_len message

    @classmethod
    def level(cls, level: int, last: bool) -> "TableNames":
        """Level ``level`` of a cascade plan: its requests (the last level) or groups."""
        return cls(f"paged_kv_indptr_arr[{level}]", f"paged_kv_indices_arr[{level}]",
                   f"paged_kv_last_page_len[{level}]", f"qo_indptr_arr[{level}]",
                   "request" if last else "group", "batch_size" if last else "num_groups",
                   f" of the last level (qo_indptr_arr[{level}], paged_kv_indptr_arr[{level}])"
                   if last else "")


def _paged_kv(kv_indptr: Any, kv_indices: Any, kv_last_page_len: Any, page_size: int,
              names: TableNames) -> Tuple[List[int], List[int], List[int], List[int]]:
    """The page half of a table, checked: (indptr, indices[:indptr[-1]], last_page_len, kv_lens).
    Every entry (request or group) has at least one page, each last_page_len is in
    1..page_size (attnd's rules for a plan's own table and for a cascade level's alike)."""
    ip, ix, lp, unit = names.indptr, names.indices, names.last_page_len, names.unit
    indptr = _ints(ip, kv_indptr)
    indices = _ints(ix, kv_indices)
    last = _ints(lp, kv_last_page_len)
    n = len(last)
    if n < 1:
        raise AttndFlashInferError(f"the {'batch' if unit == 'request' else 'level'} is empty "
                                   f"({lp} has no entries)")
    if len(indptr) != n + 1:
        raise AttndFlashInferError(f"{ip} has {len(indptr)} entries, expected {names.count} + 1 "
                                   f"= {n + 1} ({names.count} = len({lp}))")
    if indptr[0] != 0:
        raise AttndFlashInferError(f"{ip}[0]={indptr[0]} must be 0")
    kv_lens = []
    for b in range(n):
        pages = indptr[b + 1] - indptr[b]
        if pages < 1:
            raise AttndFlashInferError(
                f"{unit} {b} has {pages} pages ({ip}[{b}]={indptr[b]}, {ip}[{b + 1}]="
                f"{indptr[b + 1]}): every {unit} needs at least one page")
        if not 1 <= last[b] <= page_size:
            raise AttndFlashInferError(f"{lp}[{b}]={last[b]} is outside 1..page_size "
                                       f"({page_size})")
        kv_lens.append((pages - 1) * page_size + last[b])
    if len(indices) < indptr[-1]:
        raise AttndFlashInferError(f"{ix} has {len(indices)} entries, {ip}[-1] = "
                                   f"{indptr[-1]} needs that many")
    indices = indices[:indptr[-1]]
    for i, page in enumerate(indices):
        if page < 0:
            raise AttndFlashInferError(f"{ix}[{i}]={page} is negative")
    return indptr, indices, last, kv_lens


def page_table(kv_indptr: Any, kv_indices: Any, kv_last_page_len: Any, page_size: int,
               qo_indptr: Any = None, *, q_len_per_req: int = 1,
               names: TableNames = TableNames()) -> PageTable:
    """Checks a FlashInfer page table and returns it as lists.

    Args:
        kv_indptr: [batch + 1], from 0, each request at least one page.
        kv_indices: at least kv_indptr[-1] page ids (entries beyond it are ignored, as FlashInfer
            reads only that many).
        kv_last_page_len: [batch] in 1..page_size.
        page_size: tokens per page.
        qo_indptr: prefill: [batch + 1] query rows; None for decode (q_len_per_req per request).
        q_len_per_req: decode only: query tokens per request.
        names: what the fields are called in messages.

    Raises AttndFlashInferError (a ValueError) naming the field; attnd's own rule (a request's
    query tokens are its last tokens, so qo_len <= kv_len) included.
    """
    page_size = int(page_size)
    if page_size < 1:
        raise AttndFlashInferError(f"page_size must be >= 1, got {page_size}")
    indptr, indices, last, kv_lens = _paged_kv(kv_indptr, kv_indices, kv_last_page_len,
                                               page_size, names)
    batch = len(last)
    qn = names.qo_indptr
    if qo_indptr is None:
        n = int(q_len_per_req)
        if n < 1:
            raise AttndFlashInferError(f"q_len_per_req must be >= 1, got {n}")
        qo = [b * n for b in range(batch + 1)]
    else:
        qo = _ints(qn, qo_indptr)
        if len(qo) != batch + 1:
            raise AttndFlashInferError(f"{qn} has {len(qo)} entries, expected batch_size + 1 "
                                       f"= {batch + 1}")
        if qo[0] != 0:
            raise AttndFlashInferError(f"{qn}[0]={qo[0]} must be 0")
    for b in range(batch):
        qo_len = qo[b + 1] - qo[b]
        if qo_len < 0:
            raise AttndFlashInferError(f"{qn} must be non-decreasing: {qn}[{b + 1}]="
                                       f"{qo[b + 1]} < {qn}[{b}]={qo[b]}")
        if qo_len > kv_lens[b]:
            raise AttndFlashInferError(
                f"request {b}{names.where} has qo_len={qo_len} > kv_len={kv_lens[b]}: attnd's "
                "query tokens are the last tokens of their sequence (append the new K/V to the "
                "cache first, then plan with the lengths after the append)")
    if qo[-1] < 1:
        raise AttndFlashInferError(f"the batch has no query tokens ({qn}[-1] = 0)")
    return PageTable(indptr, indices, last, qo, kv_lens, page_size)


def written_pages(table: PageTable) -> Dict[int, int]:
    """page -> request, for the pages holding some request's query tokens (its last qo_len kv
    positions): the pages the daemon's appends write (validation.cc, WrittenSlots)."""
    out: Dict[int, int] = {}
    ps = table.page_size
    for b in range(table.batch_size):
        qo_len = table.qo_indptr[b + 1] - table.qo_indptr[b]
        if qo_len <= 0:
            continue
        kv_len = table.kv_lens[b]
        for slot in range((kv_len - qo_len) // ps, (kv_len - 1) // ps + 1):
            out.setdefault(table.kv_indices[table.kv_indptr[b] + slot], b)
    return out


# attnd's limits on cascade plans (server/core/request_rules.h kMaxCascadeLevels, validation.h
# kMaxBatchSize: the groups of one level).
MAX_SHARED_LEVELS = 16
MAX_GROUPS = 1 << 16


def cascade_tables(qo_indptr_arr: Any, paged_kv_indptr_arr: Any, paged_kv_indices_arr: Any,
                   paged_kv_last_page_len: Any, page_size: int,
                   num_levels: int) -> Tuple[PageTable, Tuple[PageTable, ...]]:
    """MultiLevelCascadeAttentionWrapper.plan's per-level lists -> (the last level's table, the
    shared levels' tables, outermost first), checked against attnd's cascade rules (attnd.proto
    CascadeLevel; server/core/request_rules.cc CheckCascadeLevels) before anything is sent.

    FlashInfer plans every level as a prefill batch of its own: level l's qo_indptr splits the
    query rows into its "requests" (here: groups), each attending that level's pages, causal
    only on the last level. The last level is the batch (attnd's plan table: its requests, their
    own pages, qo_len <= kv_len). Shared level l is a CascadeLevel whose groups are
    qo_indptr_arr[l]'s row ranges; attnd's extra rules, each refused naming the entry: every
    group has at least one page; qo_indptr_arr[l] runs from 0 to the batch's query rows and
    each entry is a request boundary of the last level (a group holds whole requests); a level
    names no page that holds query tokens of the last level (those are the pages appends write;
    a level is read only). A shared level's group may have more rows than keys (no causal mask
    there) or no rows at all. Table entries may be longer than indptr[-1] (the rest is ignored,
    as FlashInfer reads only that many).
    """
    lists = (("qo_indptr_arr", qo_indptr_arr), ("paged_kv_indptr_arr", paged_kv_indptr_arr),
             ("paged_kv_indices_arr", paged_kv_indices_arr),
             ("paged_kv_last_page_len", paged_kv_last_page_len))
    for name, value in lists:
        if not isinstance(value, (list, tuple)) or len(value) != num_levels:
            got = f"{len(value)} entries" if isinstance(value, (list, tuple)) else \
                type(value).__name__
            raise AttndFlashInferError(f"{name} must be a list of num_levels = {num_levels} "
                                       f"tensors (one per level), got {got}")
    page_size = int(page_size)
    top = num_levels - 1
    table = page_table(paged_kv_indptr_arr[top], paged_kv_indices_arr[top],
                       paged_kv_last_page_len[top], page_size, qo_indptr_arr[top],
                       names=TableNames.level(top, last=True))
    boundaries = set(table.qo_indptr)
    written = written_pages(table)
    levels = []
    for lv in range(top):
        names = TableNames.level(lv, last=False)
        indptr, indices, last, kv_lens = _paged_kv(
            paged_kv_indptr_arr[lv], paged_kv_indices_arr[lv], paged_kv_last_page_len[lv],
            page_size, names)
        groups, qn = len(last), names.qo_indptr
        if groups > MAX_GROUPS:
            raise AttndFlashInferError(f"level {lv} has {groups} groups (len({names.last_page_len}"
                                       f")); attnd takes at most {MAX_GROUPS} per level")
        qo = _ints(qn, qo_indptr_arr[lv])
        if len(qo) != groups + 1:
            raise AttndFlashInferError(f"{qn} has {len(qo)} entries, expected num_groups + 1 = "
                                       f"{groups + 1} (num_groups = len({names.last_page_len}))")
        if qo[0] != 0 or qo[-1] != table.qo_tokens:
            raise AttndFlashInferError(
                f"{qn} runs from {qo[0]} to {qo[-1]}; it must cover the batch's query rows 0 .. "
                f"{table.qo_tokens} (qo_indptr_arr[{top}][-1])")
        for g in range(groups + 1):
            if g and qo[g] < qo[g - 1]:
                raise AttndFlashInferError(f"{qn} must be non-decreasing: {qn}[{g}]={qo[g]} < "
                                           f"{qn}[{g - 1}]={qo[g - 1]}")
            if qo[g] not in boundaries:
                raise AttndFlashInferError(
                    f"{qn}[{g}]={qo[g]} is not a request boundary of the last level "
                    f"(qo_indptr_arr[{top}]): attnd's shared levels group whole requests, so "
                    "every entry must be one of the last level's qo_indptr entries")
        for i, page in enumerate(indices):
            if page in written:
                raise AttndFlashInferError(
                    f"{names.indices}[{i}]={page}: page {page} holds query tokens of request "
                    f"{written[page]} of the last level (paged_kv_indices_arr[{top}]); attnd "
                    "appends there, and a shared level's pages are read only")
        levels.append(PageTable(indptr, indices, last, qo, kv_lens, page_size))
    return table, tuple(levels)


def packed_mask_offsets(qo_lens: Sequence[int], kv_lens: Sequence[int]) -> List[int]:
    """Where FlashInfer 0.7.4's paged plan(packed_custom_mask=...) reads each request's packed
    bits: at byte mask_indptr[b] = sum_{c<b} qo_len_c * kv_len_c (_compute_page_mask_indptr: the
    requests' *bit* offsets, which the kernel adds to the mask pointer as a byte offset; only
    plan(custom_mask=...) turns them into byte offsets, with segment_packbits). One request: 0."""
    out, acc = [], 0
    for q, k in zip(qo_lens, kv_lens):
        out.append(acc)
        acc += int(q) * int(k)
    return out


def custom_mask_wire(api: str, qo_lens: Sequence[int], kv_lens: Sequence[int],
                     custom_mask: Any = None, packed_custom_mask: Any = None) -> Optional[bytes]:
    """FlashInfer's custom mask arguments -> attnd's CreatePlanRequest.custom_mask (None: none).

    custom_mask (FlashInfer 0.7.4's plan()): a boolean tensor, flattened, of
    sum_b qo_len_b * kv_len_b elements: request b's [qo_len_b, kv_len_b] block (row-major; row i is
    the query at kv position kv_len_b - qo_len_b + i, True = visible) after request b - 1's.
    FlashInfer packs it with segment_packbits(custom_mask, mask_indptr, bitorder="little"):
    each request's bits on their own, ceil(qo_len_b * kv_len_b / 8) bytes, which is attnd's wire
    form; it is packed the same way here (on the host). Exactly that many elements (else
    AttndFlashInferError); integer 0/1 masks are taken as booleans (nonzero = visible).

    packed_custom_mask (uint8; wins over custom_mask): read as FlashInfer's kernel reads it:
    request b's bits, packed little-endian (numpy.packbits(mask_b.reshape(-1),
    bitorder="little")), start at byte packed_mask_offsets(...)[b] (its bit offset). With one
    request that is simply packbits of its mask; with more, FlashInfer needs each request's
    packed bytes placed at that offset (the gaps are never read), and so does attnd. A shorter
    tensor is refused (AttndFlashInferError naming packed_custom_mask and the bytes needed);
    bytes past the last request's are ignored, as FlashInfer ignores them.
    """
    segs = [int(q) * int(k) for q, k in zip(qo_lens, kv_lens)]
    if packed_custom_mask is not None:
        arr = _rq._host_array(packed_custom_mask).reshape(-1)
        if arr.dtype != np.uint8:
            raise AttndFlashInferError(f"{api}: packed_custom_mask must be uint8 (packbits "
                                       f"output), got {arr.dtype}")
        offsets = packed_mask_offsets(qo_lens, kv_lens)
        need = max([o + (n + 7) // 8 for o, n in zip(offsets, segs)] or [0])
        if arr.size < need:
            raise AttndFlashInferError(
                f"{api}: packed_custom_mask has {arr.size} bytes, needs at least {need}: "
                "FlashInfer 0.7.4's paged plan() reads request b's packed bits (ceil(qo_len * "
                "kv_len / 8) bytes, packbits little-endian) from byte sum_{c<b} qo_len_c * "
                "kv_len_c" + (" (one request: from byte 0)" if len(segs) == 1 else
                              "; pass custom_mask= to have the mask packed"))
        return b"".join(arr[o:o + (n + 7) // 8].tobytes() for o, n in zip(offsets, segs))
    if custom_mask is None:
        return None
    flat = _rq._host_array(custom_mask).reshape(-1)
    if flat.dtype != np.bool_:
        if flat.size and flat.dtype.kind not in "biu":
            raise AttndFlashInferError(f"{api}: custom_mask must be boolean, got {flat.dtype}")
        flat = flat != 0
    if flat.size != sum(segs):
        raise AttndFlashInferError(
            f"{api}: custom_mask has {flat.size} elements, expected {sum(segs)} (sum over "
            "requests of qo_len * kv_len, each request's [qo_len, kv_len] mask flattened)")
    parts, start = [], 0
    for n in segs:
        parts.append(np.packbits(flat[start:start + n], bitorder="little").tobytes())
        start += n
    return b"".join(parts)


def check_heads(num_qo_heads: Any, num_kv_heads: Any, head_dim: Any) -> Tuple[int, int, int]:
    hq, hkv, d = int(num_qo_heads), int(num_kv_heads), int(head_dim)
    if hq < 1 or hkv < 1 or d < 1:
        raise AttndFlashInferError(f"num_qo_heads={hq}, num_kv_heads={hkv} and head_dim={d} must "
                                   "be positive")
    if hq % hkv:
        raise AttndFlashInferError(f"num_qo_heads={hq} must be a multiple of num_kv_heads={hkv}")
    return hq, hkv, d


def seq_lens(kv_indptr: Sequence[int], kv_last_page_len: Sequence[int],
             page_size: int) -> List[int]:
    """FlashInfer's get_seq_lens on lists: max(pages - 1, 0) * page_size + last_page_len."""
    return [max(kv_indptr[b + 1] - kv_indptr[b] - 1, 0) * int(page_size) + int(kv_last_page_len[b])
            for b in range(len(kv_last_page_len))]


class RaggedLayout(NamedTuple):
    """A validated ragged batch: request b's query rows qo_indptr[b]:qo_indptr[b+1] and key /
    value rows kv_indptr[b]:kv_indptr[b+1] (plain int lists)."""

    qo_indptr: List[int]
    kv_indptr: List[int]

    @property
    def batch_size(self) -> int:
        return len(self.qo_indptr) - 1

    @property
    def qo_tokens(self) -> int:
        return self.qo_indptr[-1]

    @property
    def kv_tokens(self) -> int:
        return self.kv_indptr[-1]


def ragged_layout(qo_indptr: Any, kv_indptr: Any) -> RaggedLayout:
    """Checks BatchPrefillWithRaggedKVCacheWrapper.plan's indptrs: both [batch_size + 1] with
    batch_size >= 1, from 0, never decreasing, at least one query row. A request may have more
    query rows than keys (as in FlashInfer: the first rows sit before the sequence, so a causal
    mask leaves them no keys: o = 0, lse = -inf) or no keys at all."""
    qo = _ints("qo_indptr", qo_indptr)
    kv = _ints("kv_indptr", kv_indptr)
    if len(qo) != len(kv) or len(qo) < 2:
        raise AttndFlashInferError(f"qo_indptr ({len(qo)} entries) and kv_indptr ({len(kv)}) "
                                   "must both be [batch_size + 1], batch_size >= 1")
    for name, ind in (("qo_indptr", qo), ("kv_indptr", kv)):
        if ind[0] != 0:
            raise AttndFlashInferError(f"{name}[0]={ind[0]} must be 0")
        for b in range(len(ind) - 1):
            if ind[b + 1] < ind[b]:
                raise AttndFlashInferError(f"{name} must be non-decreasing: {name}[{b + 1}]="
                                           f"{ind[b + 1]} < {name}[{b}]={ind[b]}")
    if qo[-1] < 1:
        raise AttndFlashInferError("the batch has no query tokens (qo_indptr[-1] = 0)")
    return RaggedLayout(qo, kv)


# --- the KV cache tensor -> (pool, layer) --------------------------------------------------------

class TensorMeta(NamedTuple):
    """What resolution needs of a tensor: address, shape, element strides, dtype, device."""

    ptr: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    itemsize: int
    dtype: str
    device: int


class PoolLayout(NamedTuple):
    """Where an attnd pool is mapped in this process and how it is laid out (bytes)."""

    key: Any               # whatever the caller uses to find its pool again
    base_ptr: int          # client address of layer 0, page 0, K
    num_layers: int
    num_pages: int
    page_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    itemsize: int
    layer_stride: int
    page_stride: int
    kv_stride: int
    token_stride: int
    head_stride: int
    device: int

    @property
    def end_ptr(self) -> int:
        return self.base_ptr + self.num_layers * self.layer_stride

    def layer_strides(self) -> Tuple[int, int, int, int, int]:
        """Element strides of one layer [num_pages, 2, page_size, num_kv_heads, head_dim]."""
        e = self.itemsize
        return (self.page_stride // e, self.kv_stride // e, self.token_stride // e,
                self.head_stride // e, 1)


class ResolvedCache(NamedTuple):
    layout: PoolLayout
    layer: int
    num_pages: int  # pages visible through the tensor (<= the pool's)


NOT_A_POOL = (
    "paged_kv_cache is not memory of an attnd pool of this context: attnd runs attention over "
    "its own pools, so the cache must be one (allocate it with "
    "attnd.flashinfer.allocate_paged_kv_cache(...) and pass cache[layer], or "
    "(cache[layer][:, 0], cache[layer][:, 1])); a tensor the engine allocated itself cannot be "
    "read by the daemon")


def _same_strides(shape: Sequence[int], got: Sequence[int], want: Sequence[int]) -> bool:
    # torch gives size-1 dimensions arbitrary strides; they address nothing.
    return len(got) == len(want) and all(n == 1 or g == w for n, g, w in zip(shape, got, want))


def resolve_kv_cache(cache: Any, layouts: Iterable[PoolLayout]) -> ResolvedCache:
    """Finds which pool and layer a FlashInfer paged_kv_cache argument is.

    Args:
        cache: a TensorMeta (the single 5-D tensor [pages, 2, page_size, H, D]) or a pair of
            TensorMeta (k [pages, page_size, H, D], v [pages, page_size, H, D]).
        layouts: the pools mapped in this process.

    The tensor must be exactly one layer of a pool (from page 0; fewer pages than the pool's is
    fine), with the pool's strides.
    """
    pair = isinstance(cache, (tuple, list)) and not isinstance(cache, TensorMeta)
    if pair:
        if len(cache) != 2:
            raise AttndFlashInferError(f"paged_kv_cache tuple must be (k_cache, v_cache), got "
                                       f"{len(cache)} tensors")
        k, v = cache
    else:
        k, v = cache, None
    for layout in layouts:
        if not (layout.base_ptr <= k.ptr < layout.end_ptr and k.device == layout.device):
            continue
        return _resolve_in(layout, k, v, pair)
    raise AttndFlashInferError(NOT_A_POOL)


def _resolve_in(layout: PoolLayout, k: TensorMeta, v: Optional[TensorMeta],
                pair: bool) -> ResolvedCache:
    ps, nkv, hd = layout.page_size, layout.num_kv_heads, layout.head_dim
    page_s, kv_s, tok_s, head_s, _ = layout.layer_strides()
    offset = k.ptr - layout.base_ptr
    layer, rem = divmod(offset, layout.layer_stride)
    what = "(k_cache, v_cache)" if pair else "paged_kv_cache"
    expect = (f"{what} must be one layer of the pool, from its first page: cache[layer] of "
              "allocate_paged_kv_cache's [num_layers, num_pages, 2, page_size, num_kv_heads, "
              "head_dim] tensor" + (", split as (cache[layer][:, 0], cache[layer][:, 1])"
                                    if pair else ""))
    if rem != 0:
        raise AttndFlashInferError(f"{expect}; this one starts {rem} bytes into layer {layer}")
    if k.dtype != layout.dtype:
        raise AttndFlashInferError(f"{what} has dtype {k.dtype}, the pool holds {layout.dtype}")
    if pair:
        want_shape = (ps, nkv, hd)
        want_strides = (page_s, tok_s, head_s, 1)
        for name, t in (("k_cache", k), ("v_cache", v)):
            if len(t.shape) != 4 or tuple(t.shape[1:]) != want_shape or not _same_strides(
                    t.shape, t.strides, want_strides):
                raise AttndFlashInferError(
                    f"{expect}; {name} has shape {tuple(t.shape)} and strides {tuple(t.strides)}, "
                    f"expected [pages<={layout.num_pages}, {ps}, {nkv}, {hd}] with strides "
                    f"{want_strides}")
        if v.ptr != k.ptr + layout.kv_stride or v.shape[0] != k.shape[0] or v.dtype != k.dtype:
            raise AttndFlashInferError(f"{expect}; v_cache is not the V half of k_cache's layer")
        pages = int(k.shape[0])
    else:
        want_shape = (2, ps, nkv, hd)
        want_strides = (page_s, kv_s, tok_s, head_s, 1)
        if len(k.shape) != 5 or tuple(k.shape[1:]) != want_shape or not _same_strides(
                k.shape, k.strides, want_strides):
            raise AttndFlashInferError(
                f"{expect}; got shape {tuple(k.shape)} and strides {tuple(k.strides)}, expected "
                f"[pages<={layout.num_pages}, 2, {ps}, {nkv}, {hd}] with strides {want_strides}")
        pages = int(k.shape[0])
    if not 1 <= pages <= layout.num_pages:
        raise AttndFlashInferError(f"{what} has {pages} pages, the pool {layout.num_pages}")
    return ResolvedCache(layout, int(layer), pages)


def check_plan_against_cache(api: str, table: PageTable, num_kv_heads: int, head_dim: int,
                             kv_dtype: str, resolved: ResolvedCache,
                             max_page: Optional[int] = None) -> None:
    """The planned geometry must be the cache's, and every page the plan names (max_page:
    the largest, default the table's; a cascade plan's levels included) one of its pages."""
    lay = resolved.layout
    for name, planned, actual in (("num_kv_heads", num_kv_heads, lay.num_kv_heads),
                                  ("head_dim", head_dim, lay.head_dim),
                                  ("page_size", table.page_size, lay.page_size),
                                  ("kv_data_type", kv_dtype, lay.dtype)):
        if planned != actual:
            raise AttndFlashInferError(f"{api}: planned {name}={planned}, but paged_kv_cache has "
                                       f"{name}={actual}")
    page = table.max_page if max_page is None else max_page
    if page >= resolved.num_pages:
        raise AttndFlashInferError(f"{api}: the plan names page {page}, paged_kv_cache "
                                   f"has {resolved.num_pages} pages")
