"""The training loop's knobs, typed and validated like every other kunbench config."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kunbench.errors import KunbenchError

EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sparse_adam", "adamw")
DTYPES = ("fp32", "bf16")
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    # defaults from a sweep on the `small` preset (one pass, CPU): batch 256 beat 512 and 128 for both
    # Wukong and InterFormer; embedding lr 0.1 beat 0.05 / 0.02 / 0.01 / 0.2
    batch_size: int = 256  # per rank
    eval_batch_size: int = 2048  # per rank
    steps: int | None = None  # None = one full pass over the train split
    lr: float = 1e-3  # dense parameters, AdamW
    weight_decay: float = 0.0  # AdamW decoupled decay, dense parameters only
    betas: tuple[float, ...] = (0.9, 0.999)
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.1
    embedding_eps: float = 1e-8
    embedding_initial_accumulator: float = 0.0  # (rowwise_)adagrad: starting value of the squared-gradient sum
    clip_grad_norm: float | None = 1.0  # over dense parameters; None = off
    warmup_steps: int = 0  # linear warm-up of both learning rates
    # dense parameters end the run as their exponential moving average over steps (0 = off): on the
    # small preset the raw weights' calibration swings 0.6-1.4 from step to step at 3% CTR, the average's does not
    weight_ema: float = 0.98
    lr_schedule: str = "constant"  # after warm-up: constant | linear or cosine decay over the run's steps
    lr_final: float = 0.0  # with a decay: the final learning rates as a fraction of lr / embedding_lr
    seed: int = 0
    deterministic: bool = True  # CPU: torch.use_deterministic_algorithms for the run (same seed -> same NE)
    dtype: str = "fp32"  # bf16 = autocast on CUDA
    divergence_loss: float = 2.0  # stop when the EMA of the train loss exceeds this (0.69 = coin flip)
    loss_ema: float = 0.02
    num_workers: int = 0  # loader worker processes per rank
    log_every: int = 10
    timing_warmup_steps: int = 5  # steps excluded from the train examples/s figure
    compile: bool = False  # torch.compile the training step (inductor); compile time is reported apart
    verify_data: bool = True  # check every shard's size, sha256 and rows before training (--no-verify skips)

    def validate(self) -> "TrainConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise KunbenchError(msg)

        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        need(self.embedding_lr > 0 and math.isfinite(self.embedding_lr),
             f"embedding_lr must be > 0, got {self.embedding_lr}")
        need(self.embedding_initial_accumulator >= 0,
             f"embedding_initial_accumulator must be >= 0, got {self.embedding_initial_accumulator}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}")
        need(self.embedding_optimizer in EMBEDDING_OPTIMIZERS,
             f"embedding_optimizer must be one of {', '.join(EMBEDDING_OPTIMIZERS)}, "
             f"got {self.embedding_optimizer!r}")
        need(self.clip_grad_norm is None or self.clip_grad_norm > 0,
             f"clip_grad_norm must be > 0 (or none), got {self.clip_grad_norm}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0.0 <= self.weight_ema < 1.0, f"weight_ema must be in [0, 1), got {self.weight_ema}")
        need(self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        need(0.0 <= self.lr_final <= 1.0, f"lr_final must be in [0, 1], got {self.lr_final}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        need(self.divergence_loss > 0, f"divergence_loss must be > 0, got {self.divergence_loss}")
        need(0 < self.loss_ema <= 1, f"loss_ema must be in (0, 1], got {self.loss_ema}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(self.timing_warmup_steps >= 0, f"timing_warmup_steps must be >= 0, got {self.timing_warmup_steps}")
        return self
