"""The label: seven logit terms (data.md), z-scored on a calibration sample, plus a bias.

Every term is a deterministic function of the row's observed columns and the hidden world, so
`p_true = sigmoid(logit)` is the Bayes-optimal prediction and its NE is the dataset's floor.
Raw terms are divided by their standard deviation on a calibration sample (rows built from the
world seed alone) and multiplied by their strength; a strength of 0 skips the term entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kunbench.generators.chunk import Chunk, build_chunk, calibration_times, chunk_rng
from kunbench.generators.config import GeneratorConfig
from kunbench.generators.sampling import hash2, hashed_normal
from kunbench.generators.world import CALIB_TAG, World

TERMS = ("context", "cross", "target_match", "recency", "event_value", "surface", "long_range")
HISTORY_TERMS = frozenset(TERMS[2:])
CALIBRATION_ROWS = 4096


def strengths(config: GeneratorConfig) -> dict[str, float]:
    return {t: float(getattr(config.signal, t)) for t in TERMS}


def _segment_mean(row: np.ndarray, values: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    sums = np.bincount(row, weights=values, minlength=n)
    return np.divide(sums, counts, out=np.zeros(n), where=counts > 0)


def segment_sums(values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-row sums of `values` ([N] or [N, k]) over contiguous rows given by `offsets`; empty
    rows sum to 0 (np.add.reduceat alone would return the next row's first value)."""
    n = lengths.shape[0]
    sums = np.zeros((n,) + values.shape[1:])
    k = int(np.searchsorted(offsets[:-1], values.shape[0], side="left"))  # rows starting before the end
    if k:
        sums[:k] = np.add.reduceat(values, offsets[:k], axis=0)
        sums[:k][lengths[:k] == 0] = 0.0
    return sums


def raw_terms(world: World, chunk: Chunk, active: set[str] | frozenset[str]) -> dict[str, np.ndarray]:
    """Unscaled terms for the rows of `chunk`; only the names in `active` are computed."""
    cfg = world.config
    n = chunk.n
    out: dict[str, np.ndarray] = {}

    if "context" in active:
        t = np.zeros(n)
        for f in world.weighted_cat:
            t += hashed_normal(hash2(world.field_salt[f], chunk.categorical[f]))
        for k, f in enumerate(world.weighted_dense):
            zf = (chunk.dense[f].astype(np.float64) - world.dense_mean[f]) / world.dense_std[f]
            t += world.dense_weight[k] * zf
        for f in world.weighted_mh:
            off, vals = chunk.multihot[f]
            lengths = np.diff(off)
            row = np.repeat(np.arange(n), lengths)
            w = hashed_normal(hash2(world.field_salt[cfg.num_categorical + f], vals))
            t += _segment_mean(row, w, lengths, n)
        out["context"] = t

    if "cross" in active:
        t = np.zeros(n)
        for p, (f, g) in enumerate(world.cross_pairs):
            h = hash2(hash2(world.cross_salt[p], chunk.categorical[f]), chunk.categorical[g])
            t += hashed_normal(h)
        out["cross"] = t

    if active & HISTORY_TERMS:
        out.update(_history_terms(world, chunk, active))
    return out


