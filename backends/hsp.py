"""HSP, hierarchical seed pooling (docs/models.md 3.3), and the InterFormer PMA summary it replaces.

HSP: `n_seed = seed_factor * n_tok` learned seeds `[n_seed, d_e]` shared by the batch (Decision:
the seeds are the queries directly -- a query projection of free parameters adds nothing) attend
over the stream's jagged sequence (K, V = linear maps of the tokens) -> `[B, n_seed, d_e]`, then
`SumKronLinear` compresses them to `n_tok` summary tokens of the shared width `d`:
`Y_b = sum_{i=1..k} Z_i^T X_b W_i`, `Z_i [n_seed, n_tok]`, `W_i [d_e, d]` -- `k (n_seed n_tok +
d_e d)` parameters instead of the `n_seed d_e n_tok d` of a full map (`sumkron = off`).

Seed attention is a knob (`seed_attention`): `softmax` (PMA-style masked softmax attention; Kunlun's
default, since it starts as a mean over the events where GDPA pooling starts near zero) or `gdpa`
(the GDPA operator's seed-pooling mode with `seed_activation`, scale `1/maxlen`, fused or naive by
the `gdpa` switch). A row with no events summarises to zeros before the norm.

`summary = pma` is InterFormer's PMA (`modules.PMA`, `n_tok` softmax seeds used directly as the
summaries, projected `d_e -> d` when the widths differ). Both end in a LayerNorm over `d`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kunbench.backends.gdpa_ops import gdpa_seed_pool, uses_triton
from kunbench.backends.packed import Packed, padded_mask, to_groups, to_padded
from kunbench.backends.modules import PMA, masked_attention


class SumKronLinear(nn.Module):
    """`[B, n_in, d_in] -> [B, n_out, d_out]`, `Y_b = sum_i Z_i^T X_b W_i`. As a linear map of
    `vec(X_b)` (column-major) its weight is `(sum_i W_i kron Z_i)^T`."""

    def __init__(self, n_in: int, n_out: int, d_in: int, d_out: int, k: int):
        super().__init__()
        self.n_in, self.n_out, self.d_in, self.d_out, self.k = n_in, n_out, d_in, d_out, k
        self.z = nn.Parameter(torch.randn(k, n_in, n_out) / math.sqrt(n_in))
        self.w = nn.Parameter(torch.randn(k, d_in, d_out) / math.sqrt(d_in * k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # token mixing first (n_out < n_in makes it the cheaper order): A_i = Z_i^T X_b
        a = torch.matmul(self.z.transpose(1, 2), x[:, None])  # [B, k, n_out, d_in]
        a = a.transpose(1, 2).reshape(b, self.n_out, self.k * self.d_in)
        return torch.matmul(a, self.w.reshape(self.k * self.d_in, self.d_out))  # sum_i A_i W_i

    def kron_weight(self) -> torch.Tensor:
        """`sum_i W_i kron Z_i`: `[d_in n_in, d_out n_out]`."""
        return sum(torch.kron(self.w[i], self.z[i]) for i in range(self.k))

    @staticmethod
    def flops(n_in: int, n_out: int, d_in: int, d_out: int, k: int) -> int:
        return 2 * k * n_out * n_in * d_in + 2 * n_out * k * d_in * d_out


class FullTokenLinear(nn.Module):
    """`sumkron = off`: one full linear map `vec(X_b) -> vec(Y_b)`, `[n_in d_in, n_out d_out]`."""

    def __init__(self, n_in: int, n_out: int, d_in: int, d_out: int):
        super().__init__()
        self.n_out, self.d_out = n_out, d_out
        self.linear = nn.Linear(n_in * d_in, n_out * d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).view(x.shape[0], self.n_out, self.d_out)

    @staticmethod
    def flops(n_in: int, n_out: int, d_in: int, d_out: int) -> int:
        return 2 * n_in * d_in * n_out * d_out


def nonempty_key_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(key_mask, has_events [B])`: rows without events get slot 0 as a dummy key (so softmax is
    defined; the caller zeroes those rows)."""
    has = mask.any(1)
    km = mask.clone()
    km[:, 0] |= ~has
    return km, has


