"""The statistics behind every spread: the eta fit on synthetic data with a known eta, t quantiles
and the paired bootstrap (sampled and expected NE, gap closed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kunbench import stats
from kunbench.metrics import gap_closed, ne


def test_eta_fit_exact():
    c = np.logspace(5, 7, 6)
    ne = 0.9 - 0.015 * np.log(c / 1e6)
    fit = stats.fit_log_compute(list(c), list(ne))
    assert fit["eta"] == pytest.approx(0.015, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["decades"] == pytest.approx(2.0)
    assert fit["ne0"] - fit["eta"] * math.log(1e6 / fit["c0"]) == pytest.approx(0.9)


def test_eta_fit_recovers_known_eta_with_noise():
    """Over many synthetic data sets the 95 % interval covers the true eta about 95 % of the time."""
    rng = np.random.default_rng(0)
    eta_true, covered, trials = 0.02, 0, 200
    c = np.logspace(5, 6.8, 7)
    estimates = []
    for _ in range(trials):
        ne = 0.95 - eta_true * np.log(c / c[0]) + rng.normal(0, 0.003, c.size)
        fit = stats.fit_log_compute(list(c), list(ne))
        lo, hi = fit["eta_ci"]
        covered += lo <= eta_true <= hi
        estimates.append(fit["eta"])
    assert abs(np.mean(estimates) - eta_true) < 0.001
    assert 0.88 <= covered / trials <= 0.99
    assert stats.fit_log_compute([1e5], [0.9])["eta"] is None
    assert stats.fit_log_compute([1e5, 1e5, 1e5], [0.9, 0.8, 0.7])["eta"] is None


def test_t_quantiles():
    assert stats.t975(1) == pytest.approx(12.706)
    assert stats.t975(3) == pytest.approx(3.182)
    assert 1.96 < stats.t975(100) < 2.0


def test_bootstrap_paired():
    rng = np.random.default_rng(1)
    y = (rng.random(4000) < 0.1).astype(float)
    p = np.clip(0.1 + 0.05 * rng.standard_normal(4000), 0.01, 0.99)
    b = stats.bootstrap_ne(y, p, p, n_boot=50)
    assert b["ne_std"] > 0 and b["rel_pct_std"] == pytest.approx(0.0, abs=1e-12)
    b2 = stats.bootstrap_ne(y, p, np.full(4000, 0.1), n_boot=50)
    assert b2["rel_pct_std"] > 0


def test_bootstrap_expected_ne():
    rng = np.random.default_rng(2)
    n = 8000
    p_true = np.clip(np.exp(rng.normal(np.log(0.03), 0.8, n)), 1e-4, 0.9)
    y = (rng.random(n) < p_true).astype(float)
    # the oracle against itself: no change and no spread
    same = stats.bootstrap_expected_ne(p_true, p_true, p_true, n_boot=50)
    assert same["rel_pct"] == pytest.approx(0.0, abs=1e-12)
    assert same["rel_pct_std"] == pytest.approx(0.0, abs=1e-12)
    assert same["ne"] == pytest.approx(ne(p_true, p_true)) and 0 < same["ne"] < 1
    # identical models: zero paired change, whatever the model
    q = np.clip(p_true * np.exp(rng.normal(0.0, 0.5, n)), 1e-4, 0.99)
    ident = stats.bootstrap_expected_ne(p_true, q, q.copy(), n_boot=50)
    assert ident["rel_pct"] == pytest.approx(0.0, abs=1e-12) and ident["rel_pct_std"] == pytest.approx(0.0, abs=1e-12)
    # a strictly better prediction (closer to p_true on every row) has a negative delta, well outside the spread
    better = np.exp(0.5 * np.log(p_true) + 0.5 * np.log(q))
    r = stats.bootstrap_expected_ne(p_true, better, q, n_boot=100)
    assert r["rel_pct"] < 0 and abs(r["rel_pct"]) > 5 * r["rel_pct_std"]
    assert r["ne"] == pytest.approx(ne(p_true, better))
    # the same pair on sampled labels is far noisier: that noise is what expected NE removes
    sampled = stats.bootstrap_ne(y, better, q, n_boot=100)
    assert sampled["rel_pct_std"] > 2 * r["rel_pct_std"]


def test_bootstrap_gap_matches_gap_closed():
    rng = np.random.default_rng(4)
    n = 5000
    p_true = np.clip(np.exp(rng.normal(np.log(0.05), 0.7, n)), 1e-4, 0.9)
    q = np.clip(p_true * np.exp(rng.normal(0.0, 0.4, n)), 1e-4, 0.99)
    r = stats.bootstrap_expected_ne(p_true, q, n_boot=100)
    assert r["gap"] == pytest.approx(gap_closed(ne(p_true, q), ne(p_true, p_true)), rel=1e-9)
    assert 0 < r["gap_std"] < 0.05
    assert stats.bootstrap_expected_ne(p_true, p_true, n_boot=20)["gap"] == pytest.approx(1.0)


def test_mean_and_std_skip_missing_values():
    assert stats.mean([1.0, None, float("nan"), 3.0]) == 2.0
    assert stats.std([1.0, None, 3.0]) == pytest.approx(math.sqrt(2.0))
    assert stats.std([1.0]) is None and stats.mean([]) is None
