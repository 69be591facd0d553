"""One training loop for every backend: a single streaming pass over this rank's train batches.

Per step: the loss of the shared TrainStep (step.py), one small all-reduce that carries [has batch,
loss not finite, loss sum, examples] so every rank takes the same decision, then the step's update
(backward, dense gradient clipping, both optimizers).

Unequal batch counts across ranks: the step agreement above stops every rank as soon as one rank
runs out of batches, so no rank waits in a collective that another never enters (the few batches
left on the other ranks are dropped, at most one per rank per step).

Failure: a non-finite loss or gradient norm, or a loss EMA above `divergence_loss`, raises
`TrainingDiverged` naming the step, on every rank at the same step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from kunbench.data.batch import Batch
from kunbench.errors import KunbenchError
from kunbench.train.compiled import CompileClock
from kunbench.train.config import TrainConfig
from kunbench.train.distributed import DistContext
from kunbench.hardware import sync
from kunbench.train.optim import WeightAverage
from kunbench.train.step import make_train_step


class TrainingDiverged(KunbenchError):
    """The loss or the gradients went non-finite or diverged; the message names the step."""


@dataclass
class TrainStats:
    steps: int
    examples: int  # global, all ranks
    seconds: float  # wall time of the whole loop
    examples_per_s: float  # global examples/s after `timing_warmup_steps` steps
    mean_loss: float  # mean train loss over all examples seen
    final_loss_ema: float
    stopped_early: bool  # a rank ran out of batches before --steps
    compile_s: float = 0.0  # --compile: wall time of the steps that compiled (not in examples_per_s)
    compile_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


ProgressFn = Callable[[int, int, float, float], None]  # step, examples, loss EMA, examples/s


@contextlib.contextmanager
def deterministic_cpu(enabled: bool, device: torch.device):
    """On CPU, turn on torch's deterministic algorithms for the block (restored afterwards): with more
    than one intra-op thread some kernels (e.g. index_add_ / scatter backward) otherwise reduce in
    a thread-dependent order and the same seed drifts in the last bits."""
    if not enabled or device.type != "cpu":
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def train(model: nn.Module, batches: Iterable[Batch], cfg: TrainConfig, ctx: DistContext | None = None,
          *, progress: ProgressFn | None = None, total_steps: int | None = None) -> TrainStats:
    """Train `model` (already on ctx.device) in place on this rank's `batches`. `total_steps` (the
    run's length, default `cfg.steps`) is what a decaying learning-rate schedule decays over."""
    ctx = ctx or DistContext()
    with deterministic_cpu(cfg.deterministic, ctx.device):
        return _train(model, batches, cfg, ctx, progress, total_steps or cfg.steps)


def _train(model: nn.Module, batches: Iterable[Batch], cfg: TrainConfig, ctx: DistContext,
           progress: ProgressFn | None, total_steps: int | None) -> TrainStats:
    device = ctx.device
    ts = make_train_step(model, cfg, ctx)
    average = (WeightAverage(ts.optimizers.dense, cfg.weight_ema)
               if cfg.weight_ema > 0 and ts.optimizers.dense else None)
    clock = CompileClock()
    ts.net.train()

    step = examples = 0
    loss_total = 0.0
    ema = float("nan")
    stopped_early = False
    t_start = time.perf_counter()
    t_timed, ex_timed = None, 0
    it = iter(batches)
    while cfg.steps is None or step < cfg.steps:
        t_step = time.perf_counter()
        clock.start()
        batch = next(it, None)
        loss = None
        n = 0
        loss_val = 0.0
        if batch is not None:
            n = batch.batch_size
            loss = ts.loss(batch.to(device, non_blocking=True))
            loss_val = float(loss.detach())
        finite = math.isfinite(loss_val)
        agreed = ctx.all_reduce_sum([1.0 if batch is not None else 0.0, 0.0 if finite else 1.0,
                                     loss_val * n if finite else 0.0, float(n)])
        if agreed[0] < ctx.world_size:
            stopped_early = cfg.steps is not None
            break
        step += 1
        if agreed[1] > 0:
            raise TrainingDiverged(f"training stopped at step {step}: loss is not finite "
                                   f"({loss_val if not finite else 'on another rank'})")
        step_loss = float(agreed[2] / agreed[3])
        step_examples = int(agreed[3])

        def finite_norm(norm, step=step):
            if not math.isfinite(float(norm)):
                raise TrainingDiverged(f"training stopped at step {step}: gradient norm is not finite")

        ts.update(loss, step, total_steps, check_norm=finite_norm)
        if average is not None:
            average.update()

        examples += step_examples
        loss_total += step_loss * step_examples
        ema = step_loss if math.isnan(ema) else (1 - cfg.loss_ema) * ema + cfg.loss_ema * step_loss
        if step > 10 and ema > cfg.divergence_loss:
            raise TrainingDiverged(f"training diverged at step {step}: train loss EMA {ema:.4f} is above "
                                   f"divergence_loss={cfg.divergence_loss} (try a lower --lr)")
        compiled = cfg.compile and clock.stop(time.perf_counter() - t_step)
        if step == cfg.timing_warmup_steps:
            sync(device)
            t_timed, ex_timed = time.perf_counter(), 0
        elif t_timed is not None:
            if compiled:  # a recompilation: its time is compile time, not throughput
                t_timed += time.perf_counter() - t_step
            else:
                ex_timed += step_examples
        if progress is not None:
            now = time.perf_counter()
            rate = ex_timed / (now - t_timed) if t_timed is not None and now > t_timed and ex_timed else \
                examples / max(now - t_start, 1e-9)
            progress(step, examples, ema, rate)
    sync(device)
    t_end = time.perf_counter()
    if t_timed is not None and ex_timed > 0:
        rate = ex_timed / (t_end - t_timed)
    else:
        rate = examples / (t_end - t_start) if t_end > t_start else float("nan")
    if step == 0:
        raise KunbenchError("no training batches: the train split is empty for this rank")
    if average is not None:
        average.copy_to_params()
    return TrainStats(step, examples, t_end - t_start, rate, loss_total / max(examples, 1), ema,
                      stopped_early, clock.seconds, clock.steps)
