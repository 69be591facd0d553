"""The loader's jagged (values + offsets) helpers, in numpy over Arrow list columns.

A jagged array holds B variable-length lists: row b is values[offsets[b]:offsets[b+1]], with
offsets of shape [B+1], offsets[0] == 0 after normalization. Nothing here loops over rows in Python.
The torch helpers the models and kernels use are in `kunbench.ops.jagged` (no pyarrow there).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


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
    """`[B]` lengths -> `[B+1]` int64 offsets starting at 0."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def truncate_recent_index_np(offsets: np.ndarray, max_len: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Keep each row's last `max_len` entries (lists are oldest -> newest).

    Returns (gather index into values, new offsets); index is None when nothing is cut, so the
    loader copies the values untouched. The torch twin is `kunbench.ops.jagged.truncate_recent_index`.
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
