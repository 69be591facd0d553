"""The statistics behind every spread kunbench reports: mean and std that skip missing values, the
paired bootstrap over eval rows, and the NE-vs-compute fit (docs/measurement.md)."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

import numpy as np

from kunbench.metrics import EPS, MIN_ORACLE_GAP, binary_entropy


def _finite(xs: Iterable[Any]) -> list[float]:
    return [float(x) for x in xs
            if x is not None and not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)]


def std(xs: Iterable[Any]) -> float | None:
    """Sample standard deviation of the finite values; None with fewer than two."""
    vals = _finite(xs)
    return statistics.stdev(vals) if len(vals) >= 2 else None


def mean(xs: Iterable[Any]) -> float | None:
    vals = _finite(xs)
    return sum(vals) / len(vals) if vals else None


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else None


def row_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-row log loss; `labels` may be soft (p_true), which gives the expected loss of the row."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def bootstrap_ne(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray | None = None,
                 n_boot: int = 200, seed: int = 0, oracle: np.ndarray | None = None) -> dict[str, float | None]:
    """Bootstrap over eval rows, every statistic on the same resampled rows:
    - `ne`/`ne_std`: NE of model a;
    - with `probs_b`: `rel_pct`/`rel_pct_std`, the paired change 100 (NE(a) - NE(b)) / NE(b);
    - with `oracle` (the oracle's probabilities): `gap`/`gap_std`, a's gap closed against it.
    The point values are on all rows. `labels` may be soft (see bootstrap_expected_ne)."""
    y = np.asarray(labels, dtype=np.float64)
    n = y.size
    out: dict[str, float | None] = {"ne": None, "ne_std": None, "rel_pct": None, "rel_pct_std": None,
                                    "gap": None, "gap_std": None}
    if n < 2:
        return out
    la = row_losses(y, probs_a)
    lb = row_losses(y, probs_b) if probs_b is not None else None
    lo = row_losses(y, oracle) if oracle is not None else None

    def stats_of(idx: np.ndarray | slice) -> tuple[float, float | None, float | None] | None:
        base = float(y[idx].mean())
        if not 0 < base < 1:
            return None
        h = binary_entropy(base)
        a = float(la[idx].mean())
        rel = 100.0 * (a - float(lb[idx].mean())) / float(lb[idx].mean()) if lb is not None else None
        gap = None
        if lo is not None and (h - float(lo[idx].mean())) / h > MIN_ORACLE_GAP:
            gap = (h - a) / (h - float(lo[idx].mean()))
        return a / h, rel, gap

    point = stats_of(slice(None))
    if point is not None:
        out["ne"], out["rel_pct"], out["gap"] = point
    rng = np.random.default_rng(seed)
    draws = [stats_of(rng.integers(0, n, n)) for _ in range(n_boot)]
    draws = [d for d in draws if d is not None]
    out["ne_std"] = std(d[0] for d in draws)
    if lb is not None:
        out["rel_pct_std"] = std(d[1] for d in draws)
    if lo is not None:
        out["gap_std"] = std(d[2] for d in draws)
    return out


def bootstrap_expected_ne(p_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray | None = None,
                          n_boot: int = 200, seed: int = 0) -> dict[str, float | None]:
    """bootstrap_ne on *expected* NE: p_true as soft labels (and as the oracle), so no clicks are
    drawn and the spread left is only which eval rows happened to be sampled. At a 3 % CTR the
    sampled-label noise swamps the differences between ablation rows and between scaling sizes;
    the paired expected-NE change between two models on the same rows is far tighter.
    Training-seed variance is not in this spread (use --repeat for that)."""
    return bootstrap_ne(p_true, probs_a, probs_b, n_boot=n_boot, seed=seed, oracle=p_true)


# two-sided 95 % t quantiles for small degrees of freedom; close to the normal beyond the table
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def fit_log_compute(flops: list[float], ne: list[float]) -> dict[str, Any]:
    """Least squares NE(C) = NE_0 - eta ln(C / C_0), C_0 = geometric mean of C.

    Returns eta, its standard error and 95 % t interval (n - 2 degrees of freedom), NE_0, C_0, R^2
    and the FLOP decades spanned."""
    pts = [(float(c), float(v)) for c, v in zip(flops, ne) if c and c > 0 and v is not None and math.isfinite(v)]
    n = len(pts)
    if n < 2:
        return {"n": n, "eta": None, "reason": "fewer than two points"}
    x = np.log(np.array([c for c, _ in pts]))
    y = np.array([v for _, v in pts])
    c0 = float(np.exp(x.mean()))
    xc = x - x.mean()
    sxx = float((xc ** 2).sum())
    if sxx <= 0:
        return {"n": n, "eta": None, "reason": "all points have the same FLOPs"}
    slope = float((xc * (y - y.mean())).sum() / sxx)
    ne0 = float(y.mean())
    resid = y - (ne0 + slope * xc)
    ss_res = float((resid ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    out = {"n": n, "eta": -slope, "ne0": ne0, "c0": c0, "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
           "decades": float((x.max() - x.min()) / math.log(10)), "eta_se": None, "eta_ci": None}
    if n > 2:
        se = math.sqrt(ss_res / (n - 2) / sxx)
        t = t975(n - 2)
        out.update({"eta_se": se, "eta_ci": [-slope - t * se, -slope + t * se]})
    return out
