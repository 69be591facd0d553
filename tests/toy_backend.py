"""A deliberately small backend and in-memory data for testing the training path on its own.

Test-only: it lives in tests/ (imported as `toy_backend`, like `backend_utils`), not in the package.

`ToyConfig` / `ToyModel`: logistic regression over hashed categorical embeddings (one fused table)
plus, per event type, the dot product between the candidate ad's item embedding and the mean
of the history's item embeddings. It exercises everything the loop relies on (embedding vs dense
parameters, jagged sequences) in milliseconds. `toy_spec()` wraps it as a BackendSpec; it is not
registered by default (tests register it, `nan_after` makes it emit NaN logits from a given step).

`toy_schema` / `toy_batches`: a DatasetSchema and a deterministic list of Batch objects whose
labels are drawn from a known `p_true`, so oracle NE is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kunbench.data.batch import Batch, EventSequence
from kunbench.data.manifest import Column, DatasetSchema
from kunbench.errors import KunbenchError


@dataclass(frozen=True)
class ToyConfig:
    d: int = 8
    max_rows_per_field: int = 4096
    sparse: bool = False  # nn.Embedding(sparse=True): sparse gradients
    nan_after: int = 0  # > 0: forward returns NaN logits from this call on (training forward count)

    def validate(self) -> "ToyConfig":
        if self.d < 1:
            raise KunbenchError(f"d must be >= 1, got {self.d}")
        if self.max_rows_per_field < 1:
            raise KunbenchError(f"max_rows_per_field must be >= 1, got {self.max_rows_per_field}")
        return self


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyConfig, schema: DatasetSchema):
        super().__init__()
        self.cfg = cfg
        rows = [min(int(c.cardinality or cfg.max_rows_per_field), cfg.max_rows_per_field)
                for c in schema.categorical]
        self.register_buffer("field_rows", torch.tensor(rows, dtype=torch.int64), persistent=False)
        self.register_buffer("field_offsets", torch.tensor(np.concatenate([[0], np.cumsum(rows)[:-1]]),
                                                           dtype=torch.int64), persistent=False)
        self.table = nn.Embedding(int(sum(rows)), cfg.d, sparse=cfg.sparse)
        item_rows = min(schema.item_cardinality, cfg.max_rows_per_field) if schema.event_types else 1
        self.item_rows = item_rows
        self.items = nn.Embedding(item_rows, cfg.d, sparse=cfg.sparse)
        nn.init.normal_(self.table.weight, std=0.05)
        nn.init.normal_(self.items.weight, std=0.05)
        self.ad_index = schema.categorical_index("item") if schema.event_types else None
        self.event_types = schema.event_types
        self.w_cat = nn.Linear(len(rows) * cfg.d, 1)
        self.w_dense = nn.Linear(max(len(schema.dense), 1), 1, bias=False)
        self.w_seq = nn.Parameter(torch.ones(max(len(schema.event_types), 1)))
        self.calls = 0

    def embedding_parameters(self):
        return [self.table.weight, self.items.weight]

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = batch.context_categorical % self.field_rows + self.field_offsets
        x = self.table(ids).flatten(1)
        logit = self.w_cat(x).squeeze(1)
        if batch.context_dense.shape[1]:
            logit = logit + self.w_dense(batch.context_dense).squeeze(1)
        if self.ad_index is not None:
            ad = self.items(batch.context_categorical[:, self.ad_index] % self.item_rows)
            B = ad.shape[0]
            for j, et in enumerate(self.event_types):
                s = batch.sequences[et]
                lengths = s.lengths
                seg = torch.repeat_interleave(torch.arange(B, device=ad.device), lengths)
                pooled = torch.zeros_like(ad).index_add_(0, seg, self.items(s.item % self.item_rows))
                pooled = pooled / lengths.clamp(min=1).to(ad.dtype)[:, None]
                logit = logit + self.w_seq[j] * (pooled * ad).sum(1)
        if self.training:
            self.calls += 1
            if self.cfg.nan_after and self.calls >= self.cfg.nan_after:
                logit = logit * float("nan")
        return logit


def toy_flops(cfg: ToyConfig, schema: DatasetSchema, batch: Batch) -> torch.Tensor:
    """2 x multiply-adds of the linear parts plus the per-event dot products."""
    n_cat = len(schema.categorical) * cfg.d
    base = 2.0 * (n_cat + len(schema.dense))
    seq = 2.0 * cfg.d * len(schema.event_types)
    return torch.full((batch.batch_size,), base + seq, dtype=torch.float64)


def toy_spec(name: str = "toy"):
    from kunbench.backends.registry import BackendSpec

    return BackendSpec(
        name=name, description="test backend: logistic regression over embeddings",
        config_cls=ToyConfig,
        presets={"tiny": ToyConfig(d=4), "small": ToyConfig(d=8)},
        default_preset="small",
        build=lambda cfg, schema: ToyModel(cfg, schema),
        flops_per_example=toy_flops,
    )


# ---- in-memory data ---------------------------------------------------------------------
def toy_schema(num_fields: int = 6, event_types: tuple[str, ...] = ("click",), item_card: int = 500) -> DatasetSchema:
    cols = [Column("user_id", "context_categorical", "int64", 1000, "user"),
            Column("ad_id", "context_categorical", "int64", item_card, "item")]
    cols += [Column(f"f{i}", "context_categorical", "int64", 50) for i in range(num_fields)]
    cols += [Column("d0", "context_dense", "float32"), Column("d1", "context_dense", "float32")]
    for e in event_types:
        cols += [Column(f"{e}_item", "sequence", "list<int64>", item_card, "item", e, "item"),
                 Column(f"{e}_cat", "sequence", "list<int64>", 20, "item_category", e, "category"),
                 Column(f"{e}_ts", "sequence", "list<int64>", None, None, e, "ts")]
    return DatasetSchema.from_columns(cols)


def toy_batches(schema: DatasetSchema, n_batches: int = 40, batch_size: int = 64, seed: int = 0,
                max_len: int = 12) -> list[Batch]:
    """Batches whose labels ~ Bernoulli(p_true), p_true a logistic function of field values and of
    whether the history contains the ad's item cluster."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(12345)  # fixed world parameters, independent of `seed`
    cards = [c.cardinality for c in schema.categorical]
    weights = [world.normal(0, 0.8, size=c) for c in cards]
    item_card = cards[schema.categorical_index("item")] if schema.event_types else 1
    out = []
    for _ in range(n_batches):
        B = batch_size
        cat = np.stack([rng.integers(0, c, size=B) for c in cards], axis=1).astype(np.int64)
        dense = rng.standard_normal((B, len(schema.dense))).astype(np.float32)
        logit = -2.5 + sum(w[cat[:, j]] for j, w in enumerate(weights)) * 0.5 + 0.3 * dense[:, 0]
        seqs = {}
        for e in schema.event_types:
            lengths = rng.integers(0, max_len + 1, size=B)
            items = rng.integers(0, item_card, size=int(lengths.sum()))
            # half of the histories contain the ad's item: a learnable target-match term
            has_ad = rng.random(B) < 0.5
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            ad = cat[:, schema.categorical_index("item")]
            for b in np.flatnonzero(has_ad & (lengths > 0)):
                items[offsets[b + 1] - 1] = ad[b]
            logit = logit + 1.0 * (has_ad & (lengths > 0))
            ts = np.sort(rng.integers(0, 10_000, size=int(lengths.sum())))
            seqs[e] = EventSequence(torch.from_numpy(items), torch.from_numpy(items % 20),
                                    torch.from_numpy(ts), torch.from_numpy(offsets))
        p = 1.0 / (1.0 + np.exp(-logit))
        y = (rng.random(B) < p).astype(np.float32)
        out.append(Batch(context_categorical=torch.from_numpy(cat), context_dense=torch.from_numpy(dense),
                         multihot={}, sequences=seqs, request_ts=torch.full((B,), 20_000, dtype=torch.int64),
                         labels=torch.from_numpy(y), p_true=torch.from_numpy(p),
                         max_lengths={e: int(np.diff(s.offsets.numpy()).max(initial=0)) for e, s in seqs.items()}))
    return out
