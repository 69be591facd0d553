"""Vectorized samplers: bounded Zipf ranks, affine ID permutations, hashing, lengths, timestamps.

Everything works on whole numpy arrays (no Python loop over rows or events) and is a pure
function of its inputs and the `np.random.Generator` it is handed, so a chunk's rows depend only
on the chunk's seed.
"""

from __future__ import annotations

import math

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


# ---- hashing -------------------------------------------------------------------------------
def splitmix64(x: np.ndarray | int) -> np.ndarray:
    """The splitmix64 finalizer over uint64 arrays (wrapping arithmetic): a cheap, good hash."""
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z ^= z >> _S30
        z *= _MIX1
        z ^= z >> _S27
        z *= _MIX2
        z ^= z >> _S31
    return z


def hash2(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Hash of a pair of integer arrays (broadcasting)."""
    ha = splitmix64(a)
    with np.errstate(over="ignore"):
        return splitmix64(ha ^ np.asarray(b).astype(np.uint64))


def hashed_normal(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to approximately N(0, 1) values (sum of four 16-bit uniforms).

    Weights built this way need no table: the weight of value x in field f is
    `hashed_normal(hash2(salt_f, x))`, recomputed wherever it is needed.
    """
    m = np.uint64(0xFFFF)
    s = ((h & m).astype(np.float64) + ((h >> np.uint64(16)) & m) + ((h >> np.uint64(32)) & m)
         + (h >> np.uint64(48)))
    mean = 4 * 32767.5
    std = math.sqrt(4 * (65536.0**2 - 1) / 12.0)
    return (s - mean) / std


def hashed_uniform(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> uniform floats in [0, 1) (53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ---- Zipf ----------------------------------------------------------------------------------
def zipf_ranks(u: np.ndarray, cardinality: np.ndarray | int, exponent: float) -> np.ndarray:
    """0-based ranks with P(rank = k) ~ (k+1)^-exponent on [0, cardinality), from uniforms `u`.

    A bounded continuous power law on [1, C+1) sampled by inverse CDF, then floored; `cardinality`
    broadcasts against `u` (one value per field, or per event).
    """
    c = np.asarray(cardinality, dtype=np.float64)
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * np.log1p(c))
    else:
        one_minus = 1.0 - exponent
        k = np.power(c + 1.0, one_minus) - 1.0
        x = np.power(1.0 + u * k, 1.0 / one_minus)
    r = x.astype(np.int64) - 1
    np.clip(r, 0, np.asarray(cardinality, dtype=np.int64) - 1, out=r)
    return r


def zipf_constant(cardinality: int, exponent: float) -> float:
    """The per-cardinality constant of `zipf_ranks_fast` (computed once, not per draw)."""
    if abs(exponent - 1.0) < 1e-9:
        return math.log1p(cardinality)
    return (cardinality + 1.0) ** (1.0 - exponent) - 1.0


def zipf_ranks_fast(u: np.ndarray, k: np.ndarray | float, exponent: float) -> np.ndarray:
    """`zipf_ranks` with precomputed `zipf_constant`s and no clipping: a rank may (rarely, by
    rounding) equal the cardinality, which callers must wrap (an affine permutation mod C does)."""
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * k)
    else:
        x = np.power(1.0 + u * k, 1.0 / (1.0 - exponent))
    return x.astype(np.int64) - 1


def coprime_multiplier(rng: np.random.Generator, cardinality: int, limit: int = 1 << 22) -> int:
    """A multiplier a with gcd(a, C) = 1 (so r -> (a r + b) mod C permutes [0, C)).

    Bounded by `limit` so a * r stays below 2**63 for C <= 2**40.
    """
    if cardinality <= 2:
        return 1
    hi = min(cardinality, limit)
    while True:
        a = int(rng.integers(max(2, hi // 3), hi)) if hi > 3 else 1
        if math.gcd(a, cardinality) == 1:
            return a


def affine_permute(rank: np.ndarray, mult: np.ndarray | int, offset: np.ndarray | int,
                   cardinality: np.ndarray | int) -> np.ndarray:
    """Scatter Zipf ranks over the ID space so hot IDs are not contiguous."""
    return (rank * mult + offset) % cardinality


# ---- lengths -------------------------------------------------------------------------------
ACTIVITY_SHARE = 0.5  # share of the log-length variance that is a per-row activity factor


def sample_lengths(rng: np.random.Generator, activity: np.ndarray, median: float, sigma: float,
                   min_length: int, max_length: int) -> np.ndarray:
    """Lognormal lengths around `median`; `activity` (N(0,1) per row) is shared by event types.

    log L = log median + sigma (sqrt(s) activity + sqrt(1-s) own), so the marginal sigma is the
    configured one while heavy users have more of everything. Rounded, clipped to [min, max].
    """
    own = rng.standard_normal(activity.shape[0])
    z = math.sqrt(ACTIVITY_SHARE) * activity + math.sqrt(1.0 - ACTIVITY_SHARE) * own
    lengths = np.rint(median * np.exp(sigma * z))
    np.clip(lengths, min_length, max_length, out=lengths)
    return lengths.astype(np.int64)


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


# ---- timestamps ----------------------------------------------------------------------------
def session_timestamps(rng: np.random.Generator, request_ts: np.ndarray, lengths: np.ndarray,
                       row_of_event: np.ndarray, history_span_s: float, session_events: float,
                       session_s: float) -> np.ndarray:
    """Bursty event times, non-decreasing within each row, every one < its row's request_ts.

    Each row has ceil(len / session_events) sessions whose starts are uniform over
    [request_ts - history_span, request_ts); each event joins a uniformly chosen session of its
    row and lands Exp(session_s) after the session start; times are clipped below request_ts.

    Built in sorted order, with no sort: session starts are sorted uniforms from exponential
    spacings, events are grouped by session (bincount of the session picks; events are
    exchangeable, items being i.i.d. given the row), and within a session the offsets are
    exponential order statistics (Renyi: cumsum of E_j / (m - j)). A session ends where the next
    one starts (its late events are held at that boundary), the last one just before the request.
    """
    n = lengths.shape[0]
    n_events = row_of_event.shape[0]
    if n_events == 0:
        return np.zeros(0, dtype=np.int64)
    n_sess = np.maximum(1, np.ceil(lengths / session_events)).astype(np.int64)
    sess_off = offsets_from_lengths(n_sess)
    total_sessions = int(sess_off[-1])

    # sorted session starts: row block of k + 1 spacings, start_j = (E_1 + .. + E_j) / sum
    spacing = rng.standard_exponential(total_sessions + n)
    cs = np.cumsum(spacing)
    block_end = sess_off[1:] + np.arange(1, n + 1) - 1  # index of each row's last spacing
    block_start_excl = np.concatenate(([0.0], cs[block_end[:-1]]))
    row_total = cs[block_end] - block_start_excl
    keep = np.ones(total_sessions + n, dtype=bool)
    keep[block_end] = False  # the last spacing of a block only closes the interval
    sess_row = np.repeat(np.arange(n), n_sess)
    start_frac = (cs[keep] - block_start_excl[sess_row]) / row_total[sess_row]  # ascending in a row
    sess_start = (request_ts[sess_row] - history_span_s) + start_frac * history_span_s
    # a session ends where the next one of its row starts; the last one before the request
    sess_end = np.empty(total_sessions, dtype=np.int64)
    sess_end[:-1] = np.floor(sess_start[1:]).astype(np.int64)
    sess_end[sess_off[1:] - 1] = request_ts - 1

    # events grouped by session, in session order (np.repeat: sequential, cheaper than gathers)
    pick = (rng.random(n_events) * np.repeat(n_sess, lengths)).astype(np.int64)
    pick += np.repeat(sess_off[:-1], lengths)
    counts = np.bincount(pick, minlength=total_sessions)
    first = offsets_from_lengths(counts)[:-1]
    m_left = np.repeat(counts + first, counts) - np.arange(n_events)  # m, m-1, ..., 1 in a session
    gap = rng.standard_exponential(n_events)
    gap /= m_left
    cg = np.cumsum(gap)
    before = cg - gap  # cumulative gap before each event
    offset = cg - np.repeat(before[first[counts > 0]], counts[counts > 0])  # Exp(1) order statistics
    ts = np.floor(np.repeat(sess_start, counts) + offset * session_s).astype(np.int64)
    # events are sorted inside a session and sessions are sorted, so clipping each event to its
    # session's end keeps the row sorted (ties allowed) and every time < request_ts
    np.minimum(ts, np.repeat(sess_end, counts), out=ts)
    return ts
