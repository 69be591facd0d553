"""PyTorch reference for GDPA (docs/models.md 3.2): act(Q K^T) * s @ V with no softmax.

This is the ground truth the fused Triton kernel is tested against, and the path used off-GPU.
It pads jagged inputs to dense tensors and masks, so it favours clarity over memory. The models'
torch path (`kunbench.backends.gdpa_ops`) is built from the same pieces (`activate`,
`banded_product`), so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from kunbench.ops.banded import band_gather, band_mask
from kunbench.ops.jagged import jagged_to_padded, longest_row, padded_to_jagged

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


def activate(x: torch.Tensor, names: Sequence[str], head_dim: int) -> torch.Tensor:
    """Apply `names[h]` to head `h` of `x` along `head_dim` (one call when all heads agree)."""
    if len(set(names)) == 1:
        return activation_fn(names[0])(x)
    return torch.stack([activation_fn(n)(x.select(head_dim, h)) for h, n in enumerate(names)], dim=head_dim)


def banded_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, window: int,
                   weights: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`sum_j weights(q_i . k_j) v_j` over the keys `|i - j| <= window`, computing only the `2w+1`
    band slots of each query (O(T w), the work `gdpa_flops` counts). `q [B, Tq, H, d_h]`,
    `k, v [B, T, H, d_h]`, `key_mask [B, T]`; `weights` maps the band scores `[B, Tq, 2w+1, H]`
    (heads on dim 3) to the weights, e.g. the scaled activation."""
    index, valid = band_gather(k.shape[1], window, q.device, queries=q.shape[1])  # [Tq, W]
    k_band, v_band = k[:, index], v[:, index]  # [B, Tq, W, H, d_h]
    w = weights(torch.einsum("bqhd,bqwhd->bqwh", q, k_band))
    keep = valid[None] & key_mask[:, index]
    w = w.masked_fill(~keep[..., None], 0.0)
    return torch.einsum("bqwh,bqwhd->bqhd", w, v_band)


def gdpa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor | None,
    kv_offsets: torch.Tensor | None,
    activations: Sequence[str],
    scale: float | None,
    scale_pre: bool,
    window: int | None,
    broadcast_q: bool,
) -> torch.Tensor:
    """The arguments of `kunbench::gdpa_fwd` in the same order (activation names in place of ids,
    `window` None for none), already checked by `kunbench.kernels.gdpa`; computed in q's dtype."""
    jagged_kv = kv_offsets is not None
    if broadcast_q:
        batch = (kv_offsets.numel() - 1) if jagged_kv else k.shape[0]
        q_pad = q.unsqueeze(0).expand(batch, *q.shape)
        q_mask = torch.ones(batch, q.shape[0], dtype=torch.bool, device=q.device)
        max_q = q.shape[0]
    else:
        max_q = longest_row(q_offsets)
        q_pad, _, q_mask = jagged_to_padded(q, q_offsets, pad_to=max_q)
    if jagged_kv:
        max_k = longest_row(kv_offsets)
        k_pad, _, k_mask = jagged_to_padded(k, kv_offsets, pad_to=max_k)
        v_pad, _, _ = jagged_to_padded(v, kv_offsets, pad_to=max_k)
    else:
        k_pad, v_pad = k, v
        k_mask = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
    s = (1.0 / max(max_q, 1)) if scale is None else float(scale)

    def weights(scores: torch.Tensor, head_dim: int) -> torch.Tensor:
        probs = activate(scores * s if scale_pre else scores, activations, head_dim)
        return probs if scale_pre else probs * s

    if window is not None and 2 * window + 1 < k_pad.shape[1]:
        out = banded_product(q_pad, k_pad, v_pad, k_mask, window, lambda a: weights(a, 3))
    else:
        scores = torch.einsum("bqhd,bkhd->bhqk", q_pad, k_pad)  # [B, H, Tq, Tk]
        keep = k_mask[:, None, None, :]
        if window is not None:
            keep = keep & band_mask(scores.shape[3], window, q.device, queries=scores.shape[2])[None, None]
        probs = weights(scores, 1).masked_fill(~keep, 0.0)
        out = torch.einsum("bhqk,bkhd->bqhd", probs, v_pad)  # [B, Tq, H, d_h]
    if broadcast_q:
        return out
    return padded_to_jagged(out, q_mask)[0]


def gdpa_flops(
    q_lengths: torch.Tensor, k_lengths: torch.Tensor, heads: int, head_dim: int, window: int | None = None
) -> torch.Tensor:
    """Forward matmul FLOPs per example: 4 d_h H Lq Lk_eff (docs/models.md 4); backward is 2.5x this.

    With a symmetric window in self-attention (Lq == Lk) each query counts min(T, 2w+1) keys, the
    docs/models.md convention, which is what a banded kernel computes (edge slots included).
    """
    lq = q_lengths.to(torch.float64)
    lk = k_lengths.to(torch.float64)
    pairs = lq * (lk if window is None else torch.clamp(lk, max=2 * window + 1))
    return 4.0 * head_dim * heads * pairs
