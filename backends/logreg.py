"""logreg: a logistic regression on the context fields alone (no histories), the floor a sequence
model has to clear on a dataset. Every categorical and multi-hot field gets one weight per ID (an
embedding of width 1, in the shared input layer's tables), every dense field one weight; the logit
is their sum plus a bias. It takes no part in the default suite runs (`--backend logreg` to add
it); on an imported log it answers "do the histories help at all?"."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kunbench.backends.common import RankingModel, check_positive, constant_flops
from kunbench.backends.input_layer import InputLayer, context_token_count
from kunbench.backends.registry import BackendSpec
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema


@dataclass(frozen=True)
class LogRegConfig:
    max_rows_per_field: int = 1 << 20  # IDs beyond this many per field are hashed
    sparse_embeddings: bool = True

    def validate(self) -> "LogRegConfig":
        check_positive(self, "max_rows_per_field")
        return self


class LogReg(RankingModel):
    def __init__(self, config: LogRegConfig, schema: DatasetSchema):
        super().__init__()
        self.input_layer = InputLayer(schema, 1, config.max_rows_per_field, n_dense_tokens=len(schema.dense),
                                      sparse=config.sparse_embeddings, seq_max_len=0, init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(()))
        for p in self.input_layer.parameters():  # a logistic regression starts at zero weights
            nn.init.zeros_(p)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.input_layer(batch).context.sum(dim=(1, 2)) + self.bias


def flops_per_example(config: LogRegConfig, schema: DatasetSchema, batch: Batch) -> torch.Tensor:
    # one multiply-add per dense field, one add per context token
    return constant_flops(batch.batch_size, 2 * len(schema.dense) + context_token_count(schema, len(schema.dense)))


SPEC = BackendSpec(
    name="logreg",
    description="baseline: logistic regression on the context fields (no histories)",
    config_cls=LogRegConfig,
    presets={"small": LogRegConfig(), "tiny": LogRegConfig(max_rows_per_field=1 << 16)},
    default_preset="small",
    build=lambda config, schema: LogReg(config, schema),
    flops_per_example=flops_per_example,
    max_lengths_of=lambda config, schema: 0,  # the loader drops the histories it would not read
    in_default_runs=False,
)
