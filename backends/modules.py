"""Reusable layers shared by the backends (and the later Kunlun backend).

Each layer that does matmuls has a `flops(...)` static helper giving its forward matmul FLOPs
(2 per multiply-add) so the backends' analytic counts are sums of the same terms the code runs.
Not counted anywhere (docs/models.md section 4 counts matmuls only, as FlopCounterMode does): layer
norms, activations, softmax, masking, scaling, RoPE rotations, residual adds, biases, gating
products, pooling and embedding lookups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kunbench.backends.gdpa_ops import head_product
from kunbench.backends.rote import apply_rope, rope_tables

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Module):
    """Linear layers `dims[0] -> ... -> dims[-1]` with an activation between them (none at the end
    unless `final_act`)."""

    def __init__(self, dims: list[int] | tuple[int, ...], act: str = "relu", final_act: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2 or final_act:
                layers.append(ACTIVATIONS[act]())
        self.net = nn.Sequential(*layers)
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def flops(dims) -> int:
        return 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


class TokenLinear(nn.Module):
    """Linear map over the token axis: `[B, n_in, d] -> [B, n_out, d]`, `W [n_out, n_in]`."""

    def __init__(self, n_in: int, n_out: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(n_out, 1)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # einsum, not a broadcast `matmul(W, x)`: AOT autograd (torch.compile) decomposes the latter's
        # backward into a view that fails on the non-contiguous gradients a torch.cat hands back
        y = torch.einsum("oi,bid->bod", self.weight, x)
        return y if self.bias is None else y + self.bias

    @staticmethod
    def flops(n_in: int, n_out: int, d: int) -> int:
        return 2 * n_in * n_out * d


class TokenMLP(nn.Module):
    """MLP over the token axis: `[B, n_in, d] -> [B, n_out, d]` through `hidden` tokens."""

    def __init__(self, n_in: int, hidden: int, n_out: int, act: str = "relu"):
        super().__init__()
        self.l1 = TokenLinear(n_in, hidden, bias=True)
        self.act = ACTIVATIONS[act]()
        self.l2 = TokenLinear(hidden, n_out, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.act(self.l1(x)))

    @staticmethod
    def flops(n_in: int, hidden: int, n_out: int, d: int) -> int:
        return TokenLinear.flops(n_in, hidden, d) + TokenLinear.flops(hidden, n_out, d)


class Gate(nn.Module):
    """`Gate(Z) = Z * sigmoid(MLP(Z))`, Decision: the MLP is one per-token `Linear(d, d)`."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.sigmoid(self.proj(z))

    @staticmethod
    def flops(n_tokens: int, d: int) -> int:
        return 2 * n_tokens * d * d


