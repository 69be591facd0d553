"""Jagged (values + offsets) tensors in torch, and their left-aligned padded views.

A jagged tensor holds B variable-length lists, oldest entry first: row b is
`values[offsets[b]:offsets[b+1]]`, offsets `[B+1]` int64 starting at 0. The models and the GDPA
reference share these helpers; the loader's numpy/Arrow twins live in `kunbench.data.jagged`.
Nothing here loops over rows in Python.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def lengths_to_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """`[B]` lengths -> `[B+1]` int64 offsets starting at 0 (no host read)."""
    return F.pad(torch.cumsum(lengths.reshape(-1).to(torch.int64), 0), (1, 0))


def lengths_of(offsets: torch.Tensor) -> torch.Tensor:
    return offsets[1:] - offsets[:-1]


def longest_row(offsets: torch.Tensor) -> int:
    """The longest row as a host int (one device read; 0 for an empty batch)."""
    if offsets.numel() < 2:
        return 0
    return int(lengths_of(offsets).max())


LENGTH_SLICES = 8


class LengthSlices(NamedTuple):
    """`maxima[i]`: the longest row of slice `i` of the `rows` rows sorted by length (host ints)."""

    rows: int
    maxima: tuple[int, ...]

    @property
    def longest(self) -> int:
        return self.maxima[-1] if self.maxima else 0


def slice_maxima(lengths, slices: int = LENGTH_SLICES) -> LengthSlices:
    """The longest row of each of `min(slices, B)` equal-count slices of the rows sorted by length
    (slice `i` holds sorted positions `floor(i B / S) .. floor((i + 1) B / S) - 1`), as host ints,
    with `B` beside them (a batch cut to other rows no longer matches, and is padded as one view).
    Read on the host beside `max_lengths` (the last entry is the longest row): a model cuts its
    rows into groups of similar length with it, each padded only to its own longest row."""
    lengths = torch.as_tensor(lengths).reshape(-1)
    b = lengths.numel()
    s = min(int(slices), b)
    if s == 0:
        return LengthSlices(0, ())
    ordered = torch.sort(lengths).values.tolist()
    return LengthSlices(b, tuple(int(ordered[(i + 1) * b // s - 1]) for i in range(s)))


def segment_ids(offsets: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Row index of every value: `[N]` int64. A binary search of the offsets, so with `total`
    (N, e.g. the values' length) given nothing is read on the host."""
    n = int(offsets[-1]) if total is None else total
    return torch.searchsorted(offsets, torch.arange(n, device=offsets.device), right=True) - 1


def truncate_recent_index(offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each row's last `max_len` entries: `(gather index into values, new offsets)`, on the
    offsets' device (the loader's numpy twin is `kunbench.data.jagged.truncate_recent_index_np`)."""
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    offsets = offsets.to(torch.int64)
    keep = lengths_of(offsets).clamp(max=max_len)
    new_offsets = lengths_to_offsets(keep)
    total = int(new_offsets[-1])
    # output position j of row r reads (offsets[r+1] - keep[r]) + (j - new_offsets[r])
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
    lengths = lengths_of(offsets)
    B = lengths.numel()
    L = int(lengths.max()) if B else 0
    if max_len is not None and L > max_len:
        values, offsets = truncate_recent(values, offsets, max_len)
        lengths = lengths_of(offsets)
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
    return padded[mask], lengths_to_offsets(mask.sum(1))
