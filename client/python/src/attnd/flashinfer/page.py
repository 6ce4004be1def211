"""``flashinfer.page`` on attnd: append_paged_kv_cache, get_seq_lens, get_batch_indices_positions.

The cache of the drop-in is an attnd pool mapped into this process, so appending is a torch
scatter into it on the caller's CUDA stream (no call to the daemon); the next run() sees it (run
waits for the current stream, or orders the daemon's stream after it in async mode). The same code
works on any torch tensor in FlashInfer's layouts.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

__all__ = ["append_paged_kv_cache", "get_seq_lens", "get_batch_indices_positions"]


def _unpack(paged_kv_cache, kv_layout: str):
    if kv_layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError("paged_kv_cache tuple must be (k_cache, v_cache)")
        k_cache, v_cache = paged_kv_cache
        if k_cache.dim() != 4 or tuple(v_cache.shape) != tuple(k_cache.shape):
            raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                             "must both be 4-D and of one shape")
    else:
        if paged_kv_cache.dim() != 5 or paged_kv_cache.shape[1] != 2:
            raise ValueError(f"paged_kv_cache must be [num_pages, 2, ...] (5-D), got shape "
                             f"{tuple(paged_kv_cache.shape)}")
        k_cache, v_cache = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    return k_cache, v_cache


def append_paged_kv_cache(append_key, append_value, batch_indices, positions, paged_kv_cache,
                          kv_indices, kv_indptr, kv_last_page_len, kv_layout: str = "NHD") -> None:
    """Writes append_key/append_value [nnz, num_kv_heads, head_dim] into the paged cache: entry i
    goes to request batch_indices[i] at token position positions[i], i.e. page
    kv_indices[kv_indptr[b] + positions[i] // page_size], slot positions[i] % page_size.

    As in FlashInfer, the page table must already include the appended tokens (kv_last_page_len
    is not read). Runs on the current CUDA stream without synchronizing.
    """
    import torch

    k_cache, v_cache = _unpack(paged_kv_cache, kv_layout)
    page_size = int(k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2])
    dev = k_cache.device
    b = batch_indices.to(device=dev, dtype=torch.long)
    pos = positions.to(device=dev, dtype=torch.long)
    indptr = torch.as_tensor(kv_indptr).to(device=dev, dtype=torch.long)
    indices = torch.as_tensor(kv_indices).to(device=dev, dtype=torch.long)
    page = indices[indptr[b] + torch.div(pos, page_size, rounding_mode="floor")]
    slot = torch.remainder(pos, page_size)
    key = append_key.to(device=dev, dtype=k_cache.dtype)
    value = append_value.to(device=dev, dtype=v_cache.dtype)
    if kv_layout == "NHD":
        k_cache[page, slot] = key
        v_cache[page, slot] = value
    else:  # [num_pages, num_kv_heads, page_size, head_dim]: advanced indices around a slice
        k_cache[page, :, slot] = key
        v_cache[page, :, slot] = value


def get_seq_lens(kv_indptr, kv_last_page_len, page_size: int):
    """Sequence lengths of a paged batch: max(pages - 1, 0) * page_size + last_page_len."""
    import torch

    pages = kv_indptr[1:] - kv_indptr[:-1]
    return torch.clamp(pages - 1, min=0) * int(page_size) + kv_last_page_len


def get_batch_indices_positions(append_indptr, seq_lens, nnz: int, batch_indices=None,
                                positions=None) -> Tuple[Any, Any]:
    """For each of the nnz appended entries: its request and its position in that request's
    sequence (the appended tokens are the last of each sequence). Entries beyond
    append_indptr[-1] get batch index -1 and position 0. int32, on append_indptr's device."""
    import torch

    dev = append_indptr.device
    indptr = append_indptr.to(torch.long)
    idx = torch.arange(int(nnz), device=dev, dtype=torch.long)
    b = torch.searchsorted(indptr[1:].contiguous(), idx, right=True)
    valid = b < indptr.numel() - 1
    bc = torch.where(valid, b, torch.zeros_like(b))
    lens = seq_lens.to(device=dev, dtype=torch.long)
    pos = torch.where(valid, lens[bc] - indptr[bc + 1] + idx, torch.zeros_like(idx))
    out_b = torch.where(valid, b, torch.full_like(b, -1)).to(torch.int32)
    out_p = pos.to(torch.int32)
    return _into(batch_indices, out_b), _into(positions, out_p)


def _into(dest: Optional[Any], value):
    if dest is None:
        return value
    if tuple(dest.shape) != tuple(value.shape):
        raise ValueError(f"preallocated output has shape {tuple(dest.shape)}, expected "
                         f"{tuple(value.shape)}")
    dest.copy_(value)
    return dest
