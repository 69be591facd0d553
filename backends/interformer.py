"""InterFormer (docs/models.md section 2): bidirectional sequence / non-sequence interaction.

Inputs: `X [B, n_x, d]` (one token per categorical or multi-hot field, `n_dense_tokens` for the
dense features) and one sequence `S`: all event streams merged by time (event-type embedding
added), the most recent `seq_max_len` events kept. Before layer 1, `X_sum = Gate(LCE(X))` is
prepended to `S` as `n_sum` CLS tokens (so `n_cls = n_sum`). Each layer, from the same `(X, S)`:

- Cross Arch: `X_sum = Gate(LCE(X))`; `S_sum = Gate([CLS tokens of S || PMA(S) || last K events])`.
- Interaction Arch: `X <- TokenMLP(DHEN([X || S_sum]))` back to `n_x` tokens.
- Sequence Arch: `S <- LN(S' + MHA_rope(S'))` with `S' = LN(S + PFFN(X_sum, S))`.

Head: `MLP([flatten(X_sum) || flatten(S_sum)])` with the summaries recomputed after the last layer.

Decisions where docs/models.md is silent: post-norm residuals in the sequence arch; recent-K slots of
rows with fewer than K events are zero tokens; PMA attends over CLS tokens and events (so it is
never empty); merged events get a learned embedding of their distance to the newest kept event
(`position_embedding = "recency"`: RoPE in the MHA is relative and PMA has no positions, so
without it neither can weight recent events above old ones, which the recency-weighted signal
needs); the PFFN scale `s = 1/maxlen` uses the batch's longest true `S` length (CLS tokens
included) by default (`pffn_scale = "t_max"` uses the fixed bound `n_sum + seq_max_len`, which
makes a row's logit independent of the other rows in its batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kunbench.backends import jagged
from kunbench.backends.common import RankingModel, check_dims, check_positive, need
from kunbench.backends.input_layer import InputLayer, context_token_count, input_layer_flops
from kunbench.backends.modules import (MLP, PMA, DHENLayer, Gate, NaivePFFN, RopeMHA, TokenLinear, TokenMLP)
from kunbench.backends.registry import BackendSpec
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema


PFFN_SCALES = ("batch_maxlen", "t_max", "n_kv", "none")


@dataclass(frozen=True)
class InterFormerConfig:
    d: int = 32
    n_layers: int = 2
    n_heads: int = 2
    seq_max_len: int = 256  # T_max of the merged sequence
    n_sum: int = 4  # X_sum tokens = CLS tokens
    pma_seeds: int = 2
    recent_k: int = 2
    dhen_layers: int = 1
    dcn_rank: int = 32
    token_mlp_hidden: int = 0  # hidden tokens of the token-axis MLP; 0 = n_x
    pffn_kv: int = 32  # F: generated K/V rows per head
    pffn_hidden: int = 128  # hidden width of the K/V weight-generation MLP
    pffn_act: str = "gelu"
    pffn_scale: str = "batch_maxlen"  # s: 1/batch maxlen | 1/t_max | 1/pffn_kv (n_kv) | 1 (none)
    pffn_scale_position: str = "post"  # act(QK^T) * s (post) or act(QK^T * s) (pre)
    attention: str = "sdpa"  # sdpa (fused softmax attention) | naive (explicit matmuls)
    head_mlp: tuple[int, ...] = (256, 64)
    n_dense_tokens: int = 1
    event_type_embedding: bool = True
    position_embedding: str = "recency"  # recency: learned embedding of the distance to the newest event | none
    max_rows_per_field: int = 32_768
    sparse_embeddings: bool = True
    act: str = "relu"

    def validate(self) -> "InterFormerConfig":
        check_positive(self, "d", "n_layers", "n_heads", "seq_max_len", "n_sum", "pma_seeds",
                       "dhen_layers", "dcn_rank", "pffn_kv", "pffn_hidden", "max_rows_per_field")
        check_positive(self, "recent_k", "token_mlp_hidden", "n_dense_tokens", minimum=0)
        check_dims("head_mlp", self.head_mlp)
        need(self.d % self.n_heads == 0, f"d ({self.d}) must be divisible by n_heads ({self.n_heads})")
        need((self.d // self.n_heads) % 2 == 0,
             f"head width d/n_heads = {self.d // self.n_heads} must be even for RoPE")
        need(self.pffn_act in ("gelu", "relu", "silu"), f"pffn_act must be gelu, relu or silu, got {self.pffn_act!r}")
        need(self.pffn_scale in PFFN_SCALES,
             f"pffn_scale must be one of {', '.join(PFFN_SCALES)}, got {self.pffn_scale!r}")
        need(self.pffn_scale_position in ("post", "pre"),
             f"pffn_scale_position must be post or pre, got {self.pffn_scale_position!r}")
        need(self.position_embedding in ("recency", "none"),
             f"position_embedding must be recency or none, got {self.position_embedding!r}")
        need(self.attention in ("sdpa", "naive"), f"attention must be sdpa or naive, got {self.attention!r}")
        need(self.act in ("relu", "gelu", "silu"), f"act must be relu, gelu or silu, got {self.act!r}")
        need(self.max_rows_per_field <= 2**31 - 1,
             f"max_rows_per_field must be <= 2147483647, got {self.max_rows_per_field}")
        return self


PRESETS = {
    "tiny": InterFormerConfig(d=16, n_layers=1, n_heads=2, seq_max_len=64, pffn_kv=8, pffn_hidden=32,
                              dcn_rank=8, head_mlp=(64,), max_rows_per_field=4096),
    "small": InterFormerConfig(),
    "medium": InterFormerConfig(d=64, n_layers=3, n_heads=4, seq_max_len=512, pffn_kv=64, pffn_hidden=256,
                                dcn_rank=64, head_mlp=(512, 128), max_rows_per_field=1 << 18),
    "large": InterFormerConfig(d=128, n_layers=4, n_heads=4, seq_max_len=1024, pffn_kv=128, pffn_hidden=512,
                               dhen_layers=2, dcn_rank=128, head_mlp=(1024, 256), n_dense_tokens=2,
                               max_rows_per_field=1 << 20),
}


@dataclass(frozen=True)
class Dims:
    n_x: int
    n_cls: int
    n_ssum: int  # S_sum tokens: CLS + PMA seeds + recent K
    n_inter: int  # DHEN tokens: n_x + n_ssum
    tok_hidden: int


def dims(config: InterFormerConfig, schema: DatasetSchema) -> Dims:
    n_x = context_token_count(schema, config.n_dense_tokens)
    n_ssum = config.n_sum + config.pma_seeds + config.recent_k
    return Dims(n_x, config.n_sum, n_ssum, n_x + n_ssum, config.token_mlp_hidden or n_x)


class CrossArch(nn.Module):
    def __init__(self, config: InterFormerConfig, dm: Dims):
        super().__init__()
        self.n_cls, self.k = dm.n_cls, config.recent_k
        self.lce = TokenLinear(dm.n_x, config.n_sum)
        self.gate_x = Gate(config.d)
        self.pma = PMA(config.d, config.n_heads, config.pma_seeds, fused=config.attention == "sdpa")
        self.gate_s = Gate(config.d)

    def x_summary(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_x(self.lce(x))

    def forward(self, x, s, mask, kept):
        x_sum = self.x_summary(x)
        parts = [s[:, :self.n_cls], self.pma(s, mask)]
        if self.k:
            idx, valid = jagged.recent_index(kept, self.k, start=self.n_cls)
            recent = s.gather(1, idx[..., None].expand(-1, -1, s.shape[-1]))
            parts.append(torch.where(valid[..., None], recent, torch.zeros_like(recent)))
        return x_sum, self.gate_s(torch.cat(parts, dim=1))

    @staticmethod
    def flops(config: InterFormerConfig, dm: Dims, length: int) -> int:
        d = config.d
        return (TokenLinear.flops(dm.n_x, config.n_sum, d) + Gate.flops(config.n_sum, d)
                + PMA.flops(length, d, config.pma_seeds) + Gate.flops(dm.n_ssum, d))


class InteractionArch(nn.Module):
    def __init__(self, config: InterFormerConfig, dm: Dims):
        super().__init__()
        self.dhen = nn.Sequential(*[DHENLayer(dm.n_inter, config.d, config.dcn_rank)
                                    for _ in range(config.dhen_layers)])
        self.tok = TokenMLP(dm.n_inter, dm.tok_hidden, dm.n_x, act=config.act)

    def forward(self, x: torch.Tensor, s_sum: torch.Tensor) -> torch.Tensor:
        return self.tok(self.dhen(torch.cat([x, s_sum], dim=1)))

    @staticmethod
    def flops(config: InterFormerConfig, dm: Dims) -> int:
        return (config.dhen_layers * DHENLayer.flops(dm.n_inter, config.d, config.dcn_rank)
                + TokenMLP.flops(dm.n_inter, dm.tok_hidden, dm.n_x, config.d))


class SequenceArch(nn.Module):
    def __init__(self, config: InterFormerConfig):
        super().__init__()
        d = config.d
        self.pffn = NaivePFFN(config.n_sum * d, d, config.n_heads, config.pffn_kv, config.pffn_hidden,
                              act=config.pffn_act, scale_position=config.pffn_scale_position)
        self.norm1 = nn.LayerNorm(d)
        self.mha = RopeMHA(d, config.n_heads, fused=config.attention == "sdpa")
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x_sum, s, mask, scale: float):
        s = self.norm1(s + self.pffn(x_sum.flatten(1), s, scale))
        return self.norm2(s + self.mha(s, mask))

    @staticmethod
    def flops(config: InterFormerConfig, length: int) -> int:
        d = config.d
        return (NaivePFFN.flops(length, d, config.pffn_kv, config.n_sum * d, config.pffn_hidden)
                + RopeMHA.flops(length, d))


class InterFormerModel(RankingModel):
    def __init__(self, config: InterFormerConfig, schema: DatasetSchema):
        super().__init__()
        self.config = config
        self.dims = dm = dims(config, schema)
        self.input_layer = InputLayer(schema, config.d, config.max_rows_per_field, config.n_dense_tokens,
                                      sparse=config.sparse_embeddings, seq_max_len=config.seq_max_len,
                                      merge="time", event_type_embedding=config.event_type_embedding)
        self.recency = (nn.Parameter(torch.randn(config.seq_max_len, config.d) * config.d ** -0.5)
                        if config.position_embedding == "recency" else None)
        self.init_lce = TokenLinear(dm.n_x, config.n_sum)
        self.init_gate = Gate(config.d)
        self.cross = nn.ModuleList([CrossArch(config, dm) for _ in range(config.n_layers)])
        self.interaction = nn.ModuleList([InteractionArch(config, dm) for _ in range(config.n_layers)])
        self.sequence = nn.ModuleList([SequenceArch(config) for _ in range(config.n_layers)])
        self.final_cross = CrossArch(config, dm)
        self.head = MLP([(config.n_sum + dm.n_ssum) * config.d, *config.head_mlp, 1], act=config.act)

    def kernels(self, device, dtype=None) -> dict[str, str]:
        return {"attention": self.config.attention}

    def forward(self, batch: Batch) -> torch.Tensor:
        cfg, n_cls = self.config, self.dims.n_cls
        inp = self.input_layer(batch)
        x = inp.context
        b = x.shape[0]
        cls = self.init_gate(self.init_lce(x))
        if inp.sequences:
            seq = inp.sequences[0]
            tokens, seq_mask, kept = seq.tokens, seq.mask, seq.lengths
            if self.recency is not None and tokens.shape[1]:
                t = tokens.shape[1]
                back = (kept[:, None] - 1 - torch.arange(t, device=x.device)).clamp(0, cfg.seq_max_len - 1)
                tokens = tokens + self.recency[back] * seq_mask[..., None]
        else:
            tokens = x.new_zeros(b, 0, cfg.d)
            seq_mask = torch.zeros(b, 0, dtype=torch.bool, device=x.device)
            kept = torch.zeros(b, dtype=torch.int64, device=x.device)
        s = torch.cat([cls, tokens.to(cls.dtype)], dim=1)
        mask = torch.cat([torch.ones(b, n_cls, dtype=torch.bool, device=x.device), seq_mask], dim=1)
        # batch_maxlen: the longest merged row stays a device scalar (its length is not known on the host)
        scale = pffn_scale(cfg, kept.max() if b else 0)
        for cross, inter, seq_arch in zip(self.cross, self.interaction, self.sequence):
            x_sum, s_sum = cross(x, s, mask, kept)
            x, s = inter(x, s_sum), seq_arch(x_sum, s, mask, scale)
        x_sum, s_sum = self.final_cross(x, s, mask, kept)
        return self.head(torch.cat([x_sum.flatten(1), s_sum.flatten(1)], dim=1)).squeeze(-1).float()


def pffn_scale(config: InterFormerConfig, batch_max_events: int | torch.Tensor) -> float | torch.Tensor:
    """The PFFN's `s`. The sum in `act(S K^T) V` runs over the F generated rows, not over the
    sequence, so `1/maxlen` shrinks the context-conditioned path by ~1/T at every length."""
    if config.pffn_scale == "batch_maxlen":
        return 1.0 / (config.n_sum + batch_max_events)
    if config.pffn_scale == "t_max":
        return 1.0 / (config.n_sum + config.seq_max_len)
    if config.pffn_scale == "n_kv":
        return 1.0 / config.pffn_kv
    return 1.0


def build(config: InterFormerConfig, schema: DatasetSchema) -> InterFormerModel:
    return InterFormerModel(config.validate(), schema)


def merged_lengths(config: InterFormerConfig, schema: DatasetSchema, batch: Batch) -> torch.Tensor:
    """True kept length of the merged sequence per example: min(sum of stream lengths, T_max)."""
    total = torch.zeros(batch.batch_size, dtype=torch.int64)
    for et in schema.event_types:
        total += batch.sequences[et].lengths.cpu().clamp(max=config.seq_max_len)
    return total.clamp(max=config.seq_max_len)


def flops_per_example(config: InterFormerConfig, schema: DatasetSchema, batch: Batch) -> torch.Tensor:
    """Forward matmul FLOPs per example on the true, unpadded lengths (2 per multiply-add).

    `L = n_sum + min(merged events, seq_max_len)`. Terms linear in L (PMA K/V, PFFN, QKV/out
    projections) and quadratic (self-attention QK^T and PV, `4 L^2 d`) use each example's own L.
    The PMA seed-query projection is computed once per batch; its FLOPs are split over the batch.
    """
    d, dm = config.d, dims(config, schema)
    b = batch.batch_size
    length = (merged_lengths(config, schema, batch) + dm.n_cls).to(torch.float64)
    const = input_layer_flops(schema, d, config.n_dense_tokens)
    const += TokenLinear.flops(dm.n_x, config.n_sum, d) + Gate.flops(config.n_sum, d)
    const += config.n_layers * InteractionArch.flops(config, dm)
    const += MLP.flops([(config.n_sum + dm.n_ssum) * d, *config.head_mlp, 1])
    shared = (config.n_layers + 1) * PMA.shared_flops(d, config.pma_seeds)

    def poly(fn) -> tuple[float, float, float]:
        # every per-layer term is a polynomial of degree <= 2 in L: recover its coefficients
        f0, f1, f2 = fn(0), fn(1), fn(2)
        c2 = (f2 - 2 * f1 + f0) / 2
        return f0, f1 - f0 - c2, c2

    a0, a1, a2 = poly(lambda n: (config.n_layers + 1) * CrossArch.flops(config, dm, n)
                      + config.n_layers * SequenceArch.flops(config, n))
    return const + shared / max(b, 1) + a0 + a1 * length + a2 * length * length


SPEC = BackendSpec(
    name="interformer",
    description="InterFormer: cross/interaction/sequence arches with PMA, DHEN, naive PFFN and RoPE MHA",
    config_cls=InterFormerConfig,
    presets=PRESETS,
    default_preset="small",
    build=build,
    flops_per_example=flops_per_example,
    max_lengths_of=lambda config, schema: config.seq_max_len,
    width_keys=("d", "dcn_rank", "head_mlp", "pffn_hidden", "pffn_kv"),
)