def history_statistics(world: World, chunk: Chunk, events: dict, with_long: bool
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What terms 3-7 are built from, from per-event similarities s = <u_ad, latent(item)>: per stream
    `[E, n]` the mean s and the recency-weighted mean s, and `[n]` the mean s of the long-range
    stream's events older than `long_range_days` (zeros unless `with_long`). `events` is
    `chunk.events` or a subset of it (the signal probe's views)."""
    cfg = world.config
    n = chunk.n
    u = world.latents(chunk.ad, chunk.ad_category)  # [n, d]
    long_name = cfg.long_range_stream
    long_s = cfg.long_range_days * 86400.0
    mean_s, rec_s = [], []
    long_term = np.zeros(n)
    for name, ev in cfg.events.items():
        cols = events[name]
        if cols.item.size == 0:
            mean_s.append(np.zeros(n))
            rec_s.append(np.zeros(n))
            continue
        s = world.similarity(cols.item, cols.category, u, cols.row)
        age = (chunk.request_ts[cols.row] - cols.ts).astype(np.float64)
        want_long = name == long_name and with_long
        vals = np.empty((s.shape[0], 5 if want_long else 3))
        vals[:, 0] = s
        np.exp(age * (-1.0 / (ev.recency_days * 86400.0)), out=vals[:, 1])
        np.multiply(vals[:, 1], s, out=vals[:, 2])
        if want_long:
            np.greater(age, long_s, out=vals[:, 3])
            np.multiply(vals[:, 3], s, out=vals[:, 4])
        sums = segment_sums(vals, cols.offsets, cols.lengths)
        counts = cols.lengths
        mean_s.append(np.divide(sums[:, 0], counts, out=np.zeros(n), where=counts > 0))
        rec_s.append(np.divide(sums[:, 2], sums[:, 1], out=np.zeros(n), where=sums[:, 1] > 0))
        if want_long:
            long_term = np.divide(sums[:, 4], sums[:, 3], out=np.zeros(n), where=sums[:, 3] > 0)
    return np.stack(mean_s), np.stack(rec_s), long_term


def _history_terms(world: World, chunk: Chunk, active) -> dict[str, np.ndarray]:
    """Terms 3-7 from the history statistics."""
    mean_s, rec_s, long_term = history_statistics(world, chunk, chunk.events, "long_range" in active)
    out = {}
    if "target_match" in active:
        out["target_match"] = mean_s.sum(0)
    if "recency" in active:
        out["recency"] = (rec_s - mean_s).sum(0)
    if "event_value" in active:
        out["event_value"] = world.event_value @ rec_s
    if "surface" in active:
        out["surface"] = (world.surface_weight[chunk.surface] * rec_s.T).sum(1)
    if "long_range" in active:
        out["long_range"] = long_term
    return out


@dataclass(frozen=True)
class Calibration:
    """Per-term standard deviations on the calibration sample, scales and the bias."""

    term_std: dict[str, float]
    scale: dict[str, float]  # strength / std; 0 for skipped or degenerate terms
    bias: float
    rows: int

    def to_dict(self) -> dict:
        return {"bias": self.bias, "term_std": self.term_std, "term_scale": self.scale,
                "calibration_rows": self.rows, "terms": list(TERMS)}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(dict(d["term_std"]), dict(d["term_scale"]), float(d["bias"]), int(d["calibration_rows"]))

    @property
    def active(self) -> frozenset[str]:
        return frozenset(t for t, s in self.scale.items() if s != 0.0)


def combine(calib: Calibration, terms: dict[str, np.ndarray], n: int) -> np.ndarray:
    logit = np.full(n, calib.bias)
    for t in TERMS:  # fixed order: the same float sums everywhere
        s = calib.scale.get(t, 0.0)
        if s != 0.0:
            logit += s * terms[t]
    return logit


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bias_for(z: np.ndarray, base_ctr: float) -> float:
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if sigmoid(mid + z).mean() < base_ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


CALIBRATION_CHUNK = 256  # rows per calibration chunk (cache-friendly sizes)


def calibration_starts(rows: int = CALIBRATION_ROWS) -> list[tuple[int, int]]:
    return [(s, min(CALIBRATION_CHUNK, rows - s)) for s in range(0, rows, CALIBRATION_CHUNK)]


def calibration_chunk_terms(world: World, start: int, n: int) -> dict[str, np.ndarray]:
    """Raw active terms of one calibration chunk (rows from the world seed alone)."""
    cfg = world.config
    active = frozenset(t for t, s in strengths(cfg).items() if s > 0)
    if not active:
        return {}
    rng = chunk_rng(cfg.seed, start, CALIB_TAG)
    chunk = build_chunk(world, rng, start, n, calibration_times(cfg, rng, n))
    return raw_terms(world, chunk, active)


def calibrate(world: World, rows: int = CALIBRATION_ROWS, parts: list[dict] | None = None) -> Calibration:
    """Measure each active term's std on `rows` calibration rows and fit the bias.

    `parts`: the per-chunk raw terms of `calibration_starts(rows)`, in order, when they were
    computed elsewhere (worker processes); computed here otherwise.
    """
    cfg = world.config
    strength = strengths(cfg)
    active = frozenset(t for t, s in strength.items() if s > 0)
    if parts is None:
        parts = [calibration_chunk_terms(world, s, n) for s, n in calibration_starts(rows)]
    term_std: dict[str, float] = {}
    scale: dict[str, float] = {}
    z = np.zeros(rows if active else 1)
    for t in TERMS:
        if t not in active:
            term_std[t] = 0.0
            scale[t] = 0.0
            continue
        v = np.concatenate([p[t] for p in parts])
        sd = float(v.std())
        term_std[t] = sd
        scale[t] = strength[t] / sd if sd > 1e-12 else 0.0
        z += scale[t] * v
    bias = _bias_for(z, cfg.base_ctr)
    return Calibration(term_std, scale, bias, rows)
