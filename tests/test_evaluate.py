"""Evaluation metrics on known inputs, and the oracle NE of a dataset reproduced from p_true."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dataset_fixture import write_contract_dataset
from kunbench.data.batch import Batch
from kunbench.data.manifest import load_manifest
from kunbench.train.distributed import DistContext
from kunbench.train.evaluate import evaluate
from kunbench.train.runner import open_batches
from toy_backend import ToyConfig, ToyModel


class FixedLogits(nn.Module):
    """Returns the logits stored in the batch: evaluation of known predictions."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch.extras["logit"] + 0 * self.w


def _batch(labels, probs, p_true=None) -> Batch:
    y = torch.tensor(labels, dtype=torch.float32)
    p = torch.tensor(probs, dtype=torch.float64)
    B = len(labels)
    return Batch(context_categorical=torch.zeros(B, 1, dtype=torch.int64), context_dense=torch.zeros(B, 0),
                 multihot={}, sequences={}, request_ts=torch.zeros(B, dtype=torch.int64), labels=y,
                 p_true=None if p_true is None else torch.tensor(p_true, dtype=torch.float64),
                 extras={"logit": torch.log(p / (1 - p)).float()})


def _hand_ne(y, p):
    y, p = np.asarray(y, float), np.asarray(p, float)
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    r = y.mean()
    return ll / -(r * math.log(r) + (1 - r) * math.log(1 - r)), ll


def test_metrics_on_known_inputs():
    y = [1, 0, 0, 1, 0, 0, 0, 0]
    p = [0.7, 0.2, 0.1, 0.4, 0.3, 0.05, 0.6, 0.1]
    pt = [0.8, 0.1, 0.1, 0.6, 0.2, 0.1, 0.3, 0.1]
    batches = [_batch(y[:5], p[:5], pt[:5]), _batch(y[5:], p[5:], pt[5:])]
    r = evaluate(FixedLogits(), batches)
    ne, ll = _hand_ne(y, p)
    one, oll = _hand_ne(y, pt)
    assert r.examples == 8
    assert r.ne == pytest.approx(ne, rel=1e-6) and r.logloss == pytest.approx(ll, rel=1e-6)
    assert r.oracle_ne == pytest.approx(one, rel=1e-12) and r.oracle_logloss == pytest.approx(oll, rel=1e-12)
    assert r.gap_closed == pytest.approx((1 - ne) / (1 - one), rel=1e-5)
    # expected NE: p_true as soft labels, by hand
    q, t = np.asarray(p, float), np.asarray(pt, float)
    h = lambda x: -(x * np.log(x) + (1 - x) * np.log(1 - x))  # noqa: E731
    e_ne = -np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)) / h(t.mean())
    e_one = np.mean(h(t)) / h(t.mean())
    assert r.expected_ne == pytest.approx(e_ne, rel=1e-6)
    assert r.expected_oracle_ne == pytest.approx(e_one, rel=1e-12)
    assert r.expected_gap_closed == pytest.approx((1 - e_ne) / (1 - e_one), rel=1e-5)

    assert r.base_rate == 0.25
    assert r.calibration == pytest.approx(np.mean(p) / 0.25, rel=1e-6)
    # AUC by hand: positives score 0.7 and 0.4; negatives 0.2 0.1 0.3 0.05 0.6 0.1
    # 0.7 beats all 6; 0.4 beats 5 of 6 (loses to 0.6) -> 11/12
    assert r.auc == pytest.approx(11 / 12)
    # oracle: positives 0.8 and 0.6 beat every negative (max 0.3)
    assert r.oracle_auc == 1.0
    assert r.examples_per_s > 0


def test_expected_ne_is_one_for_the_base_rate_and_has_no_label_noise():
    rng = np.random.default_rng(0)
    pt = rng.uniform(0.01, 0.2, 4000)
    base = np.full_like(pt, pt.mean())
    runs = []
    for seed in range(2):  # two label draws from the same p_true
        y = (np.random.default_rng(seed + 1).uniform(size=pt.size) < pt).astype(float)
        runs.append(evaluate(FixedLogits(), [_batch(y.tolist(), base.tolist(), pt.tolist())]))
    assert runs[0].expected_ne == pytest.approx(1.0, abs=1e-6)
    assert runs[0].expected_ne == runs[1].expected_ne  # labels do not enter it
    assert runs[0].ne != runs[1].ne


def test_auc_ties_are_averaged():
    y = [1, 0, 1, 0]
    p = [0.9, 0.9, 0.2, 0.1]
    r = evaluate(FixedLogits(), [_batch(y, p)])
    assert r.auc == pytest.approx(2.5 / 4)
    assert r.oracle_ne is None and r.gap_closed is None  # no p_true -> no oracle


def test_gap_closed_extremes():
    y = [1, 0, 0, 0, 1, 0]
    pt = [0.6, 0.2, 0.3, 0.1, 0.7, 0.2]
    # the model predicting p_true closes the whole gap; predicting the base rate closes none
    assert evaluate(FixedLogits(), [_batch(y, pt, pt)]).gap_closed == pytest.approx(1.0, abs=1e-6)
    base = [np.mean(y)] * 6
    assert evaluate(FixedLogits(), [_batch(y, base, pt)]).gap_closed == pytest.approx(0.0, abs=1e-6)


def test_oracle_ne_on_a_dataset_matches_the_manifest(tmp_path):
    write_contract_dataset(tmp_path, rows_per_file=(300,), eval_rows_per_file=(400, 250), row_group_rows=64)
    manifest = load_manifest(tmp_path)
    torch.manual_seed(0)
    model = ToyModel(ToyConfig(), manifest.schema)
    r = evaluate(model, open_batches(tmp_path, "eval", 128, DistContext(), include_p_true=True),
                 flops_fn=lambda b: torch.ones(b.batch_size, dtype=torch.float64) * 3)
    assert r.examples == 650
    assert r.oracle_ne == pytest.approx(manifest.splits["eval"]["oracle_ne"], abs=1e-9)
    assert r.flops_per_example == 3.0


def test_oracle_ne_on_generated_dataset_matches_the_manifest(tiny_dataset):
    tiny = tiny_dataset
    manifest = load_manifest(tiny)
    model = ToyModel(ToyConfig(), manifest.schema)
    r = evaluate(model, open_batches(tiny, "eval", 256, DistContext(), include_p_true=True))
    assert r.examples == manifest.split_rows("eval")
    assert r.oracle_ne == pytest.approx(manifest.splits["eval"]["oracle_ne"], abs=1e-9)
