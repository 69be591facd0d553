"""Mixture of Wukong Experts (docs/models.md 3.7): global interaction over `[X || stream summaries]`.

`M` experts, each a stack of `layers` Wukong layers (`wukong.WukongLayer`: FMB + LCB + residual,
LayerNorm) over the full token set. Decision: a dense ensemble -- every expert sees every example,
and the outputs (`[B, n_F + n_L, d]` each) are summed; no router. More experts scale horizontally,
deeper experts vertically.
"""

from __future__ import annotations

import torch
from torch import nn

from kunbench.backends.wukong import WukongLayer


class MixtureOfWukongExperts(nn.Module):
    def __init__(self, n_in: int, d: int, experts: int, layers: int, n_F: int, n_L: int, k: int,
                 mlp_hidden: tuple[int, ...], act: str = "relu", fm_y: str = "static"):
        super().__init__()
        self.n_out = n_F + n_L
        self.experts = nn.ModuleList(
            nn.Sequential(*[WukongLayer(n_in if i == 0 else self.n_out, d, n_F, n_L, k, mlp_hidden, act, fm_y)
                            for i in range(layers)])
            for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts[0](x)
        for expert in self.experts[1:]:
            out = out + expert(x)
        return out

    @staticmethod
    def flops(n_in: int, d: int, experts: int, layers: int, n_F: int, n_L: int, k: int, mlp_hidden,
              fm_y: str = "static") -> int:
        one = sum(WukongLayer.flops(n_in if i == 0 else n_F + n_L, d, n_F, n_L, k, mlp_hidden, fm_y)
                  for i in range(layers))
        return experts * one
