"""Small DatasetSchema + random Batch for backend tests, without any files, and the checks that
several backend test files share (one-line config errors, preset FLOPs, one intra-op thread)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch

from kunbench.backends.registry import get_backend
from kunbench.data.batch import Batch, EventSequence, Jagged, with_max_lengths
from kunbench.data.manifest import Column, DatasetSchema
from kunbench.errors import KunbenchError
from kunbench.ops.jagged import lengths_to_offsets

EVENT_TYPES = ("impression", "click", "conversion")


def make_schema(n_cat: int = 6, n_dense: int = 3, n_multihot: int = 1, event_types=EVENT_TYPES,
                num_items: int = 500, num_categories: int = 20, big_cardinality: int = 10**7) -> DatasetSchema:
    cols = [
        Column("user_id", "context_categorical", "int64", cardinality=big_cardinality, entity="user"),
        Column("ad_id", "context_categorical", "int64", cardinality=num_items, entity="item"),
        Column("ad_category", "context_categorical", "int64", cardinality=num_categories, entity="item_category"),
        Column("surface", "context_categorical", "int64", cardinality=5, entity="surface"),
    ]
    for i in range(n_cat):
        card = [7, 100, 5000, 10**6][i % 4]
        cols.append(Column(f"c{i}", "context_categorical", "int64", cardinality=card))
    for i in range(n_dense):
        cols.append(Column(f"x{i}", "context_dense", "float32"))
    for i in range(n_multihot):
        cols.append(Column(f"m{i}", "context_multihot", "int64", cardinality=300))
    for et in event_types:
        cols.append(Column(f"{et}_item", "sequence", "int64", cardinality=num_items, entity="item",
                           event_type=et, part="item"))
        cols.append(Column(f"{et}_category", "sequence", "int64", cardinality=num_categories,
                           entity="item_category", event_type=et, part="category"))
        cols.append(Column(f"{et}_ts", "sequence", "int64", event_type=et, part="ts"))
    return DatasetSchema.from_columns(cols)


def make_batch(schema: DatasetSchema, batch_size: int = 8, seed: int = 0, lengths: dict | None = None,
               max_len: int = 24, min_len: int = 0) -> Batch:
    """Random batch; `lengths[event_type]` (list of B ints) pins the sequence lengths."""
    g = torch.Generator().manual_seed(seed)
    b = batch_size
    cat = torch.stack([torch.randint(0, min(c.cardinality or 10**9, 10**9), (b,), generator=g)
                       for c in schema.categorical], dim=1) if schema.categorical else torch.zeros(b, 0, dtype=torch.int64)
    dense = torch.randn(b, len(schema.dense), generator=g) * 3.0
    multihot = {}
    for c in schema.multihot:
        ln = torch.randint(0, 5, (b,), generator=g)
        values = torch.randint(0, c.cardinality, (int(ln.sum()),), generator=g)
        multihot[c.name] = Jagged(values, lengths_to_offsets(ln))
    request_ts = torch.full((b,), 1_800_000_000, dtype=torch.int64) + torch.randint(0, 1000, (b,), generator=g)
    seqs = {}
    for et in schema.event_types:
        cols = schema.sequence_columns[et]
        if lengths is not None and et in lengths:
            ln = torch.as_tensor(lengths[et], dtype=torch.int64)
        else:
            ln = torch.randint(min_len, max_len + 1, (b,), generator=g)
        n = int(ln.sum())
        item = torch.randint(0, cols["item"].cardinality, (n,), generator=g)
        category = torch.randint(0, cols["category"].cardinality, (n,), generator=g)
        off = lengths_to_offsets(ln)
        ts = torch.empty(n, dtype=torch.int64)
        for r in range(b):
            k = int(ln[r])
            gaps = torch.randint(1, 5000, (k,), generator=g)
            ts[off[r]:off[r + 1]] = request_ts[r] - torch.flip(torch.cumsum(gaps, 0), [0])
        seqs[et] = EventSequence(item, category, ts, off)
    labels = torch.randint(0, 2, (b,), generator=g).float()
    return with_max_lengths(Batch(cat, dense, multihot, seqs, request_ts, labels))


def take_rows(batch: Batch, rows: list[int]) -> Batch:
    """Sub-batch of the given rows (jagged parts re-packed)."""
    idx = torch.as_tensor(rows, dtype=torch.int64)

    def jag(values_list, offsets):
        parts = [[v[offsets[r]:offsets[r + 1]] for r in rows] for v in values_list]
        ln = torch.tensor([int(offsets[r + 1] - offsets[r]) for r in rows], dtype=torch.int64)
        return [torch.cat(p) if p else v[:0] for p, v in zip(parts, values_list)], lengths_to_offsets(ln)

    mh = {}
    for k, j in batch.multihot.items():
        (vals,), off = jag([j.values], j.offsets)
        mh[k] = Jagged(vals, off)
    seqs = {}
    for k, s in batch.sequences.items():
        (item, cat, ts), off = jag([s.item, s.category, s.ts], s.offsets)
        seqs[k] = EventSequence(item, cat, ts, off)
    return Batch(batch.context_categorical[idx], batch.context_dense[idx], mh, seqs, batch.request_ts[idx],
                 batch.labels[idx])


# ---- shared checks --------------------------------------------------------------------------------
def assert_one_line_error(make: Callable[[], object], fragment: str) -> None:
    """`make()` raises a KunbenchError whose message is a single line containing `fragment`."""
    with pytest.raises(KunbenchError) as exc:
        make()
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def assert_presets_span_flops(backend: str, flops_of: Callable, seq_lengths: list[int] | None = None):
    """Backend `backend` has presets tiny..large (default small) whose FLOPs per example increase and
    span more than 50x on a wide schema. `flops_of(cfg, schema, batch)` gives one example's FLOPs;
    `batch` has one row per entry of `seq_lengths` (that many events of every type), None without it.
    Returns the BackendSpec."""
    schema = make_schema(n_cat=90, n_dense=6, n_multihot=2)
    spec = get_backend(backend)
    assert set(spec.presets) >= {"tiny", "small", "medium", "large"} and spec.default_preset == "small"
    batch = None
    if seq_lengths is not None:
        batch = make_batch(schema, len(seq_lengths), lengths={et: list(seq_lengths) for et in schema.event_types})
    flops = [float(flops_of(spec.make_config(p), schema, batch)) for p in spec.presets]
    assert flops == sorted(flops) and flops[-1] > 50 * flops[0]
    return spec


def logits_plain_and_padded(model, batch: Batch, extra_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`model(batch)` (no grad), then again with `extra_pad` extra padded positions per sequence filled
    with garbage; the input layer's debug padding is switched off again afterwards."""
    layer = model.input_layer
    with torch.no_grad():
        ref = model(batch)
        layer.debug_extra_pad, layer.debug_pad_garbage = extra_pad, True
        try:
            padded = model(batch)
        finally:
            layer.debug_extra_pad, layer.debug_pad_garbage = 0, False
    return ref, padded


@contextmanager
def one_intra_op_thread():
    """torch.set_num_threads(1) inside, the previous count restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gdpa_heads_and_mask(seed: int, activation: str, h: int, lengths: list[int], t: int,
                        mixed: tuple[str, ...]) -> tuple[list[str], torch.Tensor]:
    """Seeds torch; returns the per-head activation names (`mixed` when `activation` is "mixed",
    else `activation` on all `h` heads) and the [B, t] mask of rows with `lengths` valid positions."""
    torch.manual_seed(seed)
    names = list(mixed) if activation == "mixed" else [activation] * h
    return names, torch.arange(t)[None, :] < torch.as_tensor(lengths)[:, None]
