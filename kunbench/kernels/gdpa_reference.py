"""PyTorch reference for GDPA (models.md 3.2): act(Q K^T) * s @ V with no softmax.

This is the ground truth the fused Triton kernel is tested against, and the path used off-GPU.
It pads jagged inputs to dense tensors and masks, so it favours clarity over memory.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kunbench.data.jagged import jagged_to_padded, lengths_of, padded_to_jagged

ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu", "identity")


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    if name == "relu":
        return F.relu
    if name == "identity":
        return lambda x: x
    raise ValueError(f"unknown GDPA activation {name!r} (choose from {', '.join(ACTIVATIONS)})")


def per_head_activations(activation: str | Sequence[str], heads: int) -> list[str]:
    names = [activation] * heads if isinstance(activation, str) else list(activation)
    if len(names) != heads:
        raise ValueError(f"got {len(names)} activations for {heads} heads")
    for n in names:
        activation_fn(n)
    return names


def gdpa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_offsets: torch.Tensor | None = None,
    kv_offsets: torch.Tensor | None = None,
    activation: str | Sequence[str] = "gelu",
    scale: float | None = None,
    scale_position: str = "post",
    window: int | None = None,
    broadcast_q: bool = False,
) -> torch.Tensor:
    """See `kunbench.kernels.gdpa` for the argument contract; computed in q's dtype."""
    if scale_position not in ("pre", "post"):
        raise ValueError(f"scale_position must be 'pre' or 'post', got {scale_position!r}")
    jagged_kv = kv_offsets is not None
    if broadcast_q:
        if q.dim() != 3:
            raise ValueError(f"broadcast q must be [Lq, H, d_h], got {tuple(q.shape)}")
        batch = (kv_offsets.numel() - 1) if jagged_kv else k.shape[0]
        q_pad = q.unsqueeze(0).expand(batch, *q.shape)
        q_mask = torch.ones(batch, q.shape[0], dtype=torch.bool, device=q.device)
        max_q = q.shape[0]
    else:
        if q_offsets is None:
            raise ValueError("jagged q needs q_offsets (or broadcast_q=True)")
        q_len = lengths_of(q_offsets)
        max_q = int(q_len.max()) if q_len.numel() else 0
        q_pad, _, q_mask = jagged_to_padded(q, q_offsets, pad_to=max_q)
    heads = q.shape[-2]
    if jagged_kv:
        kv_len = lengths_of(kv_offsets)
        max_k = int(kv_len.max()) if kv_len.numel() else 0
        k_pad, _, k_mask = jagged_to_padded(k, kv_offsets, pad_to=max_k)
        v_pad, _, _ = jagged_to_padded(v, kv_offsets, pad_to=max_k)
    else:
        k_pad, v_pad = k, v
        k_mask = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
    if window is not None and not jagged_kv:
        raise ValueError("window applies to self-attention mode (jagged k/v with kv_offsets)")
    s = (1.0 / max(max_q, 1)) if scale is None else float(scale)

    names = per_head_activations(activation, heads)
    if window is not None and 2 * window + 1 < k_pad.shape[1]:
        out = _banded(q_pad, k_pad, v_pad, k_mask, names, s, scale_position, window)
    else:
        scores = torch.einsum("bqhd,bkhd->bhqk", q_pad, k_pad)  # [B, H, Tq, Tk]
        probs = _activate(scores, names, s, scale_position, head_dim=1)
        keep = k_mask[:, None, None, :]
        if window is not None:
            qi = torch.arange(scores.shape[2], device=q.device)[:, None]
            kj = torch.arange(scores.shape[3], device=q.device)[None, :]
            keep = keep & ((qi - kj).abs() <= window)[None, None]
        probs = probs.masked_fill(~keep, 0.0)
        out = torch.einsum("bhqk,bkhd->bqhd", probs, v_pad)  # [B, Tq, H, d_h]
    if broadcast_q:
        return out
    return padded_to_jagged(out, q_mask)[0]


def _activate(scores: torch.Tensor, names: list[str], s: float, scale_position: str, head_dim: int) -> torch.Tensor:
    if scale_position == "pre":
        scores = scores * s
    if len(set(names)) == 1:
        probs = activation_fn(names[0])(scores)
    else:
        probs = torch.stack([activation_fn(n)(scores.select(head_dim, h)) for h, n in enumerate(names)],
                            dim=head_dim)
    return probs * s if scale_position == "post" else probs


def _banded(q_pad, k_pad, v_pad, k_mask, names, s, scale_position, window):
    """Self-attention inside |i - j| <= window computing only the 2w+1 band per query (O(T w))."""
    t = k_pad.shape[1]
    rel = torch.arange(-window, window + 1, device=q_pad.device)
    idx = torch.arange(q_pad.shape[1], device=q_pad.device)[:, None] + rel[None, :]  # [Tq, W]
    valid = (idx >= 0) & (idx < t)
    idx = idx.clamp(0, t - 1)
    k_band = k_pad[:, idx]  # [B, Tq, W, H, d_h]
    v_band = v_pad[:, idx]
    scores = torch.einsum("bqhd,bqwhd->bqwh", q_pad, k_band)
    probs = _activate(scores, names, s, scale_position, head_dim=3)
    keep = valid[None, :, :, None] & k_mask[:, idx][..., None]
    probs = probs.masked_fill(~keep, 0.0)
    return torch.einsum("bqwh,bqwhd->bqhd", probs, v_band)


def gdpa_flops(
    q_lengths: torch.Tensor, k_lengths: torch.Tensor, heads: int, head_dim: int, window: int | None = None
) -> torch.Tensor:
    """Forward matmul FLOPs per example: 4 d_h H Lq Lk_eff (models.md 4); backward is 2.5x this.

    With a symmetric window in self-attention (Lq == Lk) each query counts min(T, 2w+1) keys, the
    models.md convention, which is what a banded kernel computes (edge slots included).
    """
    lq = q_lengths.to(torch.float64)
    lk = k_lengths.to(torch.float64)
    pairs = lq * (lk if window is None else torch.clamp(lk, max=2 * window + 1))
    return 4.0 * head_dim * heads * pairs
