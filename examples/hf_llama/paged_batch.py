"""Page bookkeeping and token positions of a batch of sequences in one attnd pool (no I/O, no
torch).

A batch is a list of sequences. Sequence ``b`` holds ``lengths[b]`` tokens, token ``i`` at KV
position ``i`` in page ``pages[b][i // page_size]``, slot ``i % page_size``. Every forward pass of
the model is one *step*: each sequence gets ``new_tokens[b]`` new tokens (prefill: the whole
prompt; decode: one), which the model sees packed into one row, sequence after sequence:

    step rows:  [ seq 0's new tokens | seq 1's new tokens | ... ]       qo_indptr splits them

``PagedBatch.plan_step(new_tokens)`` says how many pages each sequence still needs;
``give_pages`` hands it the page ids the pool allocated; ``advance`` then returns the
:class:`StepLayout` of the step: the CSR page table attnd plans (lengths *after* the new tokens,
which attnd appends before it attends), ``qo_indptr``, the RoPE position of every packed row, and
the row of each sequence's last token (whose logits pick its next token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

__all__ = ["StepLayout", "PagedBatch", "pages_for", "pack_rows"]


def pages_for(num_tokens: int, page_size: int) -> int:
    """Pages that hold ``num_tokens`` tokens."""
    if page_size <= 0:
        raise ValueError(f"page_size={page_size} must be positive")
    if num_tokens < 0:
        raise ValueError(f"num_tokens={num_tokens} must be >= 0")
    return (num_tokens + page_size - 1) // page_size


def pack_rows(new_tokens: Sequence[int], start_lengths: Sequence[int]):
    """(qo_indptr, positions, last_rows) of a step that adds ``new_tokens[b]`` tokens to sequence
    ``b``, which held ``start_lengths[b]`` tokens before it.

    positions: the KV position of every packed row (sequence b's rows are start_lengths[b] ..
    start_lengths[b] + new_tokens[b] - 1); last_rows[b]: the packed row of b's last new token."""
    if len(new_tokens) != len(start_lengths):
        raise ValueError(f"{len(new_tokens)} new-token counts for {len(start_lengths)} sequences")
    qo_indptr = [0]
    positions: List[int] = []
    for b, (n, start) in enumerate(zip(new_tokens, start_lengths)):
        if n <= 0:
            raise ValueError(f"sequence {b}: new_tokens={n} must be >= 1 (attnd plans need "
                             "qo_len >= 1)")
        positions.extend(range(start, start + n))
        qo_indptr.append(qo_indptr[-1] + n)
    last_rows = [end - 1 for end in qo_indptr[1:]]
    return qo_indptr, positions, last_rows


@dataclass(frozen=True)
class StepLayout:
    """One forward step of the batch, in attnd's terms.

    kv_indptr, kv_indices, kv_last_page_len: the CSR page table with the lengths after the step.
    qo_indptr: the packed rows of each sequence ([0, n0, n0 + n1, ...]).
    positions: KV (and RoPE) position of every packed row.
    last_rows: the packed row of each sequence's last new token.
    kv_lens: each sequence's length after the step.
    """

    kv_indptr: List[int]
    kv_indices: List[int]
    kv_last_page_len: List[int]
    qo_indptr: List[int]
    positions: List[int]
    last_rows: List[int]
    kv_lens: List[int]

    @property
    def batch_size(self) -> int:
        return len(self.kv_lens)

    @property
    def qo_tokens(self) -> int:
        return self.qo_indptr[-1]

    @property
    def is_decode(self) -> bool:
        """One new token per sequence."""
        return self.qo_tokens == self.batch_size


class PagedBatch:
    """The pages and lengths of ``batch_size`` sequences in a pool of ``page_size``-token pages.

    Typical step (``pool`` an attnd.Pool):

        need = book.plan_step(new_tokens)             # pages each sequence lacks
        book.give_pages(need, pool.allocate(sum(need)))
        layout = book.advance(new_tokens)             # lengths move on; the step's page table
    """

    def __init__(self, batch_size: int, page_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        if page_size <= 0:
            raise ValueError(f"page_size={page_size} must be positive")
        self.page_size = page_size
        self.lengths: List[int] = [0] * batch_size
        self.pages: List[List[int]] = [[] for _ in range(batch_size)]

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def _check_counts(self, new_tokens: Sequence[int]) -> None:
        if len(new_tokens) != self.batch_size:
            raise ValueError(f"{len(new_tokens)} new-token counts for a batch of {self.batch_size}")

    def plan_step(self, new_tokens: Sequence[int]) -> List[int]:
        """Pages each sequence needs beyond those it holds to take ``new_tokens[b]`` more."""
        self._check_counts(new_tokens)
        need = []
        for b, n in enumerate(new_tokens):
            want = pages_for(self.lengths[b] + int(n), self.page_size)
            need.append(max(0, want - len(self.pages[b])))
        return need

    def give_pages(self, need: Sequence[int], page_ids: Sequence[int]) -> None:
        """Appends the allocated ``page_ids`` to the sequences, ``need[b]`` of them to ``b``, in
        order (the layout ``pool.allocate(sum(need))`` returns)."""
        self._check_counts(need)
        if sum(need) != len(page_ids):
            raise ValueError(f"{len(page_ids)} page ids for {sum(need)} pages needed")
        held = {p for pages in self.pages for p in pages}
        at = 0
        for b, n in enumerate(need):
            for p in page_ids[at:at + n]:
                if p in held:
                    raise ValueError(f"page {p} is already in the batch")
                held.add(p)
                self.pages[b].append(int(p))
            at += n

    def advance(self, new_tokens: Sequence[int]) -> StepLayout:
        """Adds ``new_tokens[b]`` tokens to each sequence and returns the step's layout.

        The pages must be there (``plan_step`` all zero, after ``give_pages``)."""
        self._check_counts(new_tokens)
        short = [b for b, n in enumerate(self.plan_step(new_tokens)) if n]
        if short:
            raise ValueError(f"sequences {short} lack pages for this step (plan_step/give_pages "
                             "first)")
        qo_indptr, positions, last_rows = pack_rows(new_tokens, self.lengths)
        self.lengths = [n + int(k) for n, k in zip(self.lengths, new_tokens)]
        kv_indptr, kv_indices, last_len = [0], [], []
        for b, n in enumerate(self.lengths):
            used = pages_for(n, self.page_size)
            kv_indices.extend(self.pages[b][:used])
            kv_indptr.append(len(kv_indices))
            last_len.append(n - (used - 1) * self.page_size)
        return StepLayout(kv_indptr=kv_indptr, kv_indices=kv_indices, kv_last_page_len=last_len,
                          qo_indptr=qo_indptr, positions=positions, last_rows=last_rows,
                          kv_lens=list(self.lengths))

    def all_pages(self) -> List[int]:
        """Every page the batch holds (to free them)."""
        return [p for pages in self.pages for p in pages]

    def pages_for_run(self, prompt_lengths: Sequence[int], new_tokens: int) -> int:
        """Pages a whole generation takes: each prompt plus ``new_tokens`` generated tokens, of
        which the last is never appended (its successor is not computed)."""
        return sum(pages_for(n + max(0, new_tokens - 1), self.page_size) for n in prompt_lengths)
