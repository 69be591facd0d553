"""Pieces every backend shares: the model base class (embedding/dense parameter split), parameter
counts, and config validation helpers that raise one-line KunbenchErrors."""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn

from kunbench.errors import KunbenchError


class RankingModel(nn.Module):
    """Base of the built-in backends: `forward(batch) -> logits [B] float32`.

    `embedding_parameters()` are the fused embedding table(s) (sparse gradients when the config
    asks for `sparse_embeddings`; give them a sparse-friendly optimizer such as SparseAdam or
    Adagrad); `dense_parameters()` is everything else (Adam/AdamW).
    """

    input_layer: nn.Module

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.input_layer.table.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in emb]

    def kernels(self, device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, str]:
        """The implementation each switchable op runs on `device` (recorded in every result)."""
        return {}


    def output_layer(self) -> nn.Linear:
        """The final `Linear(..., 1)` producing the logit."""
        return self.head.net[-1]

    @torch.no_grad()
    def set_output_bias(self, base_rate: float) -> None:
        """Start the logit at `log(p / (1 - p))` of the training base rate (rather than 0, i.e.
        p = 0.5), so a short run does not spend its first steps learning calibration."""
        p = min(max(float(base_rate), 1e-6), 1 - 1e-6)
        self.output_layer().bias.fill_(math.log(p / (1 - p)))

    def named_dense_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        emb = {id(p) for p in self.embedding_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in emb)


def kernels_of(model: nn.Module, device, dtype: torch.dtype | None = None) -> dict[str, str]:
    """`model.kernels(...)` for any model (DDP / compiled wrappers unwrapped; {} for a plug-in
    model without the method)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    fn = getattr(inner, "kernels", None)
    return dict(fn(device, dtype)) if callable(fn) else {}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """`{"total", "embedding", "dense"}` parameter counts (embedding = the fused table rows x d)."""
    total = sum(p.numel() for p in model.parameters())
    emb_fn = getattr(model, "embedding_parameters", None)
    emb = sum(p.numel() for p in emb_fn()) if emb_fn is not None else 0
    return {"total": total, "embedding": emb, "dense": total - emb}


def embedding_bytes(model: nn.Module) -> int:
    emb_fn = getattr(model, "embedding_parameters", None)
    return sum(p.numel() * p.element_size() for p in emb_fn()) if emb_fn is not None else 0


def need(ok: bool, message: str) -> None:
    if not ok:
        raise KunbenchError(message)


def check_positive(config: Any, *names: str, minimum: int = 1) -> None:
    for name in names:
        v = getattr(config, name)
        need(isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
             f"{name} must be an integer >= {minimum}, got {v!r}")


def check_dims(name: str, dims: Any, allow_empty: bool = True) -> None:
    need(isinstance(dims, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in dims),
         f"{name} must be a comma list of positive integers, got {dims!r}")
    need(allow_empty or len(dims) > 0, f"{name} needs at least one width")


def constant_flops(batch_size: int, value: float) -> torch.Tensor:
    return torch.full((batch_size,), float(value), dtype=torch.float64)
