"""Quality metrics from summed sufficient statistics (docs/measurement.md), so shards and ranks merge exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-7


@dataclass
class LogLossSums:
    """Sufficient statistics for NE: additive across shards, workers and ranks."""

    count: int = 0
    positives: float = 0.0
    logloss_sum: float = 0.0
    prediction_sum: float = 0.0

    def add(self, labels: np.ndarray, probs: np.ndarray) -> None:
        y = np.asarray(labels, dtype=np.float64)
        p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0 - EPS)
        self.count += int(y.size)
        self.positives += float(y.sum())
        self.logloss_sum += float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).sum())
        self.prediction_sum += float(p.sum())

    def merge(self, other: "LogLossSums") -> "LogLossSums":
        return LogLossSums(
            self.count + other.count,
            self.positives + other.positives,
            self.logloss_sum + other.logloss_sum,
            self.prediction_sum + other.prediction_sum,
        )

    @property
    def base_rate(self) -> float:
        return self.positives / self.count if self.count else float("nan")

    @property
    def logloss(self) -> float:
        return self.logloss_sum / self.count if self.count else float("nan")

    @property
    def ne(self) -> float:
        return normalized_entropy(self.logloss_sum, self.count, self.positives)

    @property
    def calibration(self) -> float:
        return self.prediction_sum / self.positives if self.positives else float("nan")


def binary_entropy(p: float) -> float:
    p = min(max(p, EPS), 1.0 - EPS)
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p))


def normalized_entropy(logloss_sum: float, count: int, positives: float) -> float:
    """Mean log loss over the entropy of predicting the base rate; NaN when undefined."""
    if count == 0:
        return float("nan")
    base = positives / count
    if base <= 0.0 or base >= 1.0:
        return float("nan")
    return (logloss_sum / count) / binary_entropy(base)


def ne(labels: np.ndarray, probs: np.ndarray) -> float:
    sums = LogLossSums()
    sums.add(labels, probs)
    return sums.ne


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula with tie averaging; NaN if one class is absent."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# An oracle whose NE is this close to 1 carries no signal to close a gap on: a constant p_true at
# the base rate gives 1 - 1e-16, and dividing by that "gap" prints 1e14-sized nonsense.
MIN_ORACLE_GAP = 1e-9


def gap_closed(model_ne: float, oracle_ne: float) -> float:
    """Fraction of the learnable signal captured: (1 - NE_model) / (1 - NE_oracle); NaN when the
    oracle has no signal (within float tolerance) or either NE is undefined."""
    denom = 1.0 - oracle_ne
    return (1.0 - model_ne) / denom if denom > MIN_ORACLE_GAP else float("nan")
