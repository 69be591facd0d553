"""Signal probe: how much of the oracle's edge each *view* of a row can reach, in the best case.

A dataset's label comes from known terms, so "where does the signal live" has a numeric answer.
The probe rebuilds the hidden world from the manifest, recomputes the logit from the observed
columns (and checks it against the stored `p_true`, which proves the floor is reachable from the
row), then gives a logistic readout the per-row statistics a restricted view offers and fits it on
the train split with `p_true` as soft labels. Its expected gap closed on the eval split is the
ceiling of that view for a model that learns the hidden world perfectly (item latents, weights):

- `context`: the exact context and cross terms, histories ignored;
- `pooled_last_K`: plus, per event type, the similarity of the ad to the uniform mean of the last
  K events (and its product with the surface), which is what Wukong's pooled tokens carry;
- `merged_mean_T`: plus the similarity of the ad to one uniform mean of the newest T events of all
  streams merged by time (no event types, no recency): what pooling without a sequence model sees;
- `merged_last_T`: plus the exact history statistics, but computed only on the events that survive
  merging all streams by time and keeping the newest T (InterFormer's input);
- `categories_only`: the exact statistics, but with every item's latent replaced by its category
  centroid: what a model that learns category embeddings and no item identity can reach;
- `exact`: every term recomputed from the full row (should reach ~1: a check of the fit itself).

A model's gap closed below its view's ceiling is then a learning shortfall (too little data or a
poor fit to the hidden world), not missing information.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

from kunbench.errors import KunbenchError
from kunbench.data.manifest import Manifest, load_manifest
from kunbench.metrics import LogLossSums, gap_closed
from kunbench.generators.chunk import Chunk, EventColumns
from kunbench.generators.config import GeneratorConfig, config_from_dict
from kunbench.generators.config import V2_TERMS
from kunbench.generators.signal import (HISTORY_TERMS, Calibration, combine, history_features, raw_terms,
                                        segment_sums, sigmoid)
from kunbench.generators.world import World, build_world

CONTEXT_TERMS = frozenset({"context", "cross"})
LINEAR_HISTORY = frozenset(HISTORY_TERMS) - frozenset(V2_TERMS)  # terms 3-7: pooled statistics
# the view that adds one nonlinear term family to the pooled view: what that family alone is worth
TERM_VIEWS = {t: f"pooled+{t}" for t in V2_TERMS}


@dataclass(frozen=True)
class ViewResult:
    view: str
    features: int
    expected_ne: float
    expected_gap_closed: float


@dataclass(frozen=True)
class ProbeResult:
    oracle_expected_ne: float
    max_abs_p_error: float  # recomputed probability vs the stored p_true, over all probed rows
    train_rows: int
    eval_rows: int
    views: list[ViewResult]


def _chunk_from_table(cfg: GeneratorConfig, t, columns: list[dict]) -> Chunk:
    """Rebuild the generator's in-memory chunk from the observed Parquet columns."""
    def col(name):
        return t.column(name).to_numpy()

    def lists(name):
        arr = t.column(name).combine_chunks()
        off = arr.offsets.to_numpy().astype(np.int64)
        return off - off[0], arr.flatten().to_numpy()

    by_role = {}
    for c in columns:
        by_role.setdefault(c["role"], []).append(c["name"])
    cat_names = [n for n in by_role.get("context_categorical", []) if n.startswith("ctx_cat_")]
    n = t.num_rows
    categorical = (np.stack([col(f) for f in cat_names]).astype(np.int64) if cat_names
                   else np.zeros((0, n), dtype=np.int64))
    dense_names = by_role.get("context_dense", [])
    dense = (np.stack([col(f) for f in dense_names]).astype(np.float32) if dense_names
             else np.zeros((0, n), dtype=np.float32))
    multihot = [lists(f) for f in by_role.get("context_multihot", [])]
    events = {}
    for e in cfg.events:
        off, item = lists(f"seq_{e}_item")
        _, cat = lists(f"seq_{e}_category")
        _, ts = lists(f"seq_{e}_ts")
        lengths = np.diff(off)
        row = np.repeat(np.arange(n, dtype=np.int64), lengths)
        events[e] = EventColumns(lengths, off, row, item.astype(np.int64), cat.astype(np.int64),
                                 ts.astype(np.int64))
    return Chunk(0, n, col("request_ts").astype(np.int64), col("user_id"), col("ad_id").astype(np.int64),
                 col("ad_category").astype(np.int64), col("surface").astype(np.int64), categorical, dense,
                 multihot, events)


