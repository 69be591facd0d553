"""The label: twelve logit terms (docs/data.md section 5), z-scored on a calibration sample, plus a bias.

Every term is a deterministic function of the row's observed columns and the hidden world, so
`p_true = sigmoid(logit)` is the Bayes-optimal prediction and its NE is the dataset's floor.
Raw terms are divided by their standard deviation on a calibration sample (rows built from the
world seed alone) and multiplied by their strength; a strength of 0 skips the term entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kunbench.generators.chunk import Chunk, EventColumns, build_chunk, calibration_times, chunk_rng
from kunbench.generators.config import V2_TERMS, GeneratorConfig
from kunbench.generators.sampling import hash2, hashed_normal
from kunbench.generators.world import CALIB_TAG, World

TERMS = ("context", "cross", "target_match", "recency", "event_value", "surface", "long_range",
         *V2_TERMS)
HISTORY_TERMS = TERMS[2:]
CALIBRATION_ROWS = 16384  # base_ctr=0.05 on tiny: mean p_true 0.0485 (4096 rows gave 0.0461)


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

    if active & set(HISTORY_TERMS):
        out.update(_history_terms(world, chunk, active))
    return out


def segment_max(values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-row max of `values` over contiguous rows; -inf for empty rows."""
    n = lengths.shape[0]
    out = np.full(n, -np.inf)
    nonempty = np.flatnonzero(lengths > 0)
    if nonempty.size:
        out[nonempty] = np.maximum.reduceat(values, offsets[nonempty])
    return out


