"""The hidden world: field cardinalities and permutations, item latents, weight salts, tables.

Built deterministically from (config, seed) in every process that needs it, from its own
SeedSequence, so no process ever ships tables to another. Tables are small (category centroids, a
65536-row latent noise table, per-field scalars); nothing is sized by the number of users or items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kunbench.generators.config import GeneratorConfig
from kunbench.generators.sampling import coprime_multiplier, splitmix64

WORLD_TAG = 0x574F524C  # "WORL": world parameters
WORLD2_TAG = 0x574F5232  # "WOR2": world v2 parameters (their own stream: v1's draws are unchanged)
CALIB_TAG = 0x43414C49  # "CALI": calibration sample
NOISE_ROWS = 1 << 16
NOISE_SHIFT = np.uint64(64 - 16)
_FIB = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class World:
    config: GeneratorConfig
    # categorical context fields, arrays of length F
    cat_cardinality: np.ndarray
    cat_mult: np.ndarray
    cat_offset: np.ndarray
    # dense fields: value = mu + sd * N(0,1), exponentiated where lognormal
    dense_lognormal: np.ndarray  # bool [D]
    dense_mu: np.ndarray
    dense_sd: np.ndarray
    dense_mean: np.ndarray  # analytic mean / std, for standardizing in the context term
    dense_std: np.ndarray
    # multi-hot fields
    mh_cardinality: np.ndarray
    mh_mult: np.ndarray
    mh_offset: np.ndarray
    # entities
    user_mult: int
    user_offset: int
    surface_mult: int
    surface_offset: int
    items_per_cat: int
    item_in_cat_mult: int
    item_cat_offset: np.ndarray  # [n_cat] per-category shift of within-category ranks
    item_global_mult: int
    item_global_offset: int
    cat_mult_: int  # user interest categories: Zipf over categories, permuted
    cat_offset_: int
    interest_salt: int
    # latents
    centroids: np.ndarray  # [n_cat, d] float32
    noise: np.ndarray  # [NOISE_ROWS, d] float32, already scaled by latent_noise
    # signal tables
    weighted_cat: np.ndarray  # indices of categorical fields with first-order weights
    weighted_dense: np.ndarray
    weighted_mh: np.ndarray
    dense_weight: np.ndarray  # [len(weighted_dense)]
    field_salt: np.ndarray  # uint64 [F + M] salts for hashed weights (cat fields, then multihot)
    cross_pairs: np.ndarray  # [P, 2] categorical field indices
    cross_salt: np.ndarray  # uint64 [P]
    surface_weight: np.ndarray  # [num_surfaces, n_events]
    event_value: np.ndarray  # [n_events], centred
    # world v2 (terms 8-12)
    repeat_weight: np.ndarray  # [n_events] > 0: how much a past occurrence of the ad's item counts
    transition_matrix: np.ndarray  # [d, d]: affinity(from, to) = centroid_from W centroid_to
    transition_weight: np.ndarray  # [n_events] > 0
    cycle_days: np.ndarray  # [n_cat] return cycle of each category
    time_gap_weight: np.ndarray  # [n_events] > 0

    @property
    def item_space(self) -> int:
        return self.items_per_cat * self.config.num_item_categories

    # ---- item latents ----------------------------------------------------------------------
    def latents(self, items: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """Unit-norm float32 latents [N, d]: category centroid + noise row picked by item hash."""
        with np.errstate(over="ignore"):
            slot = ((items.astype(np.uint64) * _FIB) >> NOISE_SHIFT).astype(np.intp)
        lat = np.take(self.centroids, categories, axis=0)
        lat += np.take(self.noise, slot, axis=0)
        norm = np.sqrt(np.einsum("ij,ij->i", lat, lat))
        np.maximum(norm, 1e-6, out=norm)
        lat /= norm[:, None]
        return lat

    def similarity(self, items: np.ndarray, categories: np.ndarray, ad_latent: np.ndarray,
                   row: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """<latent(item), ad_latent[row]> per event, without materializing normalized latents.
        With `lengths` (rows' event counts, events grouped by row in order) the ad latents are
        repeated rather than gathered: the same values, read sequentially."""
        with np.errstate(over="ignore"):
            slot = ((items.astype(np.uint64) * _FIB) >> NOISE_SHIFT).astype(np.intp)
        lat = np.take(self.centroids, categories, axis=0)
        lat += np.take(self.noise, slot, axis=0)
        ad = np.take(ad_latent, row, axis=0) if lengths is None else np.repeat(ad_latent, lengths, axis=0)
        dot = np.einsum("ij,ij->i", lat, ad)
        nn = np.einsum("ij,ij->i", lat, lat)
        np.maximum(nn, 1e-12, out=nn)
        return dot.astype(np.float64) / np.sqrt(nn)

    def transition_affinity(self, from_cat: np.ndarray, to_cat: np.ndarray) -> np.ndarray:
        """Hidden category -> category transition (term 10): low rank through the centroids, so a
        model that learns category embeddings can learn it."""
        a = np.take(self.centroids, from_cat, axis=0) @ self.transition_matrix
        return np.einsum("ij,ij->i", a, np.take(self.centroids, to_cat, axis=0)).astype(np.float64)

    def interest_categories(self, users: np.ndarray) -> np.ndarray:
        """[n, user_interests] categories of each user, from a hash of (user, j): no user table."""
        from kunbench.generators.sampling import hashed_uniform, zipf_ranks

        cfg = self.config
        j = np.arange(cfg.user_interests, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = splitmix64(splitmix64(users.astype(np.uint64) ^ np.uint64(self.interest_salt))[:, None] + j)
        rank = zipf_ranks(hashed_uniform(h), cfg.num_item_categories, cfg.zipf_exponent)
        return (rank * self.cat_mult_ + self.cat_offset_) % cfg.num_item_categories


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int, size: int) -> np.ndarray:
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    vals = np.exp(rng.uniform(math.log(lo), math.log(hi), size))
    return np.clip(np.rint(vals), lo, hi).astype(np.int64)


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def build_world(config: GeneratorConfig) -> World:
    cfg = config
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, WORLD_TAG])))
    F, D, M = cfg.num_categorical, cfg.num_dense, cfg.num_multihot
    n_cat = cfg.num_item_categories

    # categorical fields: log-uniform cardinalities; field 0 is the "hot" widest field
    card = _log_uniform_int(rng, cfg.cardinality_min, cfg.cardinality_max, F)
    if F:
        card[0] = cfg.cardinality_max
    cat_mult = np.array([coprime_multiplier(rng, int(c)) for c in card], dtype=np.int64)
    cat_offset = np.array([int(rng.integers(0, c)) for c in card], dtype=np.int64)

    dense_lognormal = (np.arange(D) % 2) == 1
    dense_mu = rng.normal(0.0, 1.0, D)
    dense_sd = np.where(dense_lognormal, rng.uniform(0.3, 1.0, D), np.exp(rng.uniform(-0.7, 0.7, D)))
    ln_mean = np.exp(dense_mu + dense_sd**2 / 2)
    ln_std = np.sqrt(np.expm1(dense_sd**2)) * ln_mean
    dense_mean = np.where(dense_lognormal, ln_mean, dense_mu)
    dense_std = np.where(dense_lognormal, ln_std, dense_sd)

    mh_card = _log_uniform_int(rng, cfg.cardinality_min, min(cfg.cardinality_max, 100_000), M)
    mh_mult = np.array([coprime_multiplier(rng, int(c)) for c in mh_card], dtype=np.int64)
    mh_offset = np.array([int(rng.integers(0, c)) for c in mh_card], dtype=np.int64)

    items_per_cat = max(1, cfg.num_items // n_cat)
    item_space = items_per_cat * n_cat

    # item latents: clustered by category
    d = cfg.latent_dim
    centroids = _unit_rows(rng, n_cat, d).astype(np.float32)
    noise = (rng.standard_normal((NOISE_ROWS, d)) * (cfg.latent_noise / math.sqrt(d))).astype(np.float32)

    # signal: first-order weighted subset of the ctx fields (categorical, dense, multi-hot)
    n_ctx = F + D + M
    n_weighted = int(round(cfg.signal.weighted_field_fraction * n_ctx))
    chosen = np.sort(rng.permutation(n_ctx)[:n_weighted])
    weighted_cat = chosen[chosen < F]
    weighted_dense = chosen[(chosen >= F) & (chosen < F + D)] - F
    weighted_mh = chosen[chosen >= F + D] - F - D
    dense_weight = rng.standard_normal(len(weighted_dense))
    field_salt = rng.integers(0, 2**63, F + M, dtype=np.int64).astype(np.uint64)

    # crosses: pairs among the lowest-cardinality categorical fields, so they are learnable
    if F >= 2 and cfg.signal.cross_pairs > 0:
        pool_size = min(F, max(4, F // 3, int(math.ceil(math.sqrt(2 * cfg.signal.cross_pairs))) + 2))
        pool = np.argsort(card, kind="stable")[:pool_size]
        all_pairs = [(int(a), int(b)) for i, a in enumerate(pool) for b in pool[i + 1:]]
        pick = rng.permutation(len(all_pairs))[: cfg.signal.cross_pairs]
        cross_pairs = np.array([all_pairs[i] for i in np.sort(pick)], dtype=np.int64).reshape(-1, 2)
    else:
        cross_pairs = np.zeros((0, 2), dtype=np.int64)
    cross_salt = rng.integers(0, 2**63, len(cross_pairs), dtype=np.int64).astype(np.uint64)

    n_events = len(cfg.events)
    surface_weight = rng.standard_normal((cfg.num_surfaces, n_events))
    values = np.array([e.value for e in cfg.events.values()], dtype=np.float64)
    event_value = values - values.mean()

    rng2 = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, WORLD2_TAG])))
    sig = cfg.signal
    repeat_weight = np.exp(rng2.normal(0.0, 0.5, n_events))
    transition_matrix = rng2.standard_normal((d, d)) / math.sqrt(d)
    transition_weight = np.exp(rng2.normal(0.0, 0.5, n_events))
    cycle_days = np.exp(rng2.uniform(math.log(sig.cycle_min_days), math.log(sig.cycle_max_days), n_cat))
    time_gap_weight = np.exp(rng2.normal(0.0, 0.5, n_events))

    return World(
        config=cfg,
        cat_cardinality=card, cat_mult=cat_mult, cat_offset=cat_offset,
        dense_lognormal=dense_lognormal, dense_mu=dense_mu, dense_sd=dense_sd,
        dense_mean=dense_mean, dense_std=dense_std,
        mh_cardinality=mh_card, mh_mult=mh_mult, mh_offset=mh_offset,
        user_mult=coprime_multiplier(rng, cfg.num_users), user_offset=int(rng.integers(0, cfg.num_users)),
        surface_mult=coprime_multiplier(rng, cfg.num_surfaces),
        surface_offset=int(rng.integers(0, cfg.num_surfaces)),
        items_per_cat=items_per_cat,
        item_in_cat_mult=coprime_multiplier(rng, items_per_cat),
        item_cat_offset=rng.integers(0, items_per_cat, n_cat),
        item_global_mult=coprime_multiplier(rng, item_space),
        item_global_offset=int(rng.integers(0, item_space)),
        cat_mult_=coprime_multiplier(rng, n_cat), cat_offset_=int(rng.integers(0, n_cat)),
        interest_salt=int(rng.integers(0, 2**63)),
        centroids=centroids, noise=noise,
        weighted_cat=weighted_cat, weighted_dense=weighted_dense, weighted_mh=weighted_mh,
        dense_weight=dense_weight, field_salt=field_salt,
        cross_pairs=cross_pairs, cross_salt=cross_salt,
        surface_weight=surface_weight, event_value=event_value,
        repeat_weight=repeat_weight, transition_matrix=transition_matrix,
        transition_weight=transition_weight, cycle_days=cycle_days, time_gap_weight=time_gap_weight,
    )
