"""Rotary embeddings, the one home of their tables: RoPE (position only, InterFormer's MHA and
`rote = rope`) and ROTE, rotary temporal embedding (docs/models.md 3.1).

ROTE is RoPE whose angles carry time beside position: of the `d_h / 2` rotary frequency bands, the
first `floor(d_h / 4)` rotate by position `i * f_k` (frequencies `rope_base^(-k/n)` as in RoPE) and
the rest by the log-scaled age `phi = log(1 + (request_ts - ts) / t_scale)` times
`rote_time_base^(-k/n)` (Decision: a smaller base than RoPE's, since `phi` spans about 0..10).
A rotation keeps vector norms, and the score `q_i . k_j` of rotated vectors depends only on
`i - j` and `phi_i - phi_j`. Applied to Q and K of sequence self-attention only; every rotation
pairs the halves of a head `(x[:dh/2], x[dh/2:])`.
"""

from __future__ import annotations

import torch

__all__ = ["age_phi", "apply_rope", "full_tables", "packed_rotary_tables", "rope_tables", "rotate",
           "rote_tables", "rotary_tables"]


def _bands(n: int, base: float, device) -> torch.Tensor:
    """The `n` frequencies `base^(-k/n)`, k = 0..n-1 (float32)."""
    return base ** (-torch.arange(n, device=device, dtype=torch.float32) / max(n, 1))


def rope_tables(length: int, dh: int, device, dtype, base: float = 10_000.0,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[L, dh/2]` (or `[B, L, dh/2]` for per-row positions) for rotary embedding."""
    pos = torch.arange(length, device=device, dtype=torch.float32) if positions is None else positions.float()
    ang = pos[..., None] * _bands(dh // 2, base, device)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def age_phi(ts: torch.Tensor, request_ts: torch.Tensor, t_scale: float) -> torch.Tensor:
    """`phi [B, T] = log(1 + max(request_ts - ts, 0) / t_scale)` (float32) for `ts [B, T]`,
    `request_ts [B]`; the difference is taken in int64, so absolute epoch times lose nothing."""
    dt = (request_ts[:, None] - ts).clamp(min=0)
    return torch.log1p(dt.to(torch.float64) / float(t_scale)).to(torch.float32)


def rote_tables(positions: torch.Tensor, phi: torch.Tensor, dh: int, rope_base: float = 10_000.0,
                time_base: float = 10.0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[..., dh/2]` for positions and phi of the same shape `[...]` (e.g. `[B, T]`)."""
    half = dh // 2
    n_pos = half // 2
    n_time = half - n_pos
    ang = torch.cat([positions.float()[..., None] * _bands(n_pos, rope_base, phi.device),
                     phi.float()[..., None] * _bands(n_time, time_base, phi.device)], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotary_tables(mode: str, ts: torch.Tensor, request_ts: torch.Tensor, dh: int, *, t_scale: float,
                  rope_base: float, time_base: float, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Tables for `mode` (`rote`: position + time bands, `rope`: position only, `none`: None) for a
    left-aligned padded sequence with timestamps `ts [B, T]` (positions 0..T-1, oldest first)."""
    if mode == "none":
        return None
    b, t = ts.shape
    if mode == "rope":
        return rope_tables(t, dh, ts.device, dtype, rope_base)
    pos = torch.arange(t, device=ts.device).expand(b, t)
    return rote_tables(pos, age_phi(ts, request_ts, t_scale), dh, rope_base, time_base, dtype)


def packed_rotary_tables(mode: str, pos: torch.Tensor, ts: torch.Tensor, request_ts: torch.Tensor, dh: int, *,
                         t_scale: float, rope_base: float, time_base: float, dtype: torch.dtype
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`rotary_tables` for packed tokens: `pos, ts [N]` (position in the row, timestamp) and the
    request time of each token's row `request_ts [N]` -> cos/sin `[N, dh/2]`."""
    if mode == "none":
        return None
    if mode == "rope":
        return rope_tables(0, dh, pos.device, dtype, rope_base, positions=pos)
    return rote_tables(pos, age_phi(ts[:, None], request_ts, t_scale)[:, 0], dh, rope_base, time_base, dtype)


def full_tables(cos: torch.Tensor, sin: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[..., L, dh/2]` tables -> contiguous `[..., L, H, dh]` ones for `rotate` (what `apply_rope`
    builds on every call; a Kunlun stream builds them once and shares them between Q and K and
    across its layers)."""
    dh = 2 * cos.shape[-1]
    cos_f = torch.cat([cos, cos], dim=-1).unsqueeze(-2).expand(*cos.shape[:-1], heads, dh).contiguous()
    sin_f = torch.cat([-sin, sin], dim=-1).unsqueeze(-2).expand(*sin.shape[:-1], heads, dh).contiguous()
    return cos_f, sin_f


def rotate(x: torch.Tensor, cos_f: torch.Tensor, sin_f: torch.Tensor) -> torch.Tensor:
    """`apply_rope` with prebuilt `full_tables`: `x [B, L, H, dh]`."""
    return x * cos_f + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_f  # roll by dh/2 swaps the halves


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x [B, L, H, dh]` (token-major, the layout the QKV projection produces) by
    half-split pairs `(x[:dh/2], x[dh/2:])`: `(x1 cos - x2 sin, x2 cos + x1 sin)`; `cos, sin` are
    `[L, dh/2]` or `[B, L, dh/2]`. Written as `x * cos' + swap(x) * sin'` with full-width tables
    expanded over heads, so the products run over contiguous memory (much faster on CPU)."""
    return rotate(x, *full_tables(cos, sin, x.shape[-2]))
