"""torch.compile for training and throughput steps, with compile time kept apart from throughput.

`compile_model` wraps the model in `torch.compile` and rounds every batch's per-stream maximum
length up to a power of two (so a run sees a handful of padded widths, not one per batch), and
drops the batch's `length_slices`, so a packed stream's padded products run as one group; jagged
value counts vary with every batch and become dynamic after the first recompilation. `CompileClock` tells which
steps compiled something (dynamo's graph counter moved during the step): their time is compile
time, reported on its own and left out of examples/s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from kunbench.data.batch import Batch
from kunbench.ops.jagged import bucket_length
from kunbench.errors import KunbenchError

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


class CompiledModel(nn.Module):
    """`torch.compile(model)` fed batches whose `max_lengths` are rounded up to powers of two, so
    the padded sequence widths (and the guards on them) take a handful of values per run."""

    def __init__(self, model: nn.Module, backend: str = "inductor", fullgraph: bool = False):
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)

    def forward(self, batch: Batch) -> torch.Tensor:
        inner = getattr(self.model, "module", self.model)  # DDP does not forward attribute lookups
        layer = getattr(inner, "input_layer", None)
        bounds = {}
        for et in batch.sequences:
            longest = batch.max_length(et)
            bound = bucket_length(longest)
            cap = layer.max_len_for(et) if hasattr(layer, "max_len_for") else None
            if cap is not None and longest <= cap:
                bound = min(bound, cap)  # never past the stream's cap: that would read as a cut to make
            bounds[et] = bound
        # row groups (packed.RowGroups) would add shapes that change with every batch: one group here
        return self.compiled(dataclasses.replace(batch, max_lengths=bounds, length_slices={}))


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    if backend not in COMPILE_BACKENDS:
        raise KunbenchError(f"compile backend must be {' | '.join(COMPILE_BACKENDS)}, got {backend!r}")
    return CompiledModel(model, backend)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class CompileClock:
    """Per step: `start()` before it, `stop(seconds)` after it -> True when the step compiled."""

    seconds: float = 0.0
    steps: int = 0
    _before: int = 0

    def start(self) -> None:
        self._before = graphs_compiled()

    def stop(self, step_seconds: float) -> bool:
        if graphs_compiled() == self._before:
            return False
        self.seconds += step_seconds
        self.steps += 1
        return True
