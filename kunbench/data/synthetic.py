"""Batches made directly on a device, with no files: the input for systems benchmarks.

    src = SyntheticBatches.from_preset("standard", batch_size=512, device="cuda", seed=0, steps=100)
    for batch in src: ...

`SyntheticBatches` produces `Batch` objects with exactly the structure the Parquet loader yields for
the same `DatasetSchema` (column order, dtypes, offsets `[B+1]`, timestamps sorted oldest -> newest
and earlier than `request_ts`). A pool of `pool_size` batches is generated once up front with a
seeded torch generator on the target device, then cycled, so iterating measures the consumer,
not the generation. Values are uniform within each field's cardinality (no hidden signal); sequence
lengths follow each event type's clipped lognormal law, like the generator's presets.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from kunbench.data.batch import Batch, EventSequence, Jagged
from kunbench.data.manifest import Column, DatasetSchema, load_manifest
from kunbench.errors import KunbenchError
from kunbench.ops.jagged import lengths_to_offsets, segment_ids, slice_maxima

DEFAULT_START_TS = 1_767_225_600
DEFAULT_CARDINALITY = 1 << 20  # for columns whose manifest entry carries no cardinality


@dataclass(frozen=True)
class LengthLaw:
    """Per-row event count: round(median * exp(sigma * N(0,1))) clipped to [min_length, max_length]."""

    median: float
    sigma: float = 0.0
    min_length: int = 0
    max_length: int = 1 << 30

    @classmethod
    def fixed(cls, n: int) -> "LengthLaw":
        return cls(float(n), 0.0, int(n), int(n))

    def capped(self, cap: int | None) -> "LengthLaw":
        if cap is None:
            return self
        return LengthLaw(self.median, self.sigma, min(self.min_length, cap), min(self.max_length, cap))

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        if self.sigma == 0.0:
            value = int(round(min(max(self.median, self.min_length), self.max_length)))
            return torch.full((n,), value, dtype=torch.int64, device=device)
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
        lengths = torch.round(self.median * torch.exp(self.sigma * z))
        return lengths.clamp_(self.min_length, self.max_length).to(torch.int64)


# ---- schemas without files -----------------------------------------------------------------
def columns_from_config(config: Any) -> list[Column]:
    """The manifest columns a generator run with `config` writes, without writing anything: the
    generator's own column builder, so names, roles and cardinalities match the files."""
    from kunbench.generators.schema import column_entries
    from kunbench.generators.world import build_world

    return [Column.from_dict(d) for d in column_entries(build_world(config))]


def schema_from_config(config: Any) -> DatasetSchema:
    """The DatasetSchema of the dataset `config` (a GeneratorConfig) would generate."""
    return DatasetSchema.from_columns(columns_from_config(config))


def length_laws_from_config(config: Any) -> dict[str, LengthLaw]:
    return {name: LengthLaw(float(e.median_length), float(e.length_sigma), int(e.min_length), int(e.max_length))
            for name, e in config.events.items()}


def _length_laws_from_manifest(data: dict) -> dict[str, LengthLaw]:
    events = (data.get("config") or {}).get("events")
    if isinstance(events, dict) and events:
        try:
            return {n: LengthLaw(float(e["median_length"]), float(e.get("length_sigma", 0.0)),
                                 int(e.get("min_length", 0)), int(e["max_length"])) for n, e in events.items()}
        except (KeyError, TypeError, ValueError):
            pass
    laws = {}
    for split in ("train", "eval"):
        entry = data.get("splits", {}).get(split) or {}
        stats = entry.get("lengths") or entry.get("length_stats") or {}
        for name, s in stats.items():
            try:
                p50, p99, mx = float(s["p50"]), float(s.get("p99", s["p50"])), int(s["max"])
            except (KeyError, TypeError, ValueError):
                continue
            sigma = math.log(p99 / p50) / 2.326 if p50 > 0 and p99 > p50 else 0.0
            laws.setdefault(name, LengthLaw(max(p50, 0.0), sigma, 0, mx))
    return laws


