"""Evaluation on the eval split (docs/measurement.md): NE, AUC, log loss, calibration, oracle NE, gap closed.

Exactness across ranks: each rank accumulates float64 sufficient statistics (`LogLossSums`) for the
model and, from the loader's `p_true` on the same rows, for the oracle; the sums are all-reduced,
so distributed NE equals single-process NE up to float64 summation order (~1e-15 relative).
Expected NE: the same sums with the generator's `p_true` as soft labels (the cross-entropy of the
model against the true probability). Its mean is the NE the model would score on unlimited fresh
labels for these rows, without the label-sampling noise that dominates NE at a 3% CTR (a
bootstrap std of about +-0.008 NE on 20,000 eval rows); `expected_gap_closed` is its gap closed, against the
oracle's expected NE (its mean binary entropy over the entropy of the mean).
AUC is not additive, so every rank's predictions and labels are all-gathered (16 bytes per eval
row) and the exact rank-sum AUC is computed on the full set; no histogram approximation.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from kunbench.data.batch import Batch
from kunbench.hardware import sync
from kunbench.metrics import LogLossSums, auc, gap_closed
from kunbench.train.distributed import DistContext


@dataclass
class EvalRows:
    """Per-row eval predictions, gathered over ranks in rank order: what a paired bootstrap between
    two models on the same rows needs."""
    labels: np.ndarray
    probs: np.ndarray
    p_true: np.ndarray | None


@dataclass
class EvalResult:
    examples: int
    ne: float
    auc: float
    logloss: float
    calibration: float
    base_rate: float
    oracle_ne: float | None  # from p_true on exactly these rows; None when the data has no p_true
    oracle_auc: float | None
    oracle_logloss: float | None
    gap_closed: float | None
    expected_ne: float | None  # soft labels p_true: no label-sampling noise
    expected_oracle_ne: float | None
    expected_gap_closed: float | None
    flops_per_example: float | None  # forward FLOPs, mean over eval examples (docs/models.md section 4)
    seconds: float  # forward-pass wall time (the slowest rank)
    examples_per_s: float  # global eval examples / seconds
    model_sums: LogLossSums | None = None
    oracle_sums: LogLossSums | None = None
    rows: EvalRows | None = None  # with evaluate(keep_rows=True)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("model_sums", "oracle_sums", "rows"):
            d.pop(k)
        return {k: _clean(v) for k, v in d.items()}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def autocast_context(device: torch.device, dtype: str):
    if dtype == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The dtype ops compute in under `autocast_context(device, dtype)`."""
    return torch.bfloat16 if dtype == "bf16" and device.type == "cuda" else torch.float32


def sums_vector(s: LogLossSums) -> list[float]:
    return [float(s.count), s.positives, s.logloss_sum, s.prediction_sum]


def sums_from_vector(v: np.ndarray) -> LogLossSums:
    return LogLossSums(int(round(v[0])), float(v[1]), float(v[2]), float(v[3]))


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[Batch], ctx: DistContext | None = None, *,
             dtype: str = "fp32", flops_fn: Callable[[Batch], torch.Tensor] | None = None,
             max_batches: int | None = None, progress: Callable[[int], None] | None = None,
             keep_rows: bool = False) -> EvalResult:
    """Run the model over `batches` (this rank's slice) and reduce the metrics over all ranks;
    `keep_rows` also returns every row's label, probability and p_true (`EvalResult.rows`)."""
    ctx = ctx or DistContext()
    inner = getattr(model, "module", model)
    was_training = inner.training
    inner.eval()
    device = ctx.device
    sums, oracle = LogLossSums(), LogLossSums()
    soft, soft_oracle = LogLossSums(), LogLossSums()  # labels = p_true
    has_oracle = True
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    probs_kept: list[np.ndarray] = []
    oracle_scores: list[np.ndarray] = []
    flops_sum, flops_n = 0.0, 0
    seconds = 0.0
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if flops_fn is not None:
                f = flops_fn(batch)
                flops_sum += float(torch.as_tensor(f, dtype=torch.float64).sum())
                flops_n += batch.batch_size
            sync(device)
            t0 = time.perf_counter()
            dev_batch = batch.to(device, non_blocking=True)
            with autocast_context(device, dtype):
                logits = inner(dev_batch)
            probs = torch.sigmoid(logits.detach().double()).cpu().numpy()
            seconds += time.perf_counter() - t0
            y = batch.labels.detach().cpu().numpy().astype(np.float64)
            sums.add(y, probs)
            scores.append(logits.detach().double().cpu().numpy())
            labels.append(y)
            if keep_rows:
                probs_kept.append(probs)
            if batch.p_true is None:
                has_oracle = False
            elif has_oracle:
                pt = batch.p_true.detach().cpu().numpy().astype(np.float64)
                oracle.add(y, pt)
                soft.add(pt, probs)
                soft_oracle.add(pt, pt)
                oracle_scores.append(pt)
            if progress is not None:
                progress(batch.batch_size)
    finally:
        inner.train(was_training)

    # ---- reduce over ranks ---------------------------------------------------------------
    has_oracle = ctx.all_reduce_min(1.0 if has_oracle and oracle.count == sums.count else 0.0) > 0
    vec = ctx.all_reduce_sum(sums_vector(sums) + sums_vector(oracle) + sums_vector(soft) + sums_vector(soft_oracle)
                             + [flops_sum, float(flops_n)])
    sums, oracle = sums_from_vector(vec[0:4]), sums_from_vector(vec[4:8])
    soft, soft_oracle = sums_from_vector(vec[8:12]), sums_from_vector(vec[12:16])
    flops_sum, flops_n = float(vec[16]), int(round(vec[17]))
    seconds = ctx.all_reduce_max(seconds)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    all_scores = np.concatenate(ctx.all_gather_arrays(cat(scores)))
    all_labels = np.concatenate(ctx.all_gather_arrays(cat(labels)))
    model_auc = auc(all_labels, all_scores) if all_labels.size else float("nan")
    o_ne = o_auc = o_ll = gap = e_ne = e_o_ne = e_gap = None
    all_oracle = np.concatenate(ctx.all_gather_arrays(cat(oracle_scores))) if has_oracle else None
    if has_oracle and oracle.count:
        o_ne, o_ll = oracle.ne, oracle.logloss
        o_auc = auc(all_labels, all_oracle)
        gap = gap_closed(sums.ne, o_ne)
        e_ne, e_o_ne = soft.ne, soft_oracle.ne
        e_gap = gap_closed(e_ne, e_o_ne)
    return EvalResult(
        examples=sums.count, ne=sums.ne, auc=model_auc, logloss=sums.logloss,
        calibration=sums.calibration, base_rate=sums.base_rate,
        oracle_ne=o_ne, oracle_auc=o_auc, oracle_logloss=o_ll, gap_closed=gap,
        expected_ne=e_ne, expected_oracle_ne=e_o_ne, expected_gap_closed=e_gap,
        flops_per_example=(flops_sum / flops_n) if flops_n else None,
        seconds=seconds, examples_per_s=(sums.count / seconds) if seconds > 0 else float("nan"),
        model_sums=sums, oracle_sums=oracle if has_oracle else None,
        rows=EvalRows(all_labels, np.concatenate(ctx.all_gather_arrays(cat(probs_kept))), all_oracle)
        if keep_rows else None,
    )