def _row_sum(row: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(row, weights=weights, minlength=n) if row.size else np.zeros(n)


def _per_event(cols: EventColumns, per_row: np.ndarray) -> np.ndarray:
    """`per_row[cols.row]`, as a repeat by the row lengths: the events of a row are contiguous and
    rows come in order, so it is the same array, read sequentially rather than gathered."""
    return np.repeat(per_row, cols.lengths, axis=0)


def newest_events(cols: EventColumns, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each row's newest `k` events (events are stored oldest first) and their rank
    from the newest (0 = newest); O(rows x k), not O(events)."""
    ends = cols.offsets[1:]
    idx = ends[:, None] - 1 - np.arange(k)[None, :]
    valid = idx >= cols.offsets[:-1][:, None]
    return idx[valid], np.broadcast_to(np.arange(k), idx.shape)[valid]


def history_features(world: World, chunk: Chunk, events: dict, active: frozenset[str]) -> dict[str, np.ndarray]:
    """Every history statistic the active terms need, on `events` (all of `chunk.events` or a
    view's subset): `mean_s`, `rec_s` [E, n] and `long` [n] for terms 3-7, and the raw value of
    each active term among 8-12 under its own name."""
    cfg = world.config
    sig = cfg.signal
    n = chunk.n
    n_ev = len(cfg.events)
    need_s = bool(active & {"target_match", "recency", "event_value", "surface", "long_range", "target_peak"})
    u = world.latents(chunk.ad, chunk.ad_category) if need_s else None
    long_name = cfg.long_range_stream
    long_s = cfg.long_range_days * 86400.0
    mean_s, rec_s = np.zeros((n_ev, n)), np.zeros((n_ev, n))
    long_term = np.zeros(n)
    repeat = np.zeros(n)
    transition = np.zeros(n)
    time_gap = np.zeros(n)
    peak_parts: list[tuple[np.ndarray, np.ndarray]] = []  # (row, s) per stream, for target_peak
    peak_max = np.full(n, -np.inf)
    position_weight = np.power(sig.transition_decay, np.arange(sig.transition_events, dtype=np.float64))
    for k, (name, ev) in enumerate(cfg.events.items()):
        cols = events[name]
        if cols.item.size == 0:
            continue
        row = cols.row
        age = (_per_event(cols, chunk.request_ts) - cols.ts).astype(np.float64)
        decay = None
        if need_s:
            s = world.similarity(cols.item, cols.category, u, row, lengths=cols.lengths)
            decay = np.exp(age * (-1.0 / (ev.recency_days * 86400.0)))
            counts = cols.lengths
            # one contiguous column per sum (a reduceat over an [N, k] block walks it strided)
            sum_s = segment_sums(s, cols.offsets, counts)
            sum_decay = segment_sums(decay, cols.offsets, counts)
            sum_rec = segment_sums(decay * s, cols.offsets, counts)
            np.divide(sum_s, counts, out=mean_s[k], where=counts > 0)
            np.divide(sum_rec, sum_decay, out=rec_s[k], where=sum_decay > 0)
            if name == long_name and "long_range" in active:
                far = (age > long_s).astype(np.float64)
                sum_far = segment_sums(far, cols.offsets, counts)
                sum_far_s = segment_sums(far * s, cols.offsets, counts)
                long_term = np.divide(sum_far_s, sum_far, out=np.zeros(n), where=sum_far > 0)
            if "target_peak" in active:
                peak_parts.append((row, s))
                np.maximum(peak_max, segment_max(s, cols.offsets, cols.lengths), out=peak_max)
        if "repeat" in active:
            hit = np.flatnonzero(cols.item == _per_event(cols, chunk.ad))
            if hit.size:
                w = (decay[hit] if decay is not None
                     else np.exp(age[hit] * (-1.0 / (ev.recency_days * 86400.0))))
                repeat += _row_sum(row[hit], world.repeat_weight[k] * w, n)
        if "transition" in active:
            sel, rank = newest_events(cols, sig.transition_events)
            sel_row = row[sel]
            aff = world.transition_affinity(cols.category[sel], chunk.ad_category[sel_row])
            w = world.transition_weight[k] * position_weight[rank]
            transition += _row_sum(sel_row, w * aff, n)
        if "time_gap" in active:
            hit = np.flatnonzero(cols.category == _per_event(cols, chunk.ad_category))
            if hit.size:
                cycle = world.cycle_days[cols.category[hit]] * 86400.0
                z = np.log(age[hit] / cycle) * (1.0 / sig.cycle_width)
                time_gap += _row_sum(row[hit], world.time_gap_weight[k] * np.exp(-0.5 * z * z), n)
    out: dict[str, np.ndarray] = {"mean_s": mean_s, "rec_s": rec_s, "long": long_term}
    if "repeat" in active:
        out["repeat"] = -np.expm1(-repeat)  # saturating in the (weighted) count
    if "target_peak" in active:
        out["target_peak"] = _log_sum_exp(peak_parts, peak_max, sig.peak_temperature, n)
    if "transition" in active:
        out["transition"] = transition
    if "time_gap" in active:
        out["time_gap"] = -np.expm1(-time_gap)
    if "fatigue" in active:
        out["fatigue"] = _fatigue(world, chunk, events)
    return out


def _log_sum_exp(parts: list[tuple[np.ndarray, np.ndarray]], peak_max: np.ndarray, temperature: float,
                 n: int) -> np.ndarray:
    """temperature * log sum_j exp(s_j / temperature) over all of a row's events (0 for none): near
    the single best match, however long the history."""
    has = np.isfinite(peak_max)
    m = np.where(has, peak_max, 0.0)
    total = np.zeros(n)
    for row, s in parts:
        total += _row_sum(row, np.exp((s - m[row]) * (1.0 / temperature)), n)
    out = np.zeros(n)
    out[has] = m[has] + temperature * np.log(total[has])
    return out


def _fatigue(world: World, chunk: Chunk, events: dict) -> np.ndarray:
    """Minus the saturated, recency-weighted count of exposures of the ad's category shown after
    the last engagement with that category (exposures of the ad's own item count triple)."""
    n = chunk.n
    streams = world.config.fatigue_streams
    if streams is None:
        return np.zeros(n)
    exposure, engagement = events[streams[0]], events[streams[1]]
    last = np.full(n, np.iinfo(np.int64).min)
    hit = np.flatnonzero(engagement.category == _per_event(engagement, chunk.ad_category))
    if hit.size:
        np.maximum.at(last, engagement.row[hit], engagement.ts[hit])
    row = exposure.row
    keep = np.flatnonzero((exposure.category == _per_event(exposure, chunk.ad_category))
                          & (exposure.ts > _per_event(exposure, last)))
    if keep.size == 0:
        return np.zeros(n)
    r = row[keep]
    age = (chunk.request_ts[r] - exposure.ts[keep]).astype(np.float64)
    w = np.exp(age * (-1.0 / (world.config.signal.fatigue_days * 86400.0)))
    w *= 1.0 + 2.0 * (exposure.item[keep] == chunk.ad[r])
    return np.expm1(-_row_sum(r, w, n))  # -(1 - e^-x): lowers the logit


def _history_terms(world: World, chunk: Chunk, active) -> dict[str, np.ndarray]:
    """Terms 3-12 from the history features."""
    f = history_features(world, chunk, chunk.events, frozenset(active))
    mean_s, rec_s = f["mean_s"], f["rec_s"]
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
        out["long_range"] = f["long"]
    for t in V2_TERMS:
        if t in active:
            out[t] = f[t]
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
