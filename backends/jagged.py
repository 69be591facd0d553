"""Jagged helpers of the backends: one event stream as padded columns, streams merged by time,
the last K events of a padded row. The padded views themselves (`padded_index`, `gather_padded`,
`jagged_to_padded`, ...) are torch-only and shared with the kernels' reference: `kunbench.ops.jagged`.

Convention everywhere in the backends: a padded sequence is left-aligned, position 0 is the oldest
kept event and the most recent real event sits at `lengths[b] - 1`; positions `>= lengths[b]` are
padding and `mask[b, t]` is False there. Padding is masked by every consumer, so the padded values
never matter (tests fill them with garbage to prove it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kunbench.data.batch import EventSequence
from kunbench.ops.jagged import gather_padded, padded_index

__all__ = ["PaddedStreams", "merge_padded", "pad_stream", "recent_index"]


@dataclass
class PaddedStreams:
    """Left-aligned padded columns of one sequence (a stream, or several merged by time)."""

    item: torch.Tensor  # [B, T]
    category: torch.Tensor  # [B, T]
    ts: torch.Tensor  # [B, T]
    event_type: torch.Tensor | None  # [B, T] for merged streams
    mask: torch.Tensor  # [B, T] bool
    kept: torch.Tensor  # [B]
    longest: int | None = None  # the longest kept row when known on the host


def pad_stream(seq: EventSequence, max_len: int | None, width: int | None = None,
               longest: int | None = None) -> PaddedStreams:
    """One event stream cut to its most recent `max_len` events, as padded `[B, width]` columns
    (`width`: a host int at least the longest kept row; None reads it from the device)."""
    index, mask, kept = padded_index(seq.offsets, max_len, width=width)
    g = lambda v: gather_padded(v, index, mask)  # noqa: E731
    return PaddedStreams(g(seq.item), g(seq.category), g(seq.ts), None, mask, kept, longest)


def merge_padded(streams: list[PaddedStreams], max_len: int | None, width: int) -> PaddedStreams:
    """Merge padded streams per row by timestamp (oldest first) and keep the most recent `max_len`
    events in a `[B, width]` result (`width`: a host int at least the longest kept merge). Ties keep
    stream order, then the order within the stream (a stable sort of the concatenation); no length
    is read on the host."""
    if sum(s.mask.shape[1] for s in streams) == 0:  # no events anywhere: one padding column to gather from
        cols = ("item", "category", "ts", "mask")
        streams = [dataclasses.replace(s, **{k: F.pad(getattr(s, k), (0, 1)) for k in cols}) for s in streams]
    cat = lambda name: torch.cat([getattr(s, name) for s in streams], dim=1)  # noqa: E731
    mask = cat("mask")
    ts = cat("ts")
    big = torch.iinfo(ts.dtype).max
    order = torch.sort(torch.where(mask, ts, torch.full_like(ts, big)), dim=1, stable=True).indices
    total = sum(s.kept for s in streams)
    kept = total if max_len is None else total.clamp(max=max_len)
    pos = torch.arange(width, device=mask.device)
    out_mask = pos[None, :] < kept[:, None]
    src = ((total - kept)[:, None] + pos[None, :]).clamp(max=max(mask.shape[1] - 1, 0))
    take = torch.gather(order, 1, torch.where(out_mask, src, torch.zeros_like(src)))
    et = torch.cat([torch.full_like(s.item, e) for e, s in enumerate(streams)], dim=1)
    pick = lambda x: torch.where(out_mask, torch.gather(x, 1, take), torch.zeros_like(take))  # noqa: E731
    return PaddedStreams(pick(cat("item")), pick(cat("category")), pick(ts), pick(et), out_mask, kept)


def recent_index(kept: torch.Tensor, k: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the last `k` real tokens of each row in a left-aligned padded sequence whose
    real tokens start at `start`: `(index [B, k], valid [B, k])`, oldest of the k first; rows with
    fewer than k events get invalid slots at the front (index 0 there)."""
    j = torch.arange(k, device=kept.device)
    rel = kept[:, None] - k + j[None, :]
    valid = rel >= 0
    index = torch.where(valid, rel + start, torch.zeros_like(rel))
    return index, valid
