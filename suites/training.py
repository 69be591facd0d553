"""Training inside a suite: one `kunbench train` run (kunbench.train.runner, not written to
disk), evaluated once, with every eval row's prediction kept so two models can be compared on the
same rows (the paired bootstrap of kunbench.stats)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from kunbench.suites.context import Built, SuiteContext, param_count
from kunbench.train.evaluate import EvalResult


@dataclass
class TrainedRun:
    backend: str
    preset: str
    config: Any
    seed: int
    train: Any  # TrainStats
    eval: EvalResult  # with rows: labels, probs and p_true per eval row
    params: int
    telemetry: dict[str, Any] | None
    train_config: Any

    @property
    def labels(self) -> np.ndarray:
        return self.eval.rows.labels

    @property
    def probs(self) -> np.ndarray:
        return self.eval.rows.probs

    @property
    def p_true(self) -> np.ndarray | None:
        return self.eval.rows.p_true

    @property
    def flops_per_example(self) -> float | None:
        return self.eval.flops_per_example

    @property
    def eval_seconds(self) -> float:
        return self.eval.seconds

    def metrics(self) -> dict[str, float | None]:
        e = self.eval
        return {"ne": e.ne, "auc": e.auc, "logloss": e.logloss, "calibration": e.calibration,
                "base_rate": e.base_rate, "oracle_ne": e.oracle_ne, "gap_closed": e.gap_closed,
                "expected_ne": e.expected_ne, "expected_gap_closed": e.expected_gap_closed}


def same_eval_rows(a: TrainedRun, b: TrainedRun) -> bool:
    """Whether two runs' predictions are on the same eval rows in the same order (pairable)."""
    if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
        return False
    if (a.p_true is None) != (b.p_true is None):
        return False
    return a.p_true is None or np.array_equal(a.p_true, b.p_true)


def train_and_predict(ctx: SuiteContext, built: Built, seed: int = 0, label: str | None = None,
                      lr_scale: float = 1.0) -> TrainedRun:
    """Train `built` on the suite's dataset with the suite's training config (its dense learning
    rate times `lr_scale`) and evaluate it on the whole eval split, keeping the per-row predictions."""
    from kunbench.train.runner import run_training

    cfg = ctx.train_config(seed=seed)
    if lr_scale != 1.0:
        cfg = dataclasses.replace(cfg, lr=cfg.lr * lr_scale).validate()
    # run_training shuts down a process group it did not create only if told it created it
    run_ctx = dataclasses.replace(ctx.dist, initialized_here=False)
    with ctx.window(label or f"train {built.name}") as win:
        run = run_training(built.name, ctx.dataset(), preset=built.preset, sets=built.sets, train_cfg=cfg,
                           device=str(ctx.device), write=False, ctx=run_ctx, spec=built.spec,
                           keep_eval_rows=True, show_progress=ctx.opts.show_progress and ctx.is_main,
                           console=ctx.console, log=ctx.log)
    return TrainedRun(built.name, built.preset, built.config, seed, run.train, run.eval, param_count(run.model),
                      win.summary, cfg)
