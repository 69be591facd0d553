"""Statistical properties of generated data: Zipf law, lengths, bursty timestamps, base CTR, and
the signal terms' effect on the oracle NE."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from kunbench.data.manifest import load_manifest
from kunbench.generators.config import PRESETS, build_config
from kunbench.generators.ctr import run
from kunbench.generators.sampling import (
    affine_permute,
    offsets_from_lengths,
    sample_lengths,
    session_timestamps,
    zipf_ranks,
)
from kunbench.generators.signal import TERMS, calibrate
from kunbench.generators.world import build_world
from kunbench.generators.writer import iter_chunks
from kunbench.metrics import LogLossSums, binary_entropy


def _fitted_exponent(counts: np.ndarray, lo: int = 5, hi: int = 200) -> float:
    """Slope of log frequency vs log rank over head ranks lo..hi (1-based)."""
    counts = np.sort(counts)[::-1]
    k = np.arange(lo, hi + 1)
    return -float(np.polyfit(np.log(k), np.log(counts[k - 1]), 1)[0])


@pytest.mark.parametrize("exponent", [0.8, 1.0, 1.05, 1.5])
def test_zipf_sampler_recovers_exponent(exponent):
    rng = np.random.default_rng(1)
    ranks = zipf_ranks(rng.random(200_000), 100_000, exponent)
    assert ranks.min() >= 0 and ranks.max() < 100_000
    assert _fitted_exponent(np.bincount(ranks)) == pytest.approx(exponent, abs=0.1)
    # the permutation scatters the hot IDs: the top 10 values are not a contiguous block
    ids = affine_permute(ranks, 40_503, 977, 100_000)
    top = np.argsort(np.bincount(ids, minlength=100_000))[::-1][:10]
    assert np.ptp(top) > 1000


def test_hot_field_in_a_written_dataset_has_the_configured_exponent(tmp_path):
    cfg = build_config("tiny", rows=40_000, sets={
        "num_categorical": 1, "num_dense": 0, "num_multihot": 0, "zipf_exponent": 1.2,
        "cardinality_max": 1_000_000, "rows_per_shard": 20_000, "row_group_rows": 5000,
        "event_types": "click", "events.click.median_length": 1, "events.click.max_length": 2,
        "events.click.min_length": 0, "eval_fraction": 0.0})
    run(cfg, tmp_path / "d", progress=False)
    m = load_manifest(tmp_path / "d")
    (col,) = [c for c in m.columns if c.name == "ctx_cat_000"]
    assert col.cardinality == 1_000_000 and col.extra["zipf_exponent"] == 1.2
    values = np.concatenate([pq.read_table(p, columns=["ctx_cat_000"]).column(0).to_numpy()
                             for p in m.files("train")])
    _, counts = np.unique(values, return_counts=True)
    assert _fitted_exponent(counts) == pytest.approx(1.2, abs=0.1)


@pytest.mark.parametrize("preset", ["tiny", "small", "standard", "paper"])
def test_length_sampler_follows_the_preset(preset):
    cfg = PRESETS[preset]
    rng = np.random.default_rng(2)
    activity = rng.standard_normal(100_000)
    p99s, per_type = [], {}
    for name, ev in cfg.events.items():
        lengths = sample_lengths(rng, activity, ev.median_length, ev.length_sigma, ev.min_length,
                                 ev.max_length)
        assert lengths.min() >= ev.min_length and lengths.max() <= ev.max_length
        assert np.median(lengths) == pytest.approx(ev.median_length, rel=0.05)
        p99s.append(np.percentile(lengths, 99))
        per_type[name] = lengths
    if preset == "standard":
        assert all(100 <= np.median(v) < 1000 for v in per_type.values())
        assert max(p99s) > 1000
        med = {k: np.median(v) for k, v in per_type.items()}
        assert med["impression"] > med["click"] > med["conversion"]
    # heavy users have more of everything: lengths of different types correlate
    a, b = list(per_type.values())[:2]
    assert np.corrcoef(np.log1p(a), np.log1p(b))[0, 1] > 0.2


def test_timestamps_sorted_before_request_and_bursty():
    rng = np.random.default_rng(3)
    n = 500
    request_ts = 1_800_000_000 + np.sort(rng.integers(0, 86400 * 14, n))
    lengths = rng.integers(0, 400, n)
    lengths[:5] = 0
    lengths[5] = 1
    row = np.repeat(np.arange(n), lengths)
    span = 60 * 86400.0
    ts = session_timestamps(rng, request_ts, lengths, row, span, 8.0, 1200.0)
    assert ts.shape == row.shape
    assert (ts < request_ts[row]).all() and (ts >= request_ts[row] - span - 1).all()
    off = offsets_from_lengths(lengths)
    gaps = np.diff(ts)[(row[1:] == row[:-1])]
    assert (gaps >= 0).all()
    # sessions: most gaps are minutes, a few are days (coefficient of variation well above 1)
    assert np.median(gaps) < 1800 and gaps.std() / gaps.mean() > 2
    # history covers weeks: the oldest event of long rows is weeks before the request
    long_rows = np.flatnonzero(lengths > 300)
    assert np.median(request_ts[long_rows] - ts[off[long_rows]]) > 30 * 86400


def test_base_ctr_matches_the_target(tmp_path):
    cfg = build_config("tiny", rows=30_000, sets={"rows_per_shard": 10_000, "row_group_rows": 1000,
                                                  "base_ctr": 0.05})
    res = run(cfg, tmp_path / "d", progress=False)
    splits = res.manifest["splits"]
    rows = sum(s["rows"] for s in splits.values())
    clicks = sum(s["base_ctr"] * s["rows"] for s in splits.values())
    mean_p = sum(s["mean_p_true"] * s["rows"] for s in splits.values()) / rows
    assert mean_p == pytest.approx(0.05, rel=0.05)
    assert clicks / rows == pytest.approx(0.05, rel=0.10)


def _oracle(cfg, rows: int = 6000) -> tuple[float, float]:
    """(realized oracle NE, expected NE = mean H(p_true) / H(mean p_true)) over `rows` rows."""
    world = build_world(cfg)
    calib = calibrate(world)
    sums = LogLossSums()
    ps = []
    for chunk, click, p in iter_chunks(world, calib, 0, rows):
        sums.add(click, p)
        ps.append(p)
    p = np.concatenate(ps)
    h = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    return sums.ne, float(h.mean() / binary_entropy(float(p.mean())))


SMALL_WORLD = {"num_users": 20_000, "num_categorical": 12, "row_group_rows": 1000}


@pytest.mark.parametrize("term", TERMS)
def test_each_signal_term_alone_lowers_oracle_ne(term):
    sets = {**SMALL_WORLD, **{f"signal.{t}": 0.0 for t in TERMS}, f"signal.{term}": 1.0}
    realized, expected = _oracle(build_config("tiny", sets=sets, rows=6000))
    assert expected < 0.98, (term, expected)  # fatigue, which only lowers p, is the weakest (0.972)
    assert realized < 0.99, (term, realized)


def test_no_signal_gives_ne_one():
    sets = {**SMALL_WORLD, **{f"signal.{t}": 0.0 for t in TERMS}}
    realized, expected = _oracle(build_config("tiny", sets=sets, rows=6000))
    assert expected == pytest.approx(1.0, abs=1e-9)
    assert realized == pytest.approx(1.0, abs=0.01)


def test_long_range_term_reads_old_events_only():
    """Term 7 depends on events older than long_range_days; with a window shorter than that it
    is switched off by calibration (zero variance) rather than producing NaN."""
    cfg = build_config("tiny", rows=1000, sets={**SMALL_WORLD, "history_span_days": 5.0,
                                                "long_range_days": 7.0})
    calib = calibrate(build_world(cfg))
    assert calib.term_std["long_range"] == 0.0 and calib.scale["long_range"] == 0.0
    assert np.isfinite(calib.bias)