# ---- the source ----------------------------------------------------------------------------
class SyntheticBatches:
    """A cycling pool of on-device batches shaped like `schema` (see module docstring)."""

    def __init__(self, schema: DatasetSchema, batch_size: int = 512, device: str | torch.device = "cpu",
                 seed: int = 0, pool_size: int = 4, steps: int | None = None,
                 lengths: int | LengthLaw | Mapping[str, int | LengthLaw] | None = None,
                 max_lengths: int | Mapping[str, int] | None = None, include_p_true: bool = False,
                 event_types: Sequence[str] | None = None, multihot_max_length: int = 8,
                 base_ctr: float = 0.03, start_ts: int = DEFAULT_START_TS, request_span_days: float = 14.0,
                 history_span_days: float = 30.0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise KunbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise KunbenchError(f"pool_size must be a positive integer, got {pool_size!r}")
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            raise KunbenchError(f"steps must be an integer >= 0, got {steps!r}")
        if not 0.0 < base_ctr < 1.0:
            raise KunbenchError(f"base_ctr must be in (0, 1), got {base_ctr}")
        self.schema = schema
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise KunbenchError(f"device {device!r} asked for but CUDA is not available")
        self.seed = int(seed)
        self.pool_size = pool_size
        self.steps = steps
        self.include_p_true = include_p_true
        self.multihot_max_length = int(multihot_max_length)
        self.base_ctr = float(base_ctr)
        self.start_ts = int(start_ts)
        self.request_span_s = max(1, int(request_span_days * 86_400))
        self.history_span_s = max(2, int(history_span_days * 86_400))

        known = schema.event_types
        if event_types is None:
            self.event_types = tuple(known)
        else:
            bad = [e for e in event_types if e not in known]
            if bad:
                raise KunbenchError(f"unknown event type {bad[0]!r} (schema has {', '.join(known)})")
            self.event_types = tuple(event_types)
        self.length_laws = self._resolve_lengths(lengths, known)
        caps = self._resolve_caps(max_lengths, known)
        self.length_laws = {e: law.capped(caps.get(e)) for e, law in self.length_laws.items()}

        card = lambda c: int(c.cardinality) if c.cardinality else DEFAULT_CARDINALITY  # noqa: E731
        self._cat_card = torch.tensor([card(c) for c in schema.categorical], dtype=torch.float64, device=self.device)
        self._mh = [(c.name, card(c), int(c.extra.get("max_length", self.multihot_max_length)))
                    for c in schema.multihot]
        self._seq_card = {e: (card(schema.sequence_columns[e]["item"]), card(schema.sequence_columns[e]["category"]))
                          for e in self.event_types}
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.pool: list[Batch] = [self._make() for _ in range(pool_size)]

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, **kwargs) -> "SyntheticBatches":
        """Shaped like the dataset a GeneratorConfig would produce (lengths from its event laws)."""
        kwargs.setdefault("lengths", length_laws_from_config(config))
        kwargs.setdefault("base_ctr", config.base_ctr)
        kwargs.setdefault("start_ts", config.start_ts)
        kwargs.setdefault("request_span_days", config.request_span_days)
        kwargs.setdefault("history_span_days", config.history_span_days)
        kwargs.setdefault("multihot_max_length", config.multihot_max_length)
        return cls(schema_from_config(config), **kwargs)

    @classmethod
    def from_preset(cls, preset: str = "standard", sets: Mapping[str, Any] | None = None, **kwargs) -> "SyntheticBatches":
        from kunbench.generators.config import build_config

        return cls.from_config(build_config(preset, sets=dict(sets or {})), **kwargs)

    @classmethod
    def from_manifest(cls, root: str | os.PathLike, **kwargs) -> "SyntheticBatches":
        """Shaped like an existing dataset directory (its schema and length laws), without reading shards."""
        manifest = load_manifest(Path(root))
        if "lengths" not in kwargs:
            laws = _length_laws_from_manifest(manifest.data)
            if laws:
                kwargs["lengths"] = laws
        cfg = manifest.data.get("config") or {}
        for key in ("base_ctr", "start_ts", "request_span_days", "history_span_days", "multihot_max_length"):
            if key in cfg and key not in kwargs:
                kwargs[key] = cfg[key]
        return cls(manifest.schema, **kwargs)

    # ---- settings ----------------------------------------------------------------------------
    @staticmethod
    def _resolve_lengths(lengths, known: Sequence[str]) -> dict[str, LengthLaw]:
        def law(name: str, v) -> LengthLaw:
            if isinstance(v, LengthLaw):
                return v
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise KunbenchError(f"length for event type {name!r} must be an integer >= 0 or a LengthLaw, got {v!r}")
            return LengthLaw.fixed(int(v))

        default = LengthLaw(32.0, 0.5, 0, 64)
        if lengths is None:
            return {e: default for e in known}
        if isinstance(lengths, Mapping):
            bad = [e for e in lengths if e not in known]
            if bad:
                raise KunbenchError(f"lengths names unknown event type {bad[0]!r} (schema has {', '.join(known)})")
            return {e: law(e, lengths[e]) if e in lengths else default for e in known}
        return {e: law(e, lengths) for e in known}

    @staticmethod
    def _resolve_caps(max_lengths, known: Sequence[str]) -> dict[str, int]:
        if max_lengths is None:
            return {}
        items = max_lengths.items() if isinstance(max_lengths, Mapping) else [(e, max_lengths) for e in known]
        caps = {}
        for e, v in items:
            if e not in known:
                raise KunbenchError(f"max_lengths names unknown event type {e!r} (schema has {', '.join(known)})")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise KunbenchError(f"max length for {e!r} must be an integer >= 0, got {v!r}")
            caps[e] = int(v)
        return caps

    # ---- generation --------------------------------------------------------------------------
    def _randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, max(int(high), 1), (n,), generator=self.generator, device=self.device,
                             dtype=torch.int64)

    def _make(self) -> Batch:
        B, dev, g = self.batch_size, self.device, self.generator
        F = self._cat_card.numel()
        u = torch.rand((B, F), generator=g, device=dev, dtype=torch.float64)
        cat = (u * self._cat_card).to(torch.int64)
        dense = torch.randn((B, len(self.schema.dense)), generator=g, device=dev, dtype=torch.float32)
        multihot = {}
        for name, card, max_len in self._mh:
            lens = torch.randint(0, max_len + 1, (B,), generator=g, device=dev, dtype=torch.int64)
            offsets = lengths_to_offsets(lens)
            multihot[name] = Jagged(self._randint(card, int(offsets[-1])), offsets)
        request_ts = self.start_ts + torch.randint(0, self.request_span_s, (B,), generator=g, device=dev,
                                                   dtype=torch.int64)
        sequences, max_lengths, length_slices = {}, {}, {}
        span = self.history_span_s
        for e in self.event_types:
            lens = self.length_laws[e].sample(B, g, dev)
            length_slices[e] = slice_maxima(lens.cpu())  # read once here, never by the model
            max_lengths[e] = length_slices[e].longest
            offsets = lengths_to_offsets(lens)
            n = int(offsets[-1])
            item_card, cat_card = self._seq_card[e]
            item = self._randint(item_card, n)
            category = self._randint(cat_card, n)
            rows = segment_ids(offsets, n)
            ago = torch.randint(1, span, (n,), generator=g, device=dev, dtype=torch.int64)
            # sort within rows by age, oldest first: rows stay contiguous since the row is the major key
            key, _ = torch.sort(rows * span + (span - ago))
            ts = request_ts[rows] - (span - (key - rows * span))
            sequences[e] = EventSequence(item, category, ts, offsets)
        if self.include_p_true:
            logit = math.log(self.base_ctr / (1 - self.base_ctr)) + 0.8 * torch.randn(
                B, generator=g, device=dev, dtype=torch.float64)
            p_true = torch.sigmoid(logit)
        else:
            p_true = torch.full((B,), self.base_ctr, dtype=torch.float64, device=dev)
        labels = (torch.rand(B, generator=g, device=dev, dtype=torch.float64) < p_true).to(torch.float32)
        return Batch(context_categorical=cat, context_dense=dense, multihot=multihot, sequences=sequences,
                     request_ts=request_ts, labels=labels, p_true=p_true if self.include_p_true else None,
                     max_lengths=max_lengths, length_slices=length_slices)

    # ---- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        def forever() -> Iterator[Batch]:
            while True:
                yield from self.pool

        it = forever()
        return it if self.steps is None else islice(it, self.steps)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless SyntheticBatches has no len(); pass steps=")
        return self.steps

    @property
    def num_rows(self) -> int | None:
        return None if self.steps is None else self.steps * self.batch_size

    def __repr__(self) -> str:
        return (f"SyntheticBatches(batch_size={self.batch_size}, device={str(self.device)!r}, seed={self.seed}, "
                f"pool_size={self.pool_size}, event_types={list(self.event_types)})")
