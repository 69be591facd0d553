"""Jagged helpers of the backends: keep the most recent events of a stream, merge streams by time,
index the last K events. The padded views themselves (`padded_index`, `gather_padded`,
`jagged_to_padded`, `padded_to_jagged`) live in `kunbench.data.jagged`, shared with the kernels'
reference path, and are re-exported here.

Convention everywhere in the backends: a padded sequence is left-aligned, position 0 is the oldest
kept event and the most recent real event sits at `lengths[b] - 1`; positions `>= lengths[b]` are
padding and `mask[b, t]` is False there. Padding is masked by every consumer, so the padded values
never matter (tests fill them with garbage to prove it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kunbench.data.batch import EventSequence
from kunbench.data.jagged import gather_padded, jagged_to_padded, lengths_of, padded_index, padded_to_jagged

__all__ = ["MergedSequence", "gather_padded", "jagged_to_padded", "lengths_of", "merge_by_time", "padded_index",
           "padded_to_jagged", "recent_index", "truncate_recent"]


@dataclass
class MergedSequence:
    """All event streams of a batch merged by time into one jagged sequence."""

    item: torch.Tensor  # [N]
    category: torch.Tensor  # [N]
    ts: torch.Tensor  # [N]
    event_type: torch.Tensor  # [N] int64, index into the schema's event types
    offsets: torch.Tensor  # [B+1]


def truncate_recent(seq: EventSequence, max_len: int) -> EventSequence:
    """Keep only the most recent `max_len` events of each row (still jagged)."""
    index, mask, kept = padded_index(seq.offsets, max_len)
    flat = index[mask]
    offsets = torch.zeros_like(seq.offsets)
    offsets[1:] = torch.cumsum(kept, 0)
    return EventSequence(seq.item[flat], seq.category[flat], seq.ts[flat], offsets)


def merge_by_time(seqs: list[EventSequence], max_len: int | None = None) -> MergedSequence:
    """Merge event streams per row by timestamp (oldest first); ties keep stream order, then the
    order within the stream. Each stream is first cut to its most recent `max_len` events, which
    cannot change the most recent `max_len` events of the merge."""
    if not seqs:
        raise ValueError("merge_by_time needs at least one stream")
    if max_len is not None:
        seqs = [truncate_recent(s, max_len) for s in seqs]
    device = seqs[0].offsets.device
    batch = seqs[0].offsets.shape[0] - 1
    rows, etypes = [], []
    for e, s in enumerate(seqs):
        lens = lengths_of(s.offsets)
        rows.append(torch.repeat_interleave(torch.arange(batch, device=device), lens))
        etypes.append(torch.full((s.item.shape[0],), e, dtype=torch.int64, device=device))
    row = torch.cat(rows)
    ts = torch.cat([s.ts for s in seqs])
    order = torch.sort(ts, stable=True).indices
    order = order[torch.sort(row[order], stable=True).indices]
    total = sum(lengths_of(s.offsets) for s in seqs)
    offsets = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(total, 0)
    return MergedSequence(
        item=torch.cat([s.item for s in seqs])[order],
        category=torch.cat([s.category for s in seqs])[order],
        ts=ts[order],
        event_type=torch.cat(etypes)[order],
        offsets=offsets,
    )


def recent_index(kept: torch.Tensor, k: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the last `k` real tokens of each row in a left-aligned padded sequence whose
    real tokens start at `start`: `(index [B, k], valid [B, k])`, oldest of the k first; rows with
    fewer than k events get invalid slots at the front (index 0 there)."""
    j = torch.arange(k, device=kept.device)
    rel = kept[:, None] - k + j[None, :]
    valid = rel >= 0
    index = torch.where(valid, rel + start, torch.zeros_like(rel))
    return index, valid