def optimized_fm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wukong's optimized FM: `X (X^T Y)` for `X [B, n, d]`, `Y [n, k]` (or per example
    `[B, n, k]`) -> `[B, n, k]`,
    O(n k d) instead of forming the `n x n` interaction matrix `X X^T`."""
    xty = torch.matmul(x.transpose(1, 2), y)  # [B, d, k]
    return torch.matmul(x, xty)  # [B, n, k]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                     fused: bool = False) -> torch.Tensor:
    """Softmax attention, `q [B|1, H, Lq, dh]`, `k, v [B, H, Lk, dh]`, `key_mask [B, Lk]` True on
    real keys (every row must have one). `fused` uses SDPA; otherwise explicit matmuls (the
    reference path FlopCounterMode sees as two bmm)."""
    dh = q.shape[-1]
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    if fused:
        if q.shape[0] != k.shape[0]:
            q = q.expand(k.shape[0], *q.shape[1:])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (dh ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attention_flops(lq: int, lk: int, d: int) -> int:
    """QK^T and PV over all heads: `2 * 2 * Lq * Lk * d`."""
    return 4 * lq * lk * d


class PMA(nn.Module):
    """Pooling by multi-head attention: `n_seeds` learned seed queries (shared by the batch)
    attend over a masked sequence with softmax MHA -> `[B, n_seeds, d]`."""

    def __init__(self, d: int, n_heads: int, n_seeds: int, fused: bool = False):
        super().__init__()
        self.d, self.h, self.n_seeds, self.fused = d, n_heads, n_seeds, fused
        self.seeds = nn.Parameter(torch.randn(n_seeds, d) * d ** -0.5)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = s.shape
        h, dh = self.h, d // self.h
        q = self.q(self.seeds).view(1, self.n_seeds, h, dh).transpose(1, 2)  # computed once per batch
        k, v = self.kv(s).view(b, t, 2, h, dh).transpose(1, 3).unbind(2)  # each [B, H, T, dh]
        o = masked_attention(q, k, v, mask, self.fused)  # [B, H, n_seeds, dh]
        return self.out(o.transpose(1, 2).reshape(b, self.n_seeds, d))

    @staticmethod
    def flops(length: int, d: int, n_seeds: int) -> int:
        """Per example, excluding the batch-shared seed projection (see `shared_flops`)."""
        return 2 * 2 * length * d * d + attention_flops(n_seeds, length, d) + 2 * n_seeds * d * d

    @staticmethod
    def shared_flops(d: int, n_seeds: int) -> int:
        return 2 * n_seeds * d * d


class RopeMHA(nn.Module):
    """Multi-head self-attention with RoPE on Q and K (positions 0..L-1) and a key padding mask."""

    def __init__(self, d: int, n_heads: int, fused: bool = False, rope_base: float = 10_000.0):
        super().__init__()
        self.d, self.h, self.fused, self.rope_base = d, n_heads, fused, rope_base
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = s.shape
        h, dh = self.h, d // self.h
        q, k, v = self.qkv(s).view(b, t, 3, h, dh).unbind(2)  # unbind: one gradient copy, not 3 fills
        cos, sin = rope_tables(t, dh, s.device, s.dtype, self.rope_base)
        q = apply_rope(q, cos, sin).transpose(1, 2)  # [B, H, T, dh]
        k = apply_rope(k, cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        o = masked_attention(q, k, v, mask, self.fused)
        return self.out(o.transpose(1, 2).reshape(b, t, d))

    @staticmethod
    def flops(length: int, d: int) -> int:
        return 2 * 3 * length * d * d + attention_flops(length, length, d) + 2 * length * d * d


class NaivePFFN(nn.Module):
    """InterFormer's personalized FFN, the unfused reading (docs/models.md 2 and 3.2):
    per sample, `K, V [F, H, d_h]` are generated from `flatten(X_sum)` by an MLP, and per head
    `PFFN(S)_h = act(S_h K_h^T) * s @ V_h` (scale after the activation, `scale_position="post"`,
    or `act(S_h K_h^T * s) @ V_h` with `"pre"`), as plain batched matmuls."""

    def __init__(self, n_in: int, d: int, n_heads: int, n_kv: int, hidden: int, act: str = "gelu",
                 scale_position: str = "post"):
        super().__init__()
        self.d, self.h, self.n_kv, self.scale_position = d, n_heads, n_kv, scale_position
        self.weight_gen = MLP([n_in, hidden, 2 * n_kv * d], act="relu")
        self.act_name = act

    def generate(self, x_sum_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, n_in]` -> K, V each `[B, H, F, d_h]`."""
        b = x_sum_flat.shape[0]
        kv = self.weight_gen(x_sum_flat).view(b, 2, self.n_kv, self.h, self.d // self.h)
        return kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2)

    def attend(self, s: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """GDPA's PFFN product (`gdpa_ops.head_product`, one activation for every head)."""
        b, t, d = s.shape
        sh = s.view(b, t, self.h, d // self.h).transpose(1, 2)  # [B, H, T, dh]
        out = head_product(sh, k, v, [self.act_name] * self.h, scale, self.scale_position)
        return out.transpose(1, 2).reshape(b, t, d)

    def forward(self, x_sum_flat: torch.Tensor, s: torch.Tensor, scale: float) -> torch.Tensor:
        k, v = self.generate(x_sum_flat)
        return self.attend(s, k, v, scale)

    @staticmethod
    def flops(length: int, d: int, n_kv: int, n_in: int, hidden: int) -> int:
        return MLP.flops([n_in, hidden, 2 * n_kv * d]) + 2 * 2 * length * n_kv * d


class LowRankDCN(nn.Module):
    """Low-rank DCN-v2 cross on the flattened tokens: `z * (U (V^T z) + b)`, rank r. Decision:
    the cross term only; the DHEN layer's shortcut carries the residual."""

    def __init__(self, n_tokens: int, d: int, rank: int):
        super().__init__()
        self.v = nn.Linear(n_tokens * d, rank, bias=False)
        self.u = nn.Linear(rank, n_tokens * d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1)
        return (flat * self.u(self.v(flat))).view_as(z)

    @staticmethod
    def flops(n_tokens: int, d: int, rank: int) -> int:
        return 2 * 2 * n_tokens * d * rank


class DotInteraction(nn.Module):
    """Dot-product interaction kept in token form: `P = Z Z^T / sqrt(d)` `[B, n, n]`, then each
    token's row of dot products is projected `n -> d` (Decision: DHEN leaves the output mapping
    open; this keeps `[B, n, d]` with `n d` parameters)."""

    def __init__(self, n_tokens: int, d: int):
        super().__init__()
        self.d = d
        self.proj = nn.Linear(n_tokens, d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.matmul(z, z.transpose(1, 2)) * (self.d ** -0.5)
        return self.proj(p)

    @staticmethod
    def flops(n_tokens: int, d: int) -> int:
        return 2 * n_tokens * n_tokens * d * 2


class DHENLayer(nn.Module):
    """`Norm(DotInteraction(Z) + LowRankDCN(Z) + Shortcut(Z))`, shortcut = per-token Linear(d, d)."""

    def __init__(self, n_tokens: int, d: int, rank: int):
        super().__init__()
        self.dot = DotInteraction(n_tokens, d)
        self.dcn = LowRankDCN(n_tokens, d, rank)
        self.shortcut = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dot(z) + self.dcn(z) + self.shortcut(z))

    @staticmethod
    def flops(n_tokens: int, d: int, rank: int) -> int:
        return (DotInteraction.flops(n_tokens, d) + LowRankDCN.flops(n_tokens, d, rank)
                + 2 * n_tokens * d * d)
