"""Shared input layer (docs/models.md section 0).

- One fused embedding table `[R, d]` for every categorical ID space: each categorical or
  multi-hot field owns a segment of rows (per-field row offsets); the candidate ad field and the
  sequence items share the `item` segment, the ad category and the sequence categories share the
  `category` segment (by the manifest's `entity`); other fields with the same entity share too.
- A segment holds `min(cardinality, max_rows_per_field)` rows. Decision: IDs of a field whose
  cardinality fits are used directly (`id mod rows`, collision-free for in-range IDs); larger
  fields are hashed with a deterministic Carter-Wegman multiplicative hash
  `((a * x + b) mod (2^31 - 1)) mod rows` on the two 32-bit halves of the ID, identical on every
  device and every run (never Python's `hash`).
- All lookups of a batch go through one `F.embedding` call (optionally `sparse=True`, so a
  sparse-friendly optimizer can update only the touched rows). Multi-hot fields are sum-pooled
  with `index_add` (an empty list pools to zero).
- Dense fields: Decision: `sign(x) log1p(|x|)` (NaN -> 0) for scale robustness, then a grouped
  linear projection: the `F_dense` columns are split into `n_dense_tokens` contiguous groups,
  each projected to one `d`-wide token.
- Sequences: token = item embedding + category embedding (+ event-type embedding where streams
  merge); timestamps stay beside the tokens. Either per event type (each cut to its most recent
  `max_len` events) or all streams merged by time (`merge="time"`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kunbench.backends import jagged, packed
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema
from kunbench.ops.jagged import padded_width, segment_ids, truncate_recent_index

HASH_PRIME = 2**31 - 1
_HASH_A1, _HASH_B1, _HASH_A2 = 1_103_515_245, 12_345, 1_664_525


def hash_ids(x: torch.Tensor) -> torch.Tensor:
    """Deterministic hash of int64 IDs into [0, 2^31 - 1); no intermediate exceeds 2^62."""
    lo = torch.bitwise_and(x, 0xFFFFFFFF).remainder(HASH_PRIME)
    hi = torch.bitwise_and(torch.bitwise_right_shift(x, 32), 0x7FFFFFFF)
    h = (lo * _HASH_A1 + _HASH_B1).remainder(HASH_PRIME)
    return (h * _HASH_A2 + hi).remainder(HASH_PRIME)


@torch.compiler.disable
def sparse_lookup(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Embedding lookup with a sparse gradient, kept out of torch.compile graphs (inductor cannot
    produce sparse gradients); everything around it still compiles."""
    return F.embedding(ids, weight, sparse=True)


@dataclass(frozen=True)
class Segment:
    key: str
    offset: int
    rows: int
    hashed: bool


def _segment_key(col) -> str:
    if col.entity == "item":
        return "item"
    if col.entity == "item_category":
        return "category"
    if col.entity:
        return f"entity:{col.entity}"
    return f"{col.role}:{col.name}"


def plan_segments(schema: DatasetSchema, max_rows_per_field: int) -> dict[str, Segment]:
    """Row segments of the fused table, in a fixed order (categorical, multi-hot, item, category)."""
    cards: dict[str, int | None] = {}

    def add(key: str, card: int | None) -> None:
        if key in cards:
            old = cards[key]
            cards[key] = None if old is None or card is None else max(old, card)
        else:
            cards[key] = card

    for col in schema.categorical + schema.multihot:
        add(_segment_key(col), col.cardinality)
    if schema.event_types:
        add("item", schema.item_cardinality)
        add("category", schema.category_cardinality)
    segments: dict[str, Segment] = {}
    offset = 0
    for key, card in cards.items():
        hashed = card is None or card > max_rows_per_field
        rows = max_rows_per_field if hashed else max(int(card), 1)
        segments[key] = Segment(key, offset, rows, hashed)
        offset += rows
    return segments


@dataclass
class SeqTokens:
    """One padded sequence: left-aligned, most recent real event at `lengths - 1`."""

    tokens: torch.Tensor  # [B, T, d]
    mask: torch.Tensor  # [B, T] bool, True on real events
    lengths: torch.Tensor  # [B] kept lengths
    ts: torch.Tensor  # [B, T] int64 (0 in padding)
    event_type: torch.Tensor | None  # [B, T] int64 for merged streams
    longest: int | None = None  # the longest kept row, a host int (None for a merge: not known on the host)
    # packed layout (InputLayer(packed=True)): tokens [N, d] and ts [N] hold the real events back to
    # back, mask is None, and this says each token's row and position
    packed: "packed.Packed | None" = None


@dataclass
class InputTokens:
    context: torch.Tensor  # [B, n_ctx, d]: categorical fields, multi-hot fields, dense tokens
    sequences: list[SeqTokens]  # one per event type, or one merged sequence


