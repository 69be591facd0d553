"""The Triton GDPA kernels as torch custom ops, so they compose with autograd, torch.compile and
FlopCounterMode.

  kunbench::gdpa_fwd(q, k, v, q_offsets, kv_offsets, activations, scale, scale_pre, window,
                     broadcast_q) -> out
  kunbench::gdpa_bwd(grad_out, q, k, v, ...same...) -> (dq, dk, dv)
  kunbench::gdpa_padded_fwd / gdpa_padded_bwd: the same kernels on padded [B, T, H, d] tensors with
      [B] lengths in place of offsets (what the models call: no host read of any length); rows
      past a sample's length read as absent and come out zero, and `scale` is always given

`activations` are per-head ids (`gdpa_triton_kernels.ACT_IDS`), `window` < 0 means none and
`scale` None means 1 / max q length (computed inside the op, so no data-dependent host value
leaks into a compiled graph). FLOPs: forward 4 d_h H sum_b Lq_b Lk_b (windowed self-attention
counts min(L, 2w+1) keys per query), backward 2.5x forward, as `gdpa_flops` (docs/models.md 4).
Both layouts are registered by one `_define`, so their fake, autograd and FLOP rules cannot drift.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from kunbench.kernels.gdpa_reference import gdpa_flops
from kunbench.ops.jagged import lengths_of

_PARAMS = ("Tensor q, Tensor k, Tensor v, Tensor? {q_rows}, Tensor? {kv_rows}, int[] activations, {scale} scale, "
           "bool scale_pre, int window, bool broadcast_q")


def _require_runnable(q: torch.Tensor) -> None:
    from kunbench.kernels.gdpa_triton import interpreting, triton_available

    if not triton_available():
        raise RuntimeError("the triton GDPA kernels need the `triton` package")
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"the triton GDPA kernels run on CUDA tensors (got {q.device.type}); set "
                           "TRITON_INTERPRET=1 to run them in the Triton interpreter on CPU")


def _batch(k: torch.Tensor, kv_rows: torch.Tensor | None, padded: bool) -> int:
    return kv_rows.shape[0] - 1 if kv_rows is not None and not padded else k.shape[0]


def _define(name: str, padded: bool, flops) -> None:
    """Register `kunbench::{name}_fwd` and `_bwd` (with fake, autograd and FLOP rules) for one layout:
    jagged q/k/v with offsets (`padded=False`), or padded tensors with lengths (`padded=True`)."""
    rows = ("q_lengths", "kv_lengths") if padded else ("q_offsets", "kv_offsets")
    params = _PARAMS.format(q_rows=rows[0], kv_rows=rows[1], scale="float" if padded else "float?")

    def forward(q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q):
        from kunbench.kernels.gdpa_triton import gdpa_triton_forward

        _require_runnable(q)
        return gdpa_triton_forward(q, k, v, q_rows, kv_rows, activations, scale, scale_pre,
                                   None if window < 0 else window, broadcast_q, padded=padded)

    def backward(grad_out, q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q):
        from kunbench.kernels.gdpa_triton import gdpa_triton_backward

        _require_runnable(q)
        return gdpa_triton_backward(grad_out, q, k, v, q_rows, kv_rows, activations, scale, scale_pre,
                                    None if window < 0 else window, broadcast_q, padded=padded)

    fwd = torch.library.custom_op(f"kunbench::{name}_fwd", forward, mutates_args=(), schema=f"({params}) -> Tensor")
    bwd = torch.library.custom_op(f"kunbench::{name}_bwd", backward, mutates_args=(),
                                  schema=f"(Tensor grad_out, {params}) -> (Tensor, Tensor, Tensor)")

    @fwd.register_fake
    def _fwd_fake(q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q):
        if broadcast_q:
            return q.new_empty((_batch(k, kv_rows, padded), *q.shape))
        return torch.empty_like(q)

    @bwd.register_fake
    def _bwd_fake(grad_out, q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q = inputs
        ctx.save_for_backward(q, k, v, q_rows, kv_rows)
        ctx.params = (list(activations), scale, scale_pre, window, broadcast_q)

    def autograd_backward(ctx, grad_out):
        q, k, v, q_rows, kv_rows = ctx.saved_tensors
        dq, dk, dv = bwd(grad_out, q, k, v, q_rows, kv_rows, *ctx.params)
        return dq, dk, dv, None, None, None, None, None, None, None

    fwd.register_autograd(autograd_backward, setup_context=setup_context)

    fwd_op, bwd_op = getattr(torch.ops.kunbench, f"{name}_fwd"), getattr(torch.ops.kunbench, f"{name}_bwd")
    if fwd_op not in flop_registry:
        @register_flop_formula(fwd_op, get_raw=True)
        def _fwd_flops(q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q,
                       *args, out_val=None, **kwargs) -> int:
            return int(flops(q, k, q_rows, kv_rows, window, broadcast_q))

    if bwd_op not in flop_registry:
        @register_flop_formula(bwd_op, get_raw=True)
        def _bwd_flops(grad_out, q, k, v, q_rows, kv_rows, activations, scale, scale_pre, window, broadcast_q,
                       *args, out_val=None, **kwargs) -> int:
            return int(2.5 * flops(q, k, q_rows, kv_rows, window, broadcast_q))


def forward_flops(q, k, q_offsets, kv_offsets, window, broadcast_q) -> float:
    """Forward FLOPs of one gdpa_fwd call (true lengths; reads the offsets when they are real)."""
    heads, dh = q.shape[-2], q.shape[-1]
    batch = _batch(k, kv_offsets, padded=False)
    if batch == 0:
        return 0.0
    w = None if window is None or window < 0 else window
    try:
        if broadcast_q:
            lq = torch.full((batch,), q.shape[0])
        else:
            lq = lengths_of(q_offsets).to("cpu")
        lk = lengths_of(kv_offsets).to("cpu") if kv_offsets is not None else torch.full((batch,), k.shape[1])
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


_define("gdpa", padded=False, flops=forward_flops)
_define("gdpa_padded", padded=True, flops=padded_forward_flops)
