"""Vectorized helpers for jagged (values + offsets) arrays, in numpy and torch.

A jagged array holds B variable-length lists: row b is values[offsets[b]:offsets[b+1]], with
offsets of shape [B+1], offsets[0] == 0 after normalization. Nothing here loops over rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch


# ---- numpy ---------------------------------------------------------------------------------
def arrow_list_to_numpy(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a pyarrow list / large_list array, offsets int64 starting at 0.

    Values are a zero-copy (read-only) view of the Arrow buffer where Arrow allows it; the
    array's slice offset is honoured. Null lists are read as empty lists.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise TypeError(f"expected a list array, got {arr.type}")
    offsets = np.asarray(arr.offsets)  # honours the slice; nulls take an empty range
    start, end = int(offsets[0]), int(offsets[-1])
    flat = arr.values.slice(start, end - start)
    values = flat.to_numpy(zero_copy_only=flat.null_count == 0)
    offsets = offsets.astype(np.int64, copy=False)
    if start:
        offsets = offsets - start
    return values, offsets


def lengths_to_offsets_np(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def truncate_recent_index_np(offsets: np.ndarray, max_len: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Keep each row's last `max_len` entries (lists are oldest -> newest).

    Returns (gather index into values, new offsets); index is None when nothing is cut.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if lengths.size == 0 or int(lengths.max(initial=0)) <= max_len:
        return None, offsets - offsets[0]
    keep = np.minimum(lengths, max_len)
    new_offsets = lengths_to_offsets_np(keep)
    total = int(new_offsets[-1])
    # position j of the output belongs to row r; its source is (offsets[r+1] - keep[r]) + (j - new_offsets[r])
    shift = (offsets[1:] - keep) - new_offsets[:-1]
    index = np.repeat(shift, keep) + np.arange(total, dtype=np.int64)
    return index, new_offsets


def truncate_recent_np(values: np.ndarray, offsets: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    index, new_offsets = truncate_recent_index_np(offsets, max_len)
    if index is None:
        return values[offsets[0]:offsets[-1]], new_offsets
    return values[index], new_offsets


def concat_jagged_np(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate jagged pieces (each with offsets starting at 0) along the batch dimension."""
    if len(parts) == 1:
        return parts[0]
    values = np.concatenate([v for v, _ in parts])
    out = np.empty(sum(len(o) - 1 for _, o in parts) + 1, dtype=np.int64)
    out[0] = 0
    pos, base = 1, 0
    for _, o in parts:
        n = len(o) - 1
        out[pos:pos + n] = o[1:] + base
        base += int(o[-1])
        pos += n
    return values, out


def slice_jagged_np(values: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) as a (view, offsets starting at 0) pair."""
    a, b = int(offsets[start]), int(offsets[stop])
    return values[a:b], offsets[start:stop + 1] - a


# ---- torch ---------------------------------------------------------------------------------
def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths.to(torch.int64), 0, out=offsets[1:])
    return offsets


def segment_ids(offsets: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Row index of every value: [N] int64."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.arange(lengths.numel(), device=offsets.device)
    return torch.repeat_interleave(rows, lengths, output_size=total)


def truncate_recent_index(offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of `truncate_recent_index_np`: (gather index, new offsets); runs on the offsets' device."""
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    offsets = offsets.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    keep = lengths.clamp(max=max_len)
    new_offsets = lengths_to_offsets(keep)
    total = int(new_offsets[-1])
    shift = (offsets[1:] - keep) - new_offsets[:-1]
    index = torch.repeat_interleave(shift, keep, output_size=total) + torch.arange(
        total, dtype=torch.int64, device=offsets.device)
    return index, new_offsets


