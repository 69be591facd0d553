"""One training step, shared by the training loop and the throughput probes, so the step a suite
times is the step `kunbench train` takes: forward (bf16 autocast on CUDA when asked), binary
cross-entropy on the logits in fp32, backward (DDP all-reduces the gradients), dense gradient
clipping, and both optimizers (optim.py).

The step is split in two because the loop agrees across ranks on the loss before it steps (every
rank must take the same decision on a non-finite loss): `loss(batch)`, then `update(loss, step)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kunbench.data.batch import Batch
from kunbench.train.config import TrainConfig
from kunbench.train.distributed import DistContext
from kunbench.train.evaluate import autocast_context
from kunbench.train.optim import Optimizers, ParamGroups, has_sparse_embeddings, split_parameters


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
               broadcast_buffers=False, find_unused_parameters=True)


@dataclass
class TrainStep:
    model: nn.Module  # the bare model (its parameters are what the optimizers own)
    net: nn.Module  # what a step calls: the model, DDP-wrapped and compiled as configured
    groups: ParamGroups
    optimizers: Optimizers
    cfg: TrainConfig
    device: torch.device

    def loss(self, batch: Batch) -> torch.Tensor:
        """Forward and loss of a batch already on the device."""
        with autocast_context(self.device, self.cfg.dtype):
            logits = self.net(batch)
        return F.binary_cross_entropy_with_logits(logits.float(), batch.labels.float())

    def update(self, loss: torch.Tensor, step: int, total_steps: int | None = None,
               check_norm: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """Backward, clip and step; returns the dense gradient norm before clipping (a device
        tensor, so a caller that does not check it never waits for it), None without clipping.
        `check_norm(norm)` runs before the optimizers step, so it can stop a step whose gradients
        are not finite before they reach the weights."""
        self.optimizers.set_step(step, total_steps)
        loss.backward()
        norm = None
        if self.cfg.clip_grad_norm is not None and self.groups.dense:
            norm = self.optimizers.clip_dense_grad_norm_(self.cfg.clip_grad_norm)
            if check_norm is not None:
                check_norm(norm)
        self.optimizers.step()
        self.optimizers.zero_grad()
        return norm


def make_train_step(model: nn.Module, cfg: TrainConfig, ctx: DistContext, *, compile: bool | None = None) -> TrainStep:
    """The optimizers for `model` (already on ctx.device) and the module a step calls; `compile`
    overrides `cfg.compile`."""
    groups = split_parameters(model)
    optimizers = Optimizers(groups, cfg, sparse_grads=has_sparse_embeddings(model))
    net = wrap_ddp(model, ctx)
    if cfg.compile if compile is None else compile:
        from kunbench.train.compiled import compile_model

        net = compile_model(net)
    return TrainStep(model, net, groups, optimizers, cfg, ctx.device)
