"""Wukong (docs/models.md section 1): stacked FMB + LCB layers over a token set, MLP head.

Tokens `X_0 [B, n, d]`: the shared input layer's context tokens (categorical fields, multi-hot
fields, dense groups) plus, per event type, the mean of the last `history_k` sequence tokens
(item + category embedding; zero for an empty history).
Layer: `X_{i+1} = LN_d( concat(FMB(X_i), LCB(X_i)) + R(X_i) )`,
`FMB(X) = reshape(MLP(LN(flatten(X (X^T Y)))), [n_F, d])` with a static learned `Y [n, k]`,
`LCB(X) = W_L X`, `R` identity when `n = n_F + n_L`, else a learned token-axis linear map.
Head: flatten -> MLP -> logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kunbench.backends.common import (RankingModel, check_dims, check_positive, constant_flops, need)
from kunbench.backends.input_layer import InputLayer, context_token_count, input_layer_flops
from kunbench.backends.modules import MLP, TokenLinear, optimized_fm
from kunbench.backends.registry import BackendSpec
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema


@dataclass(frozen=True)
class WukongConfig:
    d: int = 32  # embedding and token width
    l: int = 2  # noqa: E741  number of Wukong layers
    n_F: int = 8  # FMB output tokens
    n_L: int = 8  # LCB output tokens
    k: int = 16  # optimized-FM rank (columns of Y)
    fm_y: str = "static"  # Y [n, k]: static (learned, docs/models.md's decision) | attentive (Y = X W_Y, W_Y [d, k])
    fmb_mlp: tuple[int, ...] = (256,)  # hidden widths of the FMB MLP
    head_mlp: tuple[int, ...] = (256, 64)  # hidden widths of the head MLP
    history_k: int = 64  # K: mean of the last K item tokens per event type
    n_dense_tokens: int = 2
    max_rows_per_field: int = 32_768
    sparse_embeddings: bool = True
    act: str = "relu"

    def validate(self) -> "WukongConfig":
        check_positive(self, "d", "l", "n_F", "n_L", "k", "history_k", "max_rows_per_field")
        check_positive(self, "n_dense_tokens", minimum=0)
        check_dims("fmb_mlp", self.fmb_mlp)
        check_dims("head_mlp", self.head_mlp)
        need(self.max_rows_per_field <= 2**31 - 1,
             f"max_rows_per_field must be <= 2147483647, got {self.max_rows_per_field}")
        need(self.act in ("relu", "gelu", "silu"), f"act must be relu, gelu or silu, got {self.act!r}")
        need(self.fm_y in ("static", "attentive"), f"fm_y must be static or attentive, got {self.fm_y!r}")
        return self


PRESETS = {
    "tiny": WukongConfig(d=16, l=1, n_F=4, n_L=4, k=8, fmb_mlp=(64,), head_mlp=(64,), history_k=16,
                         n_dense_tokens=1, max_rows_per_field=4096),
    "small": WukongConfig(),
    "medium": WukongConfig(d=64, l=3, n_F=16, n_L=16, k=24, fmb_mlp=(512,), head_mlp=(512, 128),
                           history_k=128, max_rows_per_field=1 << 18),
    "large": WukongConfig(d=128, l=4, n_F=16, n_L=16, k=24, fmb_mlp=(1024, 1024), head_mlp=(1024, 256),
                          history_k=256, n_dense_tokens=4, max_rows_per_field=1 << 20),
}


class WukongLayer(nn.Module):
    def __init__(self, n_in: int, d: int, n_F: int, n_L: int, k: int, mlp_hidden: tuple[int, ...], act: str,
                 fm_y: str = "static"):
        super().__init__()
        self.n_in, self.d, self.n_F, self.n_L, self.k = n_in, d, n_F, n_L, k
        if fm_y == "static":
            self.y = nn.Parameter(torch.randn(n_in, k) / n_in ** 0.5)
            self.y_proj = None
        else:  # attentive: Y depends on the example's own tokens
            self.y = None
            self.y_proj = nn.Linear(d, k, bias=False)
        self.fm_norm = nn.LayerNorm(n_in * k)
        self.fm_mlp = MLP([n_in * k, *mlp_hidden, n_F * d], act=act)
        self.lcb = TokenLinear(n_in, n_L)
        self.residual = TokenLinear(n_in, n_F + n_L) if n_in != n_F + n_L else None
        self.norm = nn.LayerNorm(d)

    def fmb(self, x: torch.Tensor) -> torch.Tensor:
        y = self.y if self.y_proj is None else self.y_proj(x) * self.n_in ** -0.5
        z = optimized_fm(x, y).flatten(1)  # [B, n k]
        return self.fm_mlp(self.fm_norm(z)).view(x.shape[0], self.n_F, self.d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.fmb(x), self.lcb(x)], dim=1)
        res = x if self.residual is None else self.residual(x)
        return self.norm(out + res)

    @staticmethod
    def flops(n_in: int, d: int, n_F: int, n_L: int, k: int, mlp_hidden, fm_y: str = "static") -> int:
        f = 2 * 2 * n_in * d * k  # X^T Y, then X (X^T Y)
        if fm_y == "attentive":
            f += 2 * n_in * d * k  # Y = X W_Y
        f += MLP.flops([n_in * k, *mlp_hidden, n_F * d])
        f += TokenLinear.flops(n_in, n_L, d)
        if n_in != n_F + n_L:
            f += TokenLinear.flops(n_in, n_F + n_L, d)
        return f


def n_input_tokens(schema: DatasetSchema, config: WukongConfig) -> int:
    return context_token_count(schema, config.n_dense_tokens) + len(schema.event_types)


class WukongModel(RankingModel):
    def __init__(self, config: WukongConfig, schema: DatasetSchema):
        super().__init__()
        self.config = config
        self.input_layer = InputLayer(schema, config.d, config.max_rows_per_field, config.n_dense_tokens,
                                      sparse=config.sparse_embeddings, seq_max_len=config.history_k,
                                      merge="none")
        n = n_input_tokens(schema, config)
        self.n_tokens = n
        layers = []
        for _ in range(config.l):
            layers.append(WukongLayer(n, config.d, config.n_F, config.n_L, config.k, config.fmb_mlp, config.act,
                                      config.fm_y))
            n = config.n_F + config.n_L
        self.layers = nn.ModuleList(layers)
        self.head = MLP([n * config.d, *config.head_mlp, 1], act=config.act)

    def tokens(self, batch: Batch) -> torch.Tensor:
        inp = self.input_layer(batch)
        toks = [inp.context]
        for seq in inp.sequences:
            m = seq.mask[..., None]
            summed = torch.where(m, seq.tokens, torch.zeros_like(seq.tokens)).sum(1)
            toks.append((summed / seq.lengths.clamp(min=1)[:, None].to(summed.dtype))[:, None])
        return torch.cat(toks, dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.tokens(batch)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.flatten(1)).squeeze(-1).float()


def build(config: WukongConfig, schema: DatasetSchema) -> WukongModel:
    return WukongModel(config.validate(), schema)


def forward_flops(config: WukongConfig, schema: DatasetSchema) -> int:
    """Forward matmul FLOPs per example (2 per multiply-add). Wukong's cost does not depend on the
    sequence lengths: history pooling is a masked mean (not a matmul, not counted)."""
    n = n_input_tokens(schema, config)
    f = input_layer_flops(schema, config.d, config.n_dense_tokens)
    for _ in range(config.l):
        f += WukongLayer.flops(n, config.d, config.n_F, config.n_L, config.k, config.fmb_mlp, config.fm_y)
        n = config.n_F + config.n_L
    f += MLP.flops([n * config.d, *config.head_mlp, 1])
    return f


def flops_per_example(config: WukongConfig, schema: DatasetSchema, batch: Batch) -> torch.Tensor:
    return constant_flops(batch.batch_size, forward_flops(config, schema))


SPEC = BackendSpec(
    name="wukong",
    description="Wukong: stacked optimized-FM (FMB) + linear compress (LCB) layers over pooled tokens",
    config_cls=WukongConfig,
    presets=PRESETS,
    default_preset="small",
    build=build,
    flops_per_example=flops_per_example,
    max_lengths_of=lambda config, schema: config.history_k or None,
    width_keys=("d", "fmb_mlp", "head_mlp", "k", "n_F", "n_L"),
)