def _subset(cols: EventColumns, keep: np.ndarray) -> EventColumns:
    row = cols.row[keep]
    lengths = np.bincount(row, minlength=cols.lengths.shape[0]).astype(np.int64)
    off = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return EventColumns(lengths, off, row, cols.item[keep], cols.category[keep], cols.ts[keep])


def last_k(cols: EventColumns, k: int) -> EventColumns:
    """The newest `k` events of each row (events are stored oldest first)."""
    rank_from_end = cols.offsets[1:][cols.row] - 1 - np.arange(cols.row.shape[0])
    return _subset(cols, rank_from_end < k)


def merged_last_t(events: dict[str, EventColumns], t_max: int) -> dict[str, EventColumns]:
    """Per stream, the events that survive merging all streams by time and keeping the newest t_max.

    Ties in `ts` are broken as the backends' merge breaks them: stream order, then order within the stream."""
    names = list(events)
    row = np.concatenate([events[e].row for e in names])
    ts = np.concatenate([events[e].ts for e in names])
    src = np.concatenate([np.full(events[e].row.shape[0], i) for i, e in enumerate(names)])
    pos = np.concatenate([np.arange(events[e].row.shape[0]) for e in names])
    order = np.lexsort((-pos, -src, -ts, row))  # per row, newest first
    row_o = row[order]
    first = np.searchsorted(row_o, row_o, side="left")
    keep_sorted = (np.arange(row_o.shape[0]) - first) < t_max
    out = {}
    for i, e in enumerate(names):
        mask = np.zeros(events[e].row.shape[0], dtype=bool)
        sel = keep_sorted & (src[order] == i)
        mask[pos[order][sel]] = True
        out[e] = _subset(events[e], mask)
    return out


def _pooled_similarity(world: World, chunk: Chunk, cols: EventColumns) -> np.ndarray:
    """<u_ad, mean latent of the events>, normalized: the dot of the ad with a pooled token."""
    n = chunk.n
    if cols.item.size == 0:
        return np.zeros(n)
    s = world.similarity(cols.item, cols.category, world.latents(chunk.ad, chunk.ad_category), cols.row)
    sums = segment_sums(s, cols.offsets, cols.lengths)
    return np.divide(sums, cols.lengths, out=np.zeros(n), where=cols.lengths > 0)


def _with_surface(stats: list[np.ndarray], surface: np.ndarray, n_surfaces: int) -> list[np.ndarray]:
    """Each statistic and its product with a one-hot surface: the label weights history terms by surface."""
    onehot = np.eye(n_surfaces)[surface]
    out = []
    for s in stats:
        out.append(s)
        out += [s * onehot[:, j] for j in range(n_surfaces)]
    return out


def _exact_features(world: World, chunk: Chunk, events: dict[str, EventColumns],
                    active: frozenset[str]) -> list[np.ndarray]:
    """The generator's own history statistics on the events a view keeps: per stream mean and
    recency-weighted similarity (with their surface products), the long-range mean, and the raw
    value of every active term among 8-12."""
    f = history_features(world, chunk, events, active | LINEAR_HISTORY)
    stats = _with_surface([*f["mean_s"], *f["rec_s"], f["long"]], chunk.surface, world.config.num_surfaces)
    return stats + [f[t] for t in V2_TERMS if t in active]


def _saturations(x: np.ndarray) -> list[np.ndarray]:
    """A few saturating transforms of a weighted count: a linear readout of them approximates any
    smooth saturation the label may use."""
    return [x, -np.expm1(-0.3 * x), -np.expm1(-x), -np.expm1(-3.0 * x)]