def truncate_recent(values: torch.Tensor, offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    index, new_offsets = truncate_recent_index(offsets, max_len)
    return values[index], new_offsets


def to_padded(values: torch.Tensor, offsets: torch.Tensor, max_len: int | None = None,
              pad_value: int | float = 0, align: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [B, L] copy plus a bool mask, keeping the most recent `max_len` entries per row.

    align="right" puts the newest event in the last column (left padding); "left" starts each
    row at column 0.
    """
    lengths = offsets[1:] - offsets[:-1]
    B = lengths.numel()
    L = int(lengths.max()) if B else 0
    if max_len is not None and L > max_len:
        values, offsets = truncate_recent(values, offsets, max_len)
        lengths = offsets[1:] - offsets[:-1]
        L = max_len
    out = torch.full((B, L), pad_value, dtype=values.dtype, device=values.device)
    mask = torch.zeros((B, L), dtype=torch.bool, device=values.device)
    n = values.numel()
    if n:
        rows = segment_ids(offsets, n)
        pos = torch.arange(n, device=values.device) - offsets[:-1][rows]
        if align == "right":
            pos = pos + (L - lengths)[rows]
        elif align != "left":
            raise ValueError(f"align must be 'left' or 'right', got {align!r}")
        out[rows, pos] = values
        mask[rows, pos] = True
    return out, mask


# ---- padded views (model side): left-aligned, the most recent events kept ----------------------
def lengths_of(offsets: torch.Tensor) -> torch.Tensor:
    return offsets[1:] - offsets[:-1]


def padded_width(longest: int, max_len: int | None = None) -> int:
    """Padded width for a batch whose longest row is (at most) `longest`, a host int, keeping at
    most `max_len` events."""
    t = int(longest) if max_len is None else min(int(longest), int(max_len))
    return max(t, 0)


def bucket_length(n: int) -> int:
    """`n` rounded up to a power of two (at least 8; 0 stays 0): an upper bound with few distinct
    values, so a compiled model sees a handful of padded widths, not one per batch."""
    return 0 if n <= 0 else max(8, 1 << (int(n) - 1).bit_length())


def padded_index(offsets: torch.Tensor, max_len: int | None = None, pad_to: int | None = None,
                 width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather plan that keeps the most recent `max_len` entries of each row.

    Returns `(index [B, T], mask [B, T], kept [B])`: `index` points into the jagged values (0 in
    padding). `T` is `width` when given (a host int at least the longest kept row: no device
    read), else `max(kept)` read from the device; at least `pad_to` either way.
    """
    lengths = lengths_of(offsets)
    kept = lengths if max_len is None else lengths.clamp(max=max_len)
    if width is not None:
        t = int(width)
    else:
        t = int(kept.max()) if kept.numel() else 0
    if pad_to is not None:
        t = max(t, int(pad_to))
    pos = torch.arange(t, device=offsets.device)
    mask = pos[None, :] < kept[:, None]
    index = (offsets[1:] - kept)[:, None] + pos[None, :]
    index = torch.where(mask, index, torch.zeros_like(index))
    return index, mask, kept


def gather_padded(values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, pad_value=0) -> torch.Tensor:
    """`values[index]` with padding positions set to `pad_value`; works when `values` is empty."""
    shape = tuple(index.shape) + tuple(values.shape[1:])
    if values.shape[0] == 0:  # nothing to gather; the masked put keeps the autograd graph
        out = values.new_full(shape, pad_value)
        out[mask] = values
        return out
    out = values[index]
    m = mask.reshape(tuple(mask.shape) + (1,) * (out.dim() - mask.dim()))
    return torch.where(m, out, torch.full_like(out, pad_value))


def jagged_to_padded(values: torch.Tensor, offsets: torch.Tensor, max_len: int | None = None,
                     pad_value=0, pad_to: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Jagged `values [N, ...]` with `offsets [B+1]` -> `(padded [B, T, ...], kept [B], mask [B, T])`,
    keeping the most recent `max_len` entries of each row (values are oldest first)."""
    index, mask, kept = padded_index(offsets, max_len, pad_to)
    return gather_padded(values, index, mask, pad_value), kept, mask


def padded_to_jagged(padded: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `jagged_to_padded` for left-aligned padding: `(values [N, ...], offsets [B+1])`."""
    kept = mask.sum(1)
    offsets = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    offsets[1:] = torch.cumsum(kept, 0)
    return padded[mask], offsets
