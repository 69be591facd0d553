"""The GDPA-enhanced PFFN block (docs/models.md 3.2): `S <- S + RMSNorm(LN(S) + GDPA(LN(S), K, V))`.

Per example and per head, `K, V [F, H, d_h]` are generated from the flattened non-sequence
summary `X_sum` by an MLP (one generator per stream and per layer), exactly as InterFormer's
PFFN (`modules.NaivePFFN`) does; the product runs through `gdpa_ops.gdpa_pffn`, fused
(`kunbench.kernels.gdpa`) or naive (batched matmuls), with per-head activations.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kunbench.backends.gdpa_ops import gdpa_pffn, uses_triton
from kunbench.backends.modules import MLP
from kunbench.backends.packed import Packed, from_groups, from_padded, padded_mask, to_groups, to_padded


class GDPAPFFNBlock(nn.Module):
    def __init__(self, n_in: int, d: int, heads: int, dff: int, hidden: int, activations: Sequence[str],
                 scale_position: str = "post", impl: str = "auto", row_groups: int = 1):
        super().__init__()
        self.d, self.h, self.dff, self.row_groups = d, heads, dff, row_groups
        self.activations = list(activations)
        self.scale_position, self.impl = scale_position, impl
        self.weight_gen = MLP([n_in, hidden, 2 * dff * d], act="relu")
        self.ln = nn.LayerNorm(d)
        self.rms = nn.RMSNorm(d)

    def generate(self, x_sum_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, n_in]` -> K, V each `[B, F, H, d_h]`."""
        b = x_sum_flat.shape[0]
        k, v = self.weight_gen(x_sum_flat).view(b, 2, self.dff, self.h, self.d // self.h).unbind(1)
        return k, v

    def forward(self, s: torch.Tensor, mask, x_sum_flat: torch.Tensor, scale) -> torch.Tensor:
        """`s [B, T, d]` with `mask [B, T]`, or packed `s [N, d]` with a `packed.Packed` as `mask`
        (the product with each row's K/V runs on a padded view of the queries)."""
        k, v = self.generate(x_sum_flat)
        if isinstance(mask, Packed):
            return self._packed(s, mask, k, v, scale)
        b, t, d = s.shape
        z = self.ln(s)
        g = gdpa_pffn(z.view(b, t, self.h, d // self.h), mask, k, v, activations=self.activations, scale=scale,
                      position=self.scale_position, impl=self.impl).reshape(b, t, d)
        return s + self._rms(z + g)

    def _packed(self, s: torch.Tensor, p: Packed, k: torch.Tensor, v: torch.Tensor, scale) -> torch.Tensor:
        """The product runs per row group on the torch path (the fused kernel skips padding itself)."""
        n, d = s.shape
        z = self.ln(s)
        zh = z.view(n, self.h, d // self.h)
        kw = dict(activations=self.activations, scale=scale, position=self.scale_position, impl=self.impl,
                  zero_padding=False)
        groups = None if uses_triton(self.impl, zh) else p.groups(self.row_groups, d)
        if groups is None:
            g = from_padded(gdpa_pffn(to_padded(zh, p), padded_mask(p), k, v, **kw), p)
        else:
            g = from_groups([gdpa_pffn(q, m, kg, vg, **kw) for q, m, kg, vg in
                             zip(to_groups(zh, groups), groups.masks, groups.rows(k), groups.rows(v))], groups)
        return s + self._rms(z + g.reshape(n, d))

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm in its weight's dtype: under bf16 autocast the GDPA output arrives in bf16, and
        `rms_norm` of a bf16 input with a float32 weight falls back from the fused kernel to
        several element-wise ones (LayerNorm, which autocast runs in float32, has no such issue)."""
        w = self.rms.weight
        return self.rms(x if w is None or x.dtype == w.dtype else x.to(w.dtype))

    @staticmethod
    def flops(length, d: int, dff: int, n_in: int, hidden: int):
        """Weight generation + `4 T F d` (= `gdpa_flops` with Lq = T, Lk = F)."""
        return MLP.flops([n_in, hidden, 2 * dff * d]) + 4 * length * dff * d
