"""ROTE, rotary temporal embedding (models.md 3.1).

RoPE whose angles carry time beside position: of the `d_h / 2` rotary frequency bands, the first
`floor(d_h / 4)` rotate by position `i * f_k` (frequencies `rope_base^(-k/n)` as in RoPE) and the
rest by the log-scaled age `phi = log(1 + (request_ts - ts) / t_scale)` times
`rote_time_base^(-k/n)` (Decision: a smaller base than RoPE's, since `phi` spans about 0..10).
A rotation keeps vector norms, and the score `q_i . k_j` of rotated vectors depends only on
`i - j` and `phi_i - phi_j`. Applied to Q and K of sequence self-attention only, through
`modules.apply_rope` (same half-split pairing).
"""

from __future__ import annotations

import torch

from kunbench.backends.modules import apply_rope, rope_tables

__all__ = ["age_phi", "apply_rope", "full_tables", "packed_rotary_tables", "rotate", "rote_tables",
           "rotary_tables"]


def age_phi(ts: torch.Tensor, request_ts: torch.Tensor, t_scale: float) -> torch.Tensor:
    """`phi [B, T] = log(1 + max(request_ts - ts, 0) / t_scale)` (float32) for `ts [B, T]`,
    `request_ts [B]`; the difference is taken in int64, so absolute epoch times lose nothing."""
    dt = (request_ts[:, None] - ts).clamp(min=0)
    return torch.log1p(dt.to(torch.float64) / float(t_scale)).to(torch.float32)


def _bands(n: int, base: float, device) -> torch.Tensor:
    return base ** (-torch.arange(n, device=device, dtype=torch.float32) / max(n, 1))


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
    """`[..., L, dh/2]` tables -> contiguous `[..., L, H, dh]` ones for `rotate` (what
    `modules.apply_rope` builds on every call; a stream builds them once and shares them between
    Q and K and across its layers)."""
    dh = 2 * cos.shape[-1]
    cos_f = torch.cat([cos, cos], dim=-1).unsqueeze(-2).expand(*cos.shape[:-1], heads, dh).contiguous()
    sin_f = torch.cat([-sin, sin], dim=-1).unsqueeze(-2).expand(*sin.shape[:-1], heads, dh).contiguous()
    return cos_f, sin_f


def rotate(x: torch.Tensor, cos_f: torch.Tensor, sin_f: torch.Tensor) -> torch.Tensor:
    """`apply_rope` with prebuilt `full_tables`: `x [B, L, H, dh]`."""
    return x * cos_f + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin_f