class HSP(nn.Module):
    def __init__(self, d_e: int, d: int, heads: int, n_tok: int, seed_factor: int = 4, k: int = 4,
                 sumkron: bool = True, seed_attention: str = "gdpa", seed_activation: str = "silu",
                 scale_position: str = "post", gdpa_impl: str = "auto", attention_kernel: str = "sdpa",
                 row_groups: int = 1):
        super().__init__()
        self.d_e, self.h, self.n_tok, self.n_seed = d_e, heads, n_tok, seed_factor * n_tok
        self.row_groups = row_groups
        self.seed_attention, self.seed_activation = seed_attention, seed_activation
        self.scale_position, self.gdpa_impl, self.fused = scale_position, gdpa_impl, attention_kernel == "sdpa"
        self.seeds = nn.Parameter(torch.randn(self.n_seed, d_e) * d_e ** -0.5)
        self.kv = nn.Linear(d_e, 2 * d_e)
        self.compress = (SumKronLinear(self.n_seed, n_tok, d_e, d, k) if sumkron
                         else FullTokenLinear(self.n_seed, n_tok, d_e, d))
        self.norm = nn.LayerNorm(d)

    def pool(self, s: torch.Tensor, mask, scale) -> torch.Tensor:
        """Seed attention: `[B, T, d_e]` with `mask [B, T]` (or packed `[N, d_e]` with its `Packed`)
        -> `[B, n_seed, d_e]`. Packed tokens get their keys and values packed (the projection is
        the work that grows with the events), then attend on a padded view, one per row group
        (`packed.RowGroups`) unless the fused GDPA kernel runs, which skips padding itself."""
        d_e = s.shape[-1]
        h, dh = self.h, d_e // self.h
        if isinstance(mask, Packed):  # one padded view of both: [B, T, 2, H, dh]
            kv = self.kv(s).view(s.shape[0], 2, h, dh)
            fused = self.seed_attention == "gdpa" and uses_triton(self.gdpa_impl, kv)
            # width d_e, as the PFFN asks: both then share one grouping of the stream
            groups = None if fused else mask.groups(self.row_groups, d_e)
            if groups is not None:
                return groups.unrows([self._attend(*x.unbind(2), m, scale)
                                      for x, m in zip(to_groups(kv, groups), groups.masks)])
            k, v = to_padded(kv, mask).unbind(2)
            mask = padded_mask(mask)
        else:
            k, v = self.kv(s).view(s.shape[0], s.shape[1], 2, h, dh).unbind(2)  # [B, T, H, dh]
        return self._attend(k, v, mask, scale)

    def _attend(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale) -> torch.Tensor:
        """The seeds over padded `k, v [b, T, H, dh]` with `mask [b, T]` -> `[b, n_seed, d_e]`."""
        b, _, h, dh = k.shape
        q = self.seeds.view(self.n_seed, h, dh)
        if self.seed_attention == "gdpa":
            o = gdpa_seed_pool(q, k, v, mask, activations=[self.seed_activation] * h, scale=scale,
                               position=self.scale_position, impl=self.gdpa_impl)  # [B, n_seed, H, dh]
            return o.reshape(b, self.n_seed, h * dh)
        km, has = nonempty_key_mask(mask)
        o = masked_attention(q.transpose(0, 1)[None], k.transpose(1, 2), v.transpose(1, 2), km, self.fused)
        o = o * has[:, None, None, None]
        return o.transpose(1, 2).reshape(b, self.n_seed, h * dh)

    def forward(self, s: torch.Tensor, mask, scale) -> torch.Tensor:
        return self.norm(self.compress(self.pool(s, mask, scale)))

    @staticmethod
    def flops(length, d_e: int, d: int, n_tok: int, seed_factor: int, k: int, sumkron: bool):
        n_seed = seed_factor * n_tok
        f = 2 * 2 * length * d_e * d_e + 4 * n_seed * length * d_e
        if sumkron:
            return f + SumKronLinear.flops(n_seed, n_tok, d_e, d, k)
        return f + FullTokenLinear.flops(n_seed, n_tok, d_e, d)


class PMASummary(nn.Module):
    """`summary = pma`: InterFormer's PMA with `n_tok` seeds, projected `d_e -> d` if needed."""

    def __init__(self, d_e: int, d: int, heads: int, n_tok: int, attention_kernel: str = "sdpa",
                 row_groups: int = 1):
        super().__init__()
        self.row_groups = row_groups
        self.pma = PMA(d_e, heads, n_tok, fused=attention_kernel == "sdpa")
        self.proj = nn.Linear(d_e, d, bias=False) if d_e != d else None
        self.norm = nn.LayerNorm(d)

    def forward(self, s: torch.Tensor, mask, scale) -> torch.Tensor:
        if isinstance(mask, Packed):  # PMA on a padded view, one per row group
            groups = mask.groups(self.row_groups, s.shape[-1])
            if groups is not None:
                o = groups.unrows([self._pool(x, m) for x, m in zip(to_groups(s, groups), groups.masks)])
                return self.norm(o if self.proj is None else self.proj(o))
            s, mask = to_padded(s, mask), padded_mask(mask)
        o = self._pool(s, mask)
        return self.norm(o if self.proj is None else self.proj(o))

    def _pool(self, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        km, has = nonempty_key_mask(mask)
        return self.pma(s, km) * has[:, None, None]

    @staticmethod
    def flops(length, d_e: int, d: int, n_tok: int):
        """Per example; the seed query projection is batch-shared (`PMA.shared_flops`)."""
        return PMA.flops(length, d_e, n_tok) + (2 * n_tok * d_e * d if d_e != d else 0)
