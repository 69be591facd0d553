"""GDPA (models.md 3.2) in its three modes over left-aligned padded sequences, two ways.

`GDPA_h(Q, K, V) = act_h(Q K_h^T) * s @ V_h` per head: no softmax, no normaliser; `act_h` per head;
`s` after the activation (`post`) or before it (`pre`).

- `impl="fused"` packs the real rows into the jagged layout and calls `kunbench.kernels.gdpa`, which
  dispatches to the fused Triton kernels for CUDA tensors and to its PyTorch reference elsewhere
  (so on CPU `fused` computes the same thing by the reference path).
- `impl="naive"` runs the same math as plain batched matmuls over the padded tensors with masks
  (the InterFormer PFFN reading); FlopCounterMode sees exactly `gdpa_flops` on equal lengths.

Modes: `pffn` (jagged Q, per-example dense K/V `[B, F, H, d_h]`), `seed_pool` (one Q set shared by
the batch, K = V = the sequence), `self_attention` (Q = K = V rows of one sequence, optional
symmetric window). All take `[B, T, H, d_h]` padded tensors with `mask [B, T]`; outputs at padded
query positions are zero.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kunbench.backends.banded import band_gather, band_mask
from kunbench.kernels import gdpa as kernel_gdpa
from kunbench.kernels.gdpa_reference import activation_fn

IMPLS = ("fused", "naive")


def offsets_of(mask: torch.Tensor) -> torch.Tensor:
    off = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    off[1:] = torch.cumsum(mask.sum(1), 0)
    return off


def scatter_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Jagged `[N, ...]` -> padded `[B, T, ...]` (zeros in padding)."""
    out = values.new_zeros((*mask.shape, *values.shape[1:]))
    out[mask] = values
    return out


def activate(x: torch.Tensor, names: Sequence[str], head_dim: int) -> torch.Tensor:
    """Apply `names[h]` to head `h` of `x` along `head_dim`."""
    if len(set(names)) == 1:
        return activation_fn(names[0])(x)
    return torch.stack([activation_fn(n)(x.select(head_dim, h)) for h, n in enumerate(names)], dim=head_dim)


def _scores_to_weights(a: torch.Tensor, names, scale: float, position: str, head_dim: int) -> torch.Tensor:
    """`act(a * s)` for `pre`; for `post` just `act(a)` (the caller folds `s` into V)."""
    return activate(a * scale if position == "pre" else a, names, head_dim)


def _v_scaled(v: torch.Tensor, scale: float, position: str) -> torch.Tensor:
    # act(a) * s @ V == act(a) @ (s V): scale the smaller tensor
    return v * scale if position == "post" else v


def same_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The fused op wants one dtype: under autocast (bf16 on CUDA) the autocast dtype, else the
    promoted one (a no-op in plain fp32)."""
    dev = tensors[0].device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    else:
        dt = tensors[0].dtype
        for t in tensors[1:]:
            dt = torch.promote_types(dt, t.dtype)
    return [t if t.dtype == dt else t.to(dt) for t in tensors]


def gdpa_pffn(q: torch.Tensor, mask: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, activations: Sequence[str],
              scale: float, position: str = "post", impl: str = "fused") -> torch.Tensor:
    """PFFN mode: `q [B, T, H, d_h]`, `k, v [B, F, H, d_h]` -> `[B, T, H, d_h]`."""
    if impl == "fused":
        q, k, v = same_dtype(q, k, v)
        out = kernel_gdpa(q[mask], k, v, q_offsets=offsets_of(mask), activation=list(activations),
                          scale=scale, scale_position=position)
        return scatter_rows(out, mask)
    qh = q.transpose(1, 2)  # [B, H, T, dh]
    a = torch.matmul(qh, k.permute(0, 2, 3, 1))  # [B, H, T, F]
    w = _scores_to_weights(a, activations, scale, position, head_dim=1)
    out = torch.matmul(w, _v_scaled(v.transpose(1, 2), scale, position))  # [B, H, T, dh]
    return out.transpose(1, 2) * mask[:, :, None, None]


def gdpa_seed_pool(seeds: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                   activations: Sequence[str], scale: float, position: str = "post",
                   impl: str = "fused") -> torch.Tensor:
    """Seed-pooling mode: `seeds [n, H, d_h]` shared by the batch attend over `k, v [B, T, H, d_h]`
    (real rows where `mask`) -> `[B, n, H, d_h]`; a row without events pools to zero."""
    if impl == "fused":
        seeds, k, v = same_dtype(seeds, k, v)
        return kernel_gdpa(seeds, k[mask], v[mask], kv_offsets=offsets_of(mask), activation=list(activations),
                           scale=scale, scale_position=position, broadcast_q=True)
    qh = seeds.transpose(0, 1)[None]  # [1, H, n, dh]
    a = torch.matmul(qh, k.permute(0, 2, 3, 1))  # [B, H, n, T]
    w = _scores_to_weights(a, activations, scale, position, head_dim=1)
    w = w.masked_fill(~mask[:, None, None, :], 0.0)
    out = torch.matmul(w, _v_scaled(v.transpose(1, 2), scale, position))  # [B, H, n, dh]
    return out.transpose(1, 2)


def gdpa_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                        activations: Sequence[str], scale: float, position: str = "post",
                        window: int | None = None, impl: str = "fused") -> torch.Tensor:
    """Self-attention mode over one sequence (`[B, T, H, d_h]` each), keys `|i - j| <= window`."""
    if impl == "fused":
        q, k, v = same_dtype(q, k, v)
        off = offsets_of(mask)
        out = kernel_gdpa(q[mask], k[mask], v[mask], q_offsets=off, kv_offsets=off, activation=list(activations),
                          scale=scale, scale_position=position, window=window)
        return scatter_rows(out, mask)
    t = q.shape[1]
    vs = _v_scaled(v, scale, position)
    if window is not None and 2 * window + 1 < t:
        index, valid = band_gather(t, window, q.device)
        k_band, v_band = k[:, index], vs[:, index]  # [B, T, W, H, dh]
        a = torch.einsum("bqhd,bqwhd->bqwh", q, k_band)
        w = _scores_to_weights(a, activations, scale, position, head_dim=3)
        keep = valid[None] & mask[:, index]
        w = w.masked_fill(~keep[..., None], 0.0)
        out = torch.einsum("bqwh,bqwhd->bqhd", w, v_band)
    else:
        a = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1))  # [B, H, T, T]
        w = _scores_to_weights(a, activations, scale, position, head_dim=1)
        keep = band_mask(t, window, q.device)[None] & mask[:, None, :]
        w = w.masked_fill(~keep[:, None], 0.0)
        out = torch.matmul(w, vs.transpose(1, 2)).transpose(1, 2)
    return out * mask[:, :, None, None]


__all__ = ["IMPLS", "activate", "gdpa_pffn", "gdpa_seed_pool", "gdpa_self_attention",
           "offsets_of", "scatter_rows"]
