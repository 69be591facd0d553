"""The observed rows of one chunk (a row group): every feature column, drawn from the chunk's RNG.

A chunk is identified by its first global row; its RNG is seeded from (seed, first row), so any
process can rebuild any chunk and output never depends on how work was split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kunbench.generators.sampling import (
    affine_permute,
    offsets_from_lengths,
    sample_lengths,
    session_timestamps,
    zipf_constant,
    zipf_ranks,
    zipf_ranks_fast,
)
from kunbench.generators.world import World


@dataclass
class EventColumns:
    lengths: np.ndarray  # [n] int64
    offsets: np.ndarray  # [n+1] int64
    row: np.ndarray  # [N] row of each event (contiguous, ascending)
    item: np.ndarray  # [N] int64
    category: np.ndarray  # [N] int64
    ts: np.ndarray  # [N] int64, ascending within a row, < request_ts


@dataclass
class Chunk:
    start: int
    n: int
    request_ts: np.ndarray
    user: np.ndarray
    ad: np.ndarray
    ad_category: np.ndarray
    surface: np.ndarray
    categorical: np.ndarray  # [F, n] int64
    dense: np.ndarray  # [D, n] float32
    multihot: list[tuple[np.ndarray, np.ndarray]]  # per field (offsets [n+1], values)
    events: dict[str, EventColumns] = field(default_factory=dict)
    click_u: np.ndarray | None = None  # uniforms for the label draw


def chunk_rng(seed: int, start_row: int, tag: int | None = None) -> np.random.Generator:
    key = [seed, start_row] if tag is None else [seed, tag, start_row]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def _items(world: World, rng: np.random.Generator, row: np.ndarray, interests: np.ndarray,
           interest_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Items and their categories for draws belonging to rows `row`: with probability
    `interest_prob` from one of the row's user's interest categories (`interests` [n, K]), else a
    globally Zipf-popular item. Within a category, ranks are Zipf and permuted per category."""
    cfg = world.config
    n_cat = cfg.num_item_categories
    a = cfg.zipf_exponent
    K = interests.shape[1]
    n_draws = row.shape[0]
    u = rng.random(n_draws)
    v = rng.random(n_draws)  # v < p: from interest j = floor(v / p * K)
    from_interest = v < interest_prob
    if interest_prob > 0:
        pick = np.minimum(v * (K / interest_prob), K - 1).astype(np.int64)
    else:
        pick = np.zeros(n_draws, np.int64)
    icat = interests.reshape(-1)[row * K + pick]
    k = np.where(from_interest, zipf_constant(world.items_per_cat, a), zipf_constant(world.item_space, a))
    rank = zipf_ranks_fast(u, k, a)
    # interest path: item = cat + n_cat * perm_cat(rank); global path: a permutation of the space.
    # Each draw takes one path, so each permutation runs only on its own draws (the modulos are
    # most of the cost).
    hit = np.flatnonzero(from_interest)
    miss = np.flatnonzero(~from_interest)
    item = np.empty(n_draws, np.int64)
    category = np.empty(n_draws, np.int64)
    c = icat[hit]
    item[hit] = c + n_cat * affine_permute(rank[hit], world.item_in_cat_mult, world.item_cat_offset[c],
                                           world.items_per_cat)
    category[hit] = c
    g = affine_permute(rank[miss], world.item_global_mult, world.item_global_offset, world.item_space)
    item[miss] = g
    category[miss] = g % n_cat
    return item, category


def build_chunk(world: World, rng: np.random.Generator, start: int, n: int,
                request_ts: np.ndarray) -> Chunk:
    """Draw every observed column of `n` rows whose request times are given."""
    cfg = world.config
    a = cfg.zipf_exponent
    F, D, M = cfg.num_categorical, cfg.num_dense, cfg.num_multihot

    # entities
    user = affine_permute(zipf_ranks(rng.random(n), cfg.num_users, a), world.user_mult,
                          world.user_offset, cfg.num_users)
    interests = world.interest_categories(user)  # [n, user_interests]
    surface = affine_permute(zipf_ranks(rng.random(n), cfg.num_surfaces, a), world.surface_mult,
                             world.surface_offset, cfg.num_surfaces)
    ad, ad_category = _items(world, rng, np.arange(n), interests, cfg.ad_interest_prob)

    # context fields: [F, n] so each column is contiguous
    if F:
        u = rng.random((F, n))
        card = world.cat_cardinality[:, None]
        rank = zipf_ranks(u, card, a)
        categorical = affine_permute(rank, world.cat_mult[:, None], world.cat_offset[:, None], card)
    else:
        categorical = np.zeros((0, n), dtype=np.int64)
    if D:
        z = rng.standard_normal((D, n))
        x = world.dense_mu[:, None] + world.dense_sd[:, None] * z
        x = np.where(world.dense_lognormal[:, None], np.exp(np.minimum(x, 80.0)), x)
        dense = x.astype(np.float32)
    else:
        dense = np.zeros((0, n), dtype=np.float32)
    multihot = []
    for f in range(M):
        lengths = rng.integers(0, cfg.multihot_max_length + 1, n)
        off = offsets_from_lengths(lengths)
        c = int(world.mh_cardinality[f])
        vals = affine_permute(zipf_ranks(rng.random(int(off[-1])), c, a), int(world.mh_mult[f]),
                              int(world.mh_offset[f]), c)
        multihot.append((off, vals))

    # event histories
    activity = rng.standard_normal(n)
    events: dict[str, EventColumns] = {}
    hist_s = cfg.history_span_days * 86400.0
    sess_s = cfg.session_minutes * 60.0
    for name, ev in cfg.events.items():
        lengths = sample_lengths(rng, activity, ev.median_length, ev.length_sigma, ev.min_length,
                                 ev.max_length)
        off = offsets_from_lengths(lengths)
        row = np.repeat(np.arange(n, dtype=np.int64), lengths)
        item, category = _items(world, rng, row, interests, ev.interest_prob)
        ts = session_timestamps(rng, request_ts, lengths, row, hist_s, cfg.session_events, sess_s)
        events[name] = EventColumns(lengths, off, row, item, category, ts)

    click_u = rng.random(n)
    return Chunk(start, n, request_ts, user, ad, ad_category, surface, categorical, dense, multihot,
                 events, click_u)


def request_times(config, rng: np.random.Generator, start: int, n: int) -> np.ndarray:
    """Global row i gets start_ts + (i + U) * span / rows: monotone in i, so eval is the latest."""
    span = config.request_span_days * 86400.0
    i = np.arange(start, start + n, dtype=np.float64) + rng.random(n)
    return config.start_ts + np.floor(i * (span / config.rows)).astype(np.int64)


def calibration_times(config, rng: np.random.Generator, n: int) -> np.ndarray:
    span = config.request_span_days * 86400.0
    return config.start_ts + np.floor(rng.random(n) * span).astype(np.int64)