def _unordered_features(world: World, chunk: Chunk, active: frozenset[str]) -> list[np.ndarray]:
    """What a model can compute when each stream is a set: items, categories and event types are
    known; order and timestamps are not. Exact for set functions (means, target_peak); for the
    terms that need order or time, the best set statistics: unweighted counts and means."""
    cfg = world.config
    n = chunk.n
    f = history_features(world, chunk, chunk.events, frozenset({"target_match"} | ({"target_peak"} & active)))
    feats = _with_surface(list(f["mean_s"]), chunk.surface, cfg.num_surfaces)
    if "target_peak" in active:
        feats.append(f["target_peak"])
    per_stream: dict[str, list[np.ndarray]] = {t: [] for t in ("repeat", "transition", "time_gap")}
    for k, name in enumerate(cfg.events):
        cols = chunk.events[name]
        row = cols.row
        if "repeat" in active:
            hits = np.bincount(row, cols.item == chunk.ad[row], minlength=n)
            per_stream["repeat"].append(world.repeat_weight[k] * hits)
        if "time_gap" in active:
            hits = np.bincount(row, cols.category == chunk.ad_category[row], minlength=n)
            per_stream["time_gap"].append(world.time_gap_weight[k] * hits)
        if "transition" in active:
            aff = world.transition_affinity(cols.category, chunk.ad_category[row]) if row.size else np.zeros(0)
            sums = np.bincount(row, aff, minlength=n)
            per_stream["transition"].append(world.transition_weight[k] * np.divide(
                sums, cols.lengths, out=np.zeros(n), where=cols.lengths > 0))
    for term in ("repeat", "time_gap"):
        if term in active:
            feats += per_stream[term] + _saturations(sum(per_stream[term]))
    if "transition" in active:
        feats += per_stream["transition"] + [sum(per_stream["transition"])]
    if "fatigue" in active and cfg.fatigue_streams is not None:
        exp_cols, eng_cols = (chunk.events[e] for e in cfg.fatigue_streams)
        exp_cat = np.bincount(exp_cols.row, exp_cols.category == chunk.ad_category[exp_cols.row], minlength=n)
        exp_item = np.bincount(exp_cols.row, exp_cols.item == chunk.ad[exp_cols.row], minlength=n)
        eng_cat = np.bincount(eng_cols.row, eng_cols.category == chunk.ad_category[eng_cols.row], minlength=n)
        feats += _saturations(exp_cat + 2.0 * exp_item) + [eng_cat, (eng_cat > 0).astype(np.float64),
                                                           (exp_cat + 2.0 * exp_item) * (eng_cat == 0)]
    return feats


View = Callable[[World, Chunk, dict[str, np.ndarray], frozenset[str]], list[np.ndarray]]


def views(pool_k: int, merge_t: int, active: frozenset[str] = frozenset(V2_TERMS)) -> dict[str, View]:
    """The probe's views by name; `active` are the terms the dataset's label has (terms of 8-12
    that are off get no per-family view)."""
    def context(world, chunk, terms, act):
        return [terms["context"], terms["cross"]]

    def pooled(world, chunk, terms, act):
        stats = [_pooled_similarity(world, chunk, last_k(chunk.events[e], pool_k)) for e in world.config.events]
        return context(world, chunk, terms, act) + _with_surface(stats, chunk.surface, world.config.num_surfaces)

    def merged_mean(world, chunk, terms, act):
        kept = merged_last_t(chunk.events, merge_t)
        n = chunk.n
        total = sum(c.lengths for c in kept.values())
        sums = sum(_pooled_similarity(world, chunk, c) * c.lengths for c in kept.values())
        mean = np.divide(sums, total, out=np.zeros(n), where=total > 0)
        return context(world, chunk, terms, act) + _with_surface([mean], chunk.surface, world.config.num_surfaces)

    def merged(world, chunk, terms, act):
        return context(world, chunk, terms, act) + _exact_features(
            world, chunk, merged_last_t(chunk.events, merge_t), act)

    def unordered(world, chunk, terms, act):
        return context(world, chunk, terms, act) + _unordered_features(world, chunk, act)

    def categories(world, chunk, terms, act):
        blurred = dataclasses.replace(world, noise=np.zeros_like(world.noise))
        # no item identity: an item is known only by its category
        events = {e: dataclasses.replace(c, item=c.category) for e, c in chunk.events.items()}
        blind = dataclasses.replace(chunk, ad=chunk.ad_category, events=events)
        return context(world, chunk, terms, act) + _exact_features(blurred, blind, events, act)

    def exact(world, chunk, terms, act):
        return context(world, chunk, terms, act) + _exact_features(world, chunk, chunk.events, act)

    def family(term):
        def view(world, chunk, terms, act):
            return pooled(world, chunk, terms, act) + [terms[term]]
        return view

    out = {"context": context, f"pooled_last_{pool_k}": pooled, f"merged_mean_{merge_t}": merged_mean,
           f"merged_last_{merge_t}": merged, "unordered": unordered, "categories_only": categories}
    out.update({TERM_VIEWS[t]: family(t) for t in V2_TERMS if t in active})
    out["exact"] = exact
    return out


def _tables(manifest: Manifest, split: str, max_rows: int) -> Iterator:
    left = max_rows
    for path in manifest.files(split):
        if left <= 0:
            return
        t = pq.read_table(path)
        if t.num_rows > left:
            t = t.slice(0, left)
        left -= t.num_rows
        yield t


