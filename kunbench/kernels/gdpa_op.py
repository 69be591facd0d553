"""The Triton GDPA kernels as torch custom ops, so they compose with autograd, torch.compile and
FlopCounterMode.

  kunbench::gdpa_fwd(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window,
                     broadcast_q) -> out
  kunbench::gdpa_bwd(grad_out, q, k, v, ...same...) -> (dq, dk, dv)
  kunbench::gdpa_padded_fwd / gdpa_padded_bwd: the same kernels on padded [B, T, H, d] tensors with
      [B] lengths in place of offsets (what the models call: no host read of any length)

`activations` are per-head ids (`gdpa_triton_kernels.ACT_IDS`), `window` < 0 means none and
`scale` None means 1 / max q length (computed inside the op, so no data-dependent host value
leaks into a compiled graph). FLOPs: forward 4 d_h H sum_b Lq_b Lk_b (windowed self-attention
counts min(L, 2w+1) keys per query), backward 2.5x forward, as `gdpa_flops` (models.md 4).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from kunbench.kernels.gdpa_reference import gdpa_flops


@torch.library.custom_op("kunbench::gdpa_fwd", mutates_args=())
def gdpa_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: Optional[torch.Tensor],
    kv_offsets: Optional[torch.Tensor],
    activations: list[int],
    scale: Optional[float],
    scale_pre: bool,
    window: int,
    broadcast_q: bool,
) -> torch.Tensor:
    from kunbench.kernels.gdpa_triton import gdpa_triton_forward

    _require_runnable(q)
    return gdpa_triton_forward(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre,
                               None if window < 0 else window, broadcast_q)


def _batch(k: torch.Tensor, kv_offsets: Optional[torch.Tensor]) -> int:
    return kv_offsets.shape[0] - 1 if kv_offsets is not None else k.shape[0]


@gdpa_fwd.register_fake
def _gdpa_fwd_fake(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q):
    if broadcast_q:
        return q.new_empty((_batch(k, kv_offsets), q.shape[0], q.shape[1], q.shape[2]))
    return torch.empty_like(q)


@torch.library.custom_op("kunbench::gdpa_bwd", mutates_args=())
def gdpa_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: Optional[torch.Tensor],
    kv_offsets: Optional[torch.Tensor],
    activations: list[int],
    scale: Optional[float],
    scale_pre: bool,
    window: int,
    broadcast_q: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from kunbench.kernels.gdpa_triton import gdpa_triton_backward

    _require_runnable(q)
    return gdpa_triton_backward(grad_out, q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre,
                                None if window < 0 else window, broadcast_q)


@gdpa_bwd.register_fake
def _gdpa_bwd_fake(grad_out, q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q = inputs
    ctx.save_for_backward(q, k, v, q_offsets, kv_offsets)
    ctx.params = (list(activations), scale, scale_pre, window, broadcast_q)


def _backward(ctx, grad_out):
    q, k, v, q_offsets, kv_offsets = ctx.saved_tensors
    dq, dk, dv = torch.ops.kunbench.gdpa_bwd(grad_out, q, k, v, q_offsets, kv_offsets, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None, None


gdpa_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- padded layout: q [B, Tq, H, d] (or a broadcast [Lq, H, d] set), k/v [B, Tk, H, d] -------------
@torch.library.custom_op("kunbench::gdpa_padded_fwd", mutates_args=())
def gdpa_padded_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: Optional[torch.Tensor],
    kv_lengths: Optional[torch.Tensor],
    activations: list[int],
    scale: float,
    scale_pre: bool,
    window: int,
    broadcast_q: bool,
) -> torch.Tensor:
    """Lengths `[B]` stand in for offsets (None: every row of a dense k/v, or a broadcast q); rows
    past a sample's length read as absent and come out zero. Shapes alone size the launch, so no
    length is read on the host."""
    from kunbench.kernels.gdpa_triton import gdpa_triton_forward

    _require_runnable(q)
    return gdpa_triton_forward(q, k, v, q_lengths, kv_lengths, activations, scale, scale_pre,
                               None if window < 0 else window, broadcast_q, padded=True)


@gdpa_padded_fwd.register_fake
def _gdpa_padded_fwd_fake(q, k, v, q_lengths, kv_lengths, activations, scale, scale_pre, window, broadcast_q):
    if broadcast_q:
        return q.new_empty((k.shape[0], q.shape[0], q.shape[1], q.shape[2]))
    return torch.empty_like(q)


@torch.library.custom_op("kunbench::gdpa_padded_bwd", mutates_args=())
def gdpa_padded_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: Optional[torch.Tensor],
    kv_lengths: Optional[torch.Tensor],
    activations: list[int],
    scale: float,
    scale_pre: bool,
    window: int,
    broadcast_q: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from kunbench.kernels.gdpa_triton import gdpa_triton_backward

    _require_runnable(q)
    return gdpa_triton_backward(grad_out, q, k, v, q_lengths, kv_lengths, activations, scale, scale_pre,
                                None if window < 0 else window, broadcast_q, padded=True)


@gdpa_padded_bwd.register_fake
def _gdpa_padded_bwd_fake(grad_out, q, k, v, q_lengths, kv_lengths, activations, scale, scale_pre, window,
                          broadcast_q):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _padded_backward(ctx, grad_out):
    q, k, v, q_lengths, kv_lengths = ctx.saved_tensors
    dq, dk, dv = torch.ops.kunbench.gdpa_padded_bwd(grad_out, q, k, v, q_lengths, kv_lengths, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None, None


gdpa_padded_fwd.register_autograd(_padded_backward, setup_context=_setup_context)


def _require_runnable(q: torch.Tensor) -> None:
    from kunbench.kernels.gdpa_triton import interpreting, triton_available

    if not triton_available():
        raise RuntimeError("the triton GDPA kernels need the `triton` package")
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"the triton GDPA kernels run on CUDA tensors (got {q.device.type}); set "
                           "TRITON_INTERPRET=1 to run them in the Triton interpreter on CPU")


def _lengths(offsets: torch.Tensor) -> torch.Tensor:
    return (offsets[1:] - offsets[:-1]).to("cpu")


def forward_flops(q, k, v, q_offsets, kv_offsets, window, broadcast_q) -> float:
    """Forward FLOPs of one gdpa_fwd call (true lengths; reads the offsets when they are real)."""
    heads, dh = q.shape[-2], q.shape[-1]
    batch = _batch(k, kv_offsets)
    if batch == 0:
        return 0.0
    w = None if window is None or window < 0 else window
    try:
        if broadcast_q:
            lq = torch.full((batch,), q.shape[0])
        else:
            lq = _lengths(q_offsets)
        lk = _lengths(kv_offsets) if kv_offsets is not None else torch.full((batch,), k.shape[1])
        return float(gdpa_flops(lq, lk, heads, dh, window=w).sum())
    except Exception:  # fake/meta offsets (tracing): data-free estimate, exact except self-attention
        n_q = q.shape[0] * (batch if broadcast_q else 1)
        if kv_offsets is None:
            return 4.0 * dh * heads * n_q * k.shape[1]
        if broadcast_q:
            return 4.0 * dh * heads * q.shape[0] * k.shape[0]
        per_q = k.shape[0] / batch if w is None else min(k.shape[0] / batch, 2 * w + 1)
        return 4.0 * dh * heads * n_q * per_q


def padded_forward_flops(q, k, q_lengths, kv_lengths, window, broadcast_q) -> float:
    """Forward FLOPs of one gdpa_padded_fwd call on true lengths (padded shapes when tracing)."""
    heads, dh, batch = q.shape[-2], q.shape[-1], k.shape[0]
    if batch == 0:
        return 0.0
    w = None if window is None or window < 0 else window
    try:
        lq = (torch.full((batch,), q.shape[0]) if broadcast_q else
              q_lengths.to("cpu") if q_lengths is not None else torch.full((batch,), q.shape[1]))
        lk = kv_lengths.to("cpu") if kv_lengths is not None else torch.full((batch,), k.shape[1])
        return float(gdpa_flops(lq, lk, heads, dh, window=w).sum())
    except Exception:  # fake lengths (tracing): the padded shapes
        tq = q.shape[0] if broadcast_q else q.shape[1]
        tk = k.shape[1] if w is None else min(k.shape[1], 2 * w + 1)
        return 4.0 * dh * heads * batch * tq * tk


def _register_flops() -> None:
    pfwd, pbwd = torch.ops.kunbench.gdpa_padded_fwd, torch.ops.kunbench.gdpa_padded_bwd
    if pfwd not in flop_registry:
        @register_flop_formula(pfwd, get_raw=True)
        def _pfwd_flops(q, k, v, q_lengths, kv_lengths, activations, scale, scale_pre, window, broadcast_q,
                        *args, out_val=None, **kwargs) -> int:
            return int(padded_forward_flops(q, k, q_lengths, kv_lengths, window, broadcast_q))

    if pbwd not in flop_registry:
        @register_flop_formula(pbwd, get_raw=True)
        def _pbwd_flops(grad_out, q, k, v, q_lengths, kv_lengths, activations, scale, scale_pre, window,
                        broadcast_q, *args, out_val=None, **kwargs) -> int:
            return int(2.5 * padded_forward_flops(q, k, q_lengths, kv_lengths, window, broadcast_q))

    fwd, bwd = torch.ops.kunbench.gdpa_fwd, torch.ops.kunbench.gdpa_bwd
    if fwd not in flop_registry:
        @register_flop_formula(fwd, get_raw=True)
        def _fwd_flops(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window, broadcast_q,
                       *args, out_val=None, **kwargs) -> int:
            return int(forward_flops(q, k, v, q_offsets, kv_offsets, window, broadcast_q))

    if bwd not in flop_registry:
        @register_flop_formula(bwd, get_raw=True)
        def _bwd_flops(grad_out, q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window,
                       broadcast_q, *args, out_val=None, **kwargs) -> int:
            return int(2.5 * forward_flops(q, k, v, q_offsets, kv_offsets, window, broadcast_q))


_register_flops()
