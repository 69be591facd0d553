"""The batch every backend consumes, from files (loader) or from the on-device synthetic source.

Jagged tensors are values + offsets `[B+1]` (int64), oldest event first, most recent last.
Each batch also carries, as host integers, the longest history of every event type
(`max_lengths`), and the longest row of each eighth of the rows sorted by length
(`length_slices`): the padded widths a model needs are then known without reading the device, so
a forward pass has no host-device sync and compiles as one graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from kunbench.ops.jagged import LengthSlices, lengths_of, longest_row, slice_maxima


@dataclass
class Jagged:
    """A batch of variable-length lists: row b is values[offsets[b]:offsets[b+1]]."""

    values: torch.Tensor
    offsets: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return lengths_of(self.offsets)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Jagged":
        return Jagged(self.values.to(device, non_blocking=non_blocking),
                      self.offsets.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Jagged":
        return Jagged(self.values.pin_memory(), self.offsets.pin_memory())


@dataclass
class EventSequence:
    """One event type's history: item ids, item categories and timestamps share `offsets`."""

    item: torch.Tensor  # [N] int64
    category: torch.Tensor  # [N] int64
    ts: torch.Tensor  # [N] int64 epoch seconds, sorted ascending within a row
    offsets: torch.Tensor  # [B+1] int64

    @property
    def lengths(self) -> torch.Tensor:
        return lengths_of(self.offsets)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "EventSequence":
        return EventSequence(*(t.to(device, non_blocking=non_blocking)
                               for t in (self.item, self.category, self.ts, self.offsets)))

    def pin_memory(self) -> "EventSequence":
        return EventSequence(*(t.pin_memory() for t in (self.item, self.category, self.ts, self.offsets)))


@dataclass
class Batch:
    """Column order of `context_categorical`, `context_dense` and `multihot` follows the manifest."""

    context_categorical: torch.Tensor  # [B, F_cat] int64 (user, ad, ad category, surface, fields...)
    context_dense: torch.Tensor  # [B, F_dense] float32
    multihot: dict[str, Jagged]  # per multi-hot field
    sequences: dict[str, EventSequence]  # per event type, in manifest order
    request_ts: torch.Tensor  # [B] int64
    labels: torch.Tensor  # [B] float32
    p_true: torch.Tensor | None = None  # [B] float64, oracle only, present when asked for
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    # per event type: the longest row, or an upper bound of it (host ints; a larger bound only pads more)
    max_lengths: dict[str, int] = field(default_factory=dict)
    # per event type: `ops.jagged.slice_maxima` of the row lengths (host ints; upper bounds allowed,
    # e.g. after rows are cut shorter). A stream without one, or whose row count differs from the
    # batch's (rows taken out), runs its padded products at one width, `max_lengths`
    length_slices: dict[str, LengthSlices] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def max_length(self, event_type: str) -> int:
        """The longest history of `event_type` in this batch; read from the offsets (one device
        sync) only for a batch built without `max_lengths`."""
        got = self.max_lengths.get(event_type)
        if got is None:
            got = longest_row(self.sequences[event_type].offsets)
        return got

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(
            self,
            context_categorical=mv(self.context_categorical),
            context_dense=mv(self.context_dense),
            multihot={k: v.to(device, non_blocking) for k, v in self.multihot.items()},
            sequences={k: v.to(device, non_blocking) for k, v in self.sequences.items()},
            request_ts=mv(self.request_ts),
            labels=mv(self.labels),
            p_true=mv(self.p_true),
            extras={k: mv(v) for k, v in self.extras.items()},
        )

    def pin_memory(self) -> "Batch":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return replace(
            self,
            context_categorical=pin(self.context_categorical),
            context_dense=pin(self.context_dense),
            multihot={k: v.pin_memory() for k, v in self.multihot.items()},
            sequences={k: v.pin_memory() for k, v in self.sequences.items()},
            request_ts=pin(self.request_ts),
            labels=pin(self.labels),
            p_true=pin(self.p_true),
            extras={k: pin(v) for k, v in self.extras.items()},
        )


def with_max_lengths(batch: Batch) -> Batch:
    """`batch` with `max_lengths` and `length_slices` filled in for every event type (reads the
    offsets once, on the host side of a loader or source, never inside a model)."""
    slices = {et: slice_maxima(lengths_of(s.offsets).cpu()) for et, s in batch.sequences.items()}
    return replace(batch, max_lengths={et: sl.longest for et, sl in slices.items()},
                   length_slices=slices)
