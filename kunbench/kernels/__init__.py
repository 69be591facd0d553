"""Kernels behind Kunlun's operators. `gdpa` validates its inputs, then dispatches.

Implementations: `torch` (the PyTorch reference, every device) and `triton` (the fused kernels of
`gdpa_triton_kernels`, run through the `kunbench::gdpa_fwd` / `kunbench::gdpa_bwd` custom ops of
`gdpa_op`, with autograd, torch.compile support and a FLOP formula). `auto` picks triton for CUDA
tensors of float16/bfloat16/float32 when triton is installed, the reference otherwise. Force one with
the `implementation=` argument or `KUNBENCH_KERNELS=triton|torch` (argument wins). On CPU, triton is
allowed only under TRITON_INTERPRET=1 (the Triton interpreter, for tests); otherwise it is an error.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from kunbench.kernels import gdpa_op  # noqa: F401  (registers torch.ops.kunbench.gdpa_fwd / gdpa_bwd)
from kunbench.kernels.gdpa_reference import ACTIVATIONS, gdpa_flops, gdpa_reference, per_head_activations
from kunbench.kernels.gdpa_triton import SUPPORTED_DTYPES, interpreting, triton_available

IMPLEMENTATIONS = ("torch", "triton")
ACTIVATION_IDS = {"identity": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}  # = gdpa_triton_kernels.ACT_IDS

__all__ = ["ACTIVATIONS", "ACTIVATION_IDS", "IMPLEMENTATIONS", "gdpa", "gdpa_flops", "select_implementation"]


def select_implementation(device: torch.device | str, override: str | None = None,
                          dtype: torch.dtype | None = None) -> str:
    """`torch` or `triton` for tensors on `device` (see the module docstring for the rules)."""
    device = torch.device(device)
    choice = (override or os.environ.get("KUNBENCH_KERNELS") or "auto").strip().lower()
    if choice == "auto":
        ok_dtype = dtype is None or dtype in SUPPORTED_DTYPES
        return "triton" if device.type == "cuda" and ok_dtype and triton_available() else "torch"
    if choice not in IMPLEMENTATIONS:
        raise ValueError(f"kernel implementation {choice!r} is not available (have: auto, {', '.join(IMPLEMENTATIONS)})")
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("kernel implementation 'triton' needs the triton package, which is not installed")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(f"kernel implementation 'triton' runs on CUDA tensors, got {device.type}; set "
                               "TRITON_INTERPRET=1 to run it in the Triton interpreter, or use 'torch'")
        if dtype is not None and dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"kernel implementation 'triton' supports float16, bfloat16, float32; got {dtype}")
    return choice


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # torch < 2.3
        return False


def _check_offsets(name: str, offsets: torch.Tensor, rows: int) -> None:
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"{name} must be a 1-D [B+1] tensor, got shape {tuple(offsets.shape)}")
    if _compiling():  # value checks read the device: skipped while torch.compile traces (no graph break)
        return
    first, last, decreasing = torch.stack([offsets[0], offsets[-1], (offsets[1:] < offsets[:-1]).any().to(
        offsets.dtype)]).tolist()  # one device sync
    if first != 0 or last != rows or decreasing:
        raise ValueError(f"{name} must start at 0, be non-decreasing and end at {rows}")


def gdpa(
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
    implementation: str | None = None,
) -> torch.Tensor:
    """Generalized dot-product attention: out = act(Q K^T) * scale @ V per head, no softmax.

    q: jagged `[sum Lq, H, d_h]` with `q_offsets [B+1]`, or with `broadcast_q` one `[Lq, H, d_h]`
    set shared by the batch (output `[B, Lq, H, d_h]`). k, v: dense `[B, F, H, d_h]` (PFFN mode) or
    jagged with `kv_offsets` (seed pooling, self-attention). `scale` defaults to 1 / max q length
    and is applied after (`post`) or before (`pre`) the activation; `window` keeps |i - j| <= w
    (self-attention mode, where q and k share offsets).
    """
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape or q.shape[-2] != k.shape[-2]:
        raise ValueError(f"gdpa shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if kv_offsets is not None:
        if k.dim() != 3:
            raise ValueError(f"jagged k/v must be [sum Lk, H, d_h], got {tuple(k.shape)}")
        _check_offsets("kv_offsets", kv_offsets, k.shape[0])
    elif k.dim() != 4:
        raise ValueError(f"dense k/v must be [B, F, H, d_h], got {tuple(k.shape)}")
    if not broadcast_q:
        if q_offsets is None or q.dim() != 3:
            raise ValueError("jagged q must be [sum Lq, H, d_h] with q_offsets")
        _check_offsets("q_offsets", q_offsets, q.shape[0])
        batch = kv_offsets.numel() - 1 if kv_offsets is not None else k.shape[0]
        if q_offsets.numel() - 1 != batch:
            raise ValueError(f"q has {q_offsets.numel() - 1} rows but k/v have {batch}")
    if window is not None:
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        if kv_offsets is None or q_offsets is None or (
                not _compiling() and q_offsets is not kv_offsets and not torch.equal(q_offsets, kv_offsets)):
            raise ValueError("window needs self-attention mode: jagged q and k/v with equal offsets")
    names = per_head_activations(activation, q.shape[-2])
    if scale_position not in ("pre", "post"):
        raise ValueError(f"scale_position must be 'pre' or 'post', got {scale_position!r}")
    common = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    impl = select_implementation(q.device, implementation, common)
    if broadcast_q and q.dim() != 3:
        raise ValueError(f"broadcast q must be [Lq, H, d_h], got {tuple(q.shape)}")
    q_offsets = None if broadcast_q else q_offsets
    scale = None if scale is None else float(scale)
    if impl == "triton":
        q, k, v = q.to(common), k.to(common), v.to(common)  # one dtype for the kernels' dots (e.g. autocast)
        return torch.ops.kunbench.gdpa_fwd(q, k, v, q_offsets, kv_offsets, [ACTIVATION_IDS[n] for n in names], scale,
                                           scale_position == "pre", -1 if window is None else int(window),
                                           bool(broadcast_q))
    return gdpa_reference(q, k, v, q_offsets, kv_offsets, names, scale, scale_position == "pre", window,
                          bool(broadcast_q))