class InputLayer(nn.Module):
    def __init__(self, schema: DatasetSchema, d: int, max_rows_per_field: int, n_dense_tokens: int = 1,
                 sparse: bool = False, seq_max_len: int | dict[str, int] | None = None, merge: str = "none",
                 event_type_embedding: bool = True, init_std: float | None = None, packed: bool = False):
        super().__init__()
        if packed and merge != "none":
            raise ValueError("packed sequences are per event type (merge='none')")
        self.packed = packed
        if merge not in ("none", "time"):
            raise ValueError(f"merge must be 'none' or 'time', got {merge!r}")
        self.schema = schema
        self.d = d
        self.sparse = sparse
        self.seq_max_len = seq_max_len
        self.merge = merge
        self.segments = plan_segments(schema, max_rows_per_field)
        self.total_rows = sum(s.rows for s in self.segments.values())
        self.table = nn.Embedding(self.total_rows, d, sparse=sparse)
        nn.init.normal_(self.table.weight, std=init_std if init_std is not None else d ** -0.5)

        cat_segs = [self.segments[_segment_key(c)] for c in schema.categorical]
        mh_segs = [self.segments[_segment_key(c)] for c in schema.multihot]
        self.register_buffer("cat_offset", torch.tensor([s.offset for s in cat_segs], dtype=torch.int64), persistent=False)
        self.register_buffer("cat_rows", torch.tensor([s.rows for s in cat_segs], dtype=torch.int64), persistent=False)
        self.register_buffer("cat_hashed", torch.tensor([s.hashed for s in cat_segs], dtype=torch.bool), persistent=False)
        self.mh_segs = mh_segs

        self.n_dense = len(schema.dense)
        self.n_dense_tokens = dense_token_count(schema, n_dense_tokens)
        if self.n_dense_tokens:
            self.group = math.ceil(self.n_dense / self.n_dense_tokens)
            self.dense_w = nn.Parameter(torch.randn(self.n_dense_tokens, self.group, d) / math.sqrt(self.group))
            self.dense_b = nn.Parameter(torch.zeros(self.n_dense_tokens, d))
        self.n_event_types = len(schema.event_types)
        self.use_et = merge == "time" and event_type_embedding and self.n_event_types > 0
        if self.use_et:
            self.event_type_emb = nn.Parameter(torch.randn(self.n_event_types, d) * d ** -0.5)
        # test hooks: extra padded positions and garbage in every padded token (must change nothing)
        self.debug_extra_pad = 0
        self.debug_pad_garbage = False

    @property
    def n_context_tokens(self) -> int:
        return context_token_count(self.schema, self.n_dense_tokens)

    @property
    def n_sequences(self) -> int:
        if not self.schema.event_types:
            return 0
        return 1 if self.merge == "time" else self.n_event_types

    def rows_for(self, segment: Segment, ids: torch.Tensor) -> torch.Tensor:
        local = hash_ids(ids).remainder(segment.rows) if segment.hashed else ids.remainder(segment.rows)
        return local + segment.offset

    def dense_tokens(self, dense: torch.Tensor) -> torch.Tensor:
        b = dense.shape[0]
        x = dense.float().nan_to_num(0.0, 0.0, 0.0)
        x = torch.sign(x) * torch.log1p(x.abs())
        pad = self.n_dense_tokens * self.group - self.n_dense
        if pad:
            x = F.pad(x, (0, pad))
        x = x.view(b, self.n_dense_tokens, self.group)
        return torch.einsum("bgi,gid->bgd", x, self.dense_w) + self.dense_b

    def forward(self, batch: Batch) -> InputTokens:
        cat = batch.context_categorical
        b = cat.shape[0]
        d = self.d
        direct = cat.remainder(self.cat_rows)
        hashed = hash_ids(cat).remainder(self.cat_rows)
        cat_rows = torch.where(self.cat_hashed, hashed, direct) + self.cat_offset

        pieces = [cat_rows.reshape(-1)]
        mh_rows = []
        for col, seg in zip(self.schema.multihot, self.mh_segs):
            jag = batch.multihot[col.name]
            mh_rows.append(self.rows_for(seg, jag.values))
        pieces += mh_rows

        # sequence gather plans (on IDs, before the lookup, so only kept events are embedded); padded
        # widths come from the batch's host-side maxima, so nothing here reads the device
        seq_plans = []
        if self.n_sequences and self.packed:
            item_seg, cat_seg = self.segments["item"], self.segments["category"]
            for et in self.schema.event_types:
                it, ct, ts, p = self._packed_stream(batch, et)
                it, ct = self.rows_for(item_seg, it), self.rows_for(cat_seg, ct)
                seq_plans.append((it, ct, ts, None, None, p.lengths, p.longest, p))
                pieces += [it, ct]
        elif self.n_sequences:
            item_seg, cat_seg = self.segments["item"], self.segments["category"]
            padded = [self._padded_stream(batch, et) for et in self.schema.event_types]
            if self.merge == "time":
                cap = self.seq_max_len
                longest = sum(batch.max_length(et) for et in self.schema.event_types)
                width = padded_width(longest, cap) + self.debug_extra_pad
                padded = [jagged.merge_padded(padded, cap, width)]
            for p in padded:
                it, ct = self.rows_for(item_seg, p.item), self.rows_for(cat_seg, p.category)
                seq_plans.append((it, ct, p.ts, p.event_type, p.mask, p.kept, p.longest, None))
                pieces += [it.reshape(-1), ct.reshape(-1)]

        ids = torch.cat(pieces)
        emb = sparse_lookup(ids, self.table.weight) if self.sparse else F.embedding(ids, self.table.weight)
        sizes = [p.numel() for p in pieces]
        parts = list(torch.split(emb, sizes))
        ctx = [parts.pop(0).view(b, -1, d)]
        for col in self.schema.multihot:
            jag = batch.multihot[col.name]
            row = segment_ids(jag.offsets, jag.values.shape[0])  # from the offsets on the device: no host read
            pooled = torch.zeros(b, d, dtype=emb.dtype, device=emb.device)
            ctx.append(pooled.index_add(0, row, parts.pop(0))[:, None])
        if self.n_dense_tokens:
            ctx.append(self.dense_tokens(batch.context_dense).to(emb.dtype))
        context = torch.cat(ctx, dim=1)

        seqs = []
        for it, ct, ts, et, mask, kept, longest, p in seq_plans:
            if p is not None:  # packed: [N, d], no padding to mask
                seqs.append(SeqTokens(parts.pop(0) + parts.pop(0), None, kept, ts, None, longest, p))
                continue
            shape = (b, it.shape[1], d)
            tok = parts.pop(0).view(shape) + parts.pop(0).view(shape)
            if self.use_et and et is not None:
                tok = tok + self.event_type_emb[et]
            if self.debug_pad_garbage:
                garbage = torch.randn(shape, dtype=tok.dtype, device=tok.device) * 100.0
                tok = torch.where(mask[..., None], tok, garbage)
            seqs.append(SeqTokens(tok, mask, kept, ts, et, longest))
        return InputTokens(context, seqs)

    def max_len_for(self, event_type: str) -> int | None:
        if isinstance(self.seq_max_len, dict):
            return self.seq_max_len.get(event_type)
        return self.seq_max_len

    def _packed_stream(self, batch: Batch, event_type: str):
        """One stream's kept events back to back: `(item, category, ts, Packed)`. Batches cut to
        the stream's `max_len` by their loader (as kunbench's are) need no device read; a longer
        one is cut here, which reads its offsets once."""
        seq = batch.sequences[event_type]
        cap = self.max_len_for(event_type)
        longest = batch.max_length(event_type)
        item, category, ts, offsets = seq.item, seq.category, seq.ts, seq.offsets
        if cap is not None and longest > cap:
            index, offsets = truncate_recent_index(offsets, cap)
            item, category, ts = item[index], category[index], ts[index]
            longest = cap
        # kept = min(length, cap) keeps the sorted order, so the slices' bounds clamp the same way;
        # slices of another row count (a batch cut to other rows) say nothing about these rows
        got = batch.length_slices.get(event_type)
        slices = (tuple(min(w, longest) for w in got.maxima)
                  if got is not None and got.rows == batch.batch_size else ())
        return item, category, ts, packed.plan(offsets, item.shape[0], longest, slices)

    def _padded_stream(self, batch: Batch, event_type: str) -> jagged.PaddedStreams:
        """One stream cut to its most recent events, as padded ID columns `[B, width]`."""
        seq = batch.sequences[event_type]
        cap = self.max_len_for(event_type)
        longest = batch.max_length(event_type)
        kept_longest = longest if cap is None else min(longest, cap)
        extra = self.debug_extra_pad if self.merge != "time" else 0
        return jagged.pad_stream(seq, cap, padded_width(longest, cap) + extra, kept_longest)


def dense_token_count(schema: DatasetSchema, n_dense_tokens: int) -> int:
    """Dense features are grouped into at most `n_dense_tokens` tokens (none without dense features)."""
    return min(n_dense_tokens, len(schema.dense)) if schema.dense else 0


def context_token_count(schema: DatasetSchema, n_dense_tokens: int) -> int:
    """Non-sequence tokens: one per categorical and multi-hot field, plus the dense tokens. The
    input layer builds exactly these, and every backend's FLOPs count uses this number."""
    return len(schema.categorical) + len(schema.multihot) + dense_token_count(schema, n_dense_tokens)


def input_layer_flops(schema: DatasetSchema, d: int, n_dense_tokens: int) -> int:
    n_dense = len(schema.dense)
    g = dense_token_count(schema, n_dense_tokens)
    if not g:
        return 0
    return 2 * g * math.ceil(n_dense / g) * d