def _features(manifest: Manifest, split: str, world: World, calib: Calibration, vs: dict[str, View],
              max_rows: int, progress: Callable[[int], None] | None) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    feats: dict[str, list[np.ndarray]] = {name: [] for name in vs}
    p_true, err = [], 0.0
    cfg = world.config
    for t in _tables(manifest, split, max_rows):
        chunk = _chunk_from_table(cfg, t, manifest.data["columns"])
        terms = raw_terms(world, chunk, calib.active | CONTEXT_TERMS)
        active = calib.active & frozenset(V2_TERMS)
        p = t.column("p_true").to_numpy()
        logit = combine(calib, terms, chunk.n)
        err = max(err, float(np.max(np.abs(sigmoid(logit) - p))) if chunk.n else 0.0)
        for name, view in vs.items():
            feats[name].append(np.stack(view(world, chunk, terms, active), axis=1))
        p_true.append(p)
        if progress is not None:
            progress(chunk.n)
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(p_true), err


def _soft_log_loss(z: np.ndarray, p: np.ndarray) -> float:
    """Mean cross-entropy of logits `z` against soft labels `p`, stable for large |z|."""
    return float(np.mean(np.logaddexp(0.0, z) - p * z))


def fit_logistic(x: np.ndarray, p: np.ndarray, l2: float = 1e-8, iters: int = 100) -> np.ndarray:
    """Newton's method for logistic regression on soft labels `p`; returns weights, bias last. The
    tiny ridge only keeps the Hessian invertible (a statistic and its surface products are collinear);
    the step is halved until the loss falls (plain Newton overshoots on rare, skewed features)."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = np.concatenate([(x - mu) / sd, np.ones((x.shape[0], 1))], axis=1)
    w = np.zeros(z.shape[1])
    w[-1] = np.log(p.mean() / (1 - p.mean()))

    def objective(v: np.ndarray) -> float:
        return _soft_log_loss(z @ v, p) + 0.5 * l2 * float(v @ v)

    loss = objective(w)
    for _ in range(iters):
        q = sigmoid(z @ w)
        grad = z.T @ (q - p) / len(p) + l2 * w
        hess = (z * (q * (1 - q))[:, None]).T @ z / len(p) + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            trial = w - t * step
            trial_loss = objective(trial)
            if trial_loss <= loss:
                break
            t *= 0.5
        else:
            break  # no descent along the Newton direction: converged to float precision
        w, loss = trial, trial_loss
        if np.max(np.abs(t * step)) < 1e-9:
            break
    scale = np.concatenate([1 / sd, [1.0]])
    return np.concatenate([w[:-1] * scale[:-1], [w[-1] - np.sum(w[:-1] * mu / sd)]])


def expected_ne(p_true: np.ndarray, q: np.ndarray) -> float:
    """NE with `p_true` as soft labels, as the evaluator computes it."""
    sums = LogLossSums()
    sums.add(p_true, q)
    return sums.ne


def probe(root: str | Path, pool_k: int = 64, merge_t: int = 256, max_rows: int = 1 << 62,
          progress: Callable[[int], None] | None = None) -> ProbeResult:
    """`max_rows` caps the rows read per split; `progress(rows)` is called after each shard."""
    if pool_k < 1 or merge_t < 1 or max_rows < 1:
        raise KunbenchError(f"pool_k, merge_t and max_rows must be >= 1, got {pool_k}, {merge_t} and {max_rows}")
    manifest = load_manifest(root)
    if "world" not in manifest.data or "config" not in manifest.data:
        raise KunbenchError(f"{root}: manifest has no generator world; the probe needs a kunbench-generated dataset")
    world = build_world(config_from_dict(manifest.data["config"]))
    calib = Calibration.from_dict(manifest.data["world"])
    vs = views(pool_k, merge_t, calib.active & frozenset(V2_TERMS))
    x_tr, p_tr, e1 = _features(manifest, "train", world, calib, vs, max_rows, progress)
    x_ev, p_ev, e2 = _features(manifest, "eval", world, calib, vs, max_rows, progress)
    if len(p_tr) == 0 or len(p_ev) == 0:
        raise KunbenchError(f"{root}: the probe needs rows in both the train and the eval split")
    oracle = expected_ne(p_ev, p_ev)
    results = []
    for name in vs:
        w = fit_logistic(x_tr[name], p_tr)
        q = sigmoid(x_ev[name] @ w[:-1] + w[-1])
        e_ne = expected_ne(p_ev, q)
        results.append(ViewResult(name, x_tr[name].shape[1], e_ne, gap_closed(e_ne, oracle)))
    return ProbeResult(oracle, max(e1, e2), len(p_tr), len(p_ev), results)
