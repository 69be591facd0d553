"""GDPA in its three modes over left-aligned padded sequences, behind one dispatcher.

`GDPA_h(Q, K, V) = act_h(Q K_h^T) * s @ V_h` per head: no softmax, no normaliser; `act_h` per head;
`s` after the activation (`post`) or before it (`pre`).

Kernels (`GDPAKernel`), chosen per call by `resolve_gdpa(choice, device, dtype)`:
- `TRITON`: the fused Triton kernels of `kunbench.kernels` on the padded tensors themselves
  (`kunbench::gdpa_padded_fwd`, lengths in place of offsets): CUDA, or the Triton interpreter
  under TRITON_INTERPRET=1 in tests;
- `TORCH`: the same math as batched matmuls over the padded tensors with masks (the CPU path,
  built from the reference's `activate` and `banded_product`; FlopCounterMode sees exactly
  `gdpa_flops` on equal lengths).
A config names `auto`, `triton` or `torch` (`fused` and `naive`, the names of older configs, mean
`auto` and `torch`). `auto` is TRITON for CUDA tensors when triton is installed, TORCH otherwise;
the environment variable KUNBENCH_KERNELS=triton|torch changes only what `auto` picks.

Neither path reads a length or a mask on the host: `s` may be a 0-d tensor (a batch maximum kept
on the device), applied by a multiply outside the kernel.

Modes: `pffn` (per-example dense K/V `[B, F, H, d_h]`), `seed_pool` (one Q set shared by the batch,
K = V = the sequence), `self_attention` (Q = K = V rows of one sequence, optional symmetric
window). All take `[B, T, H, d_h]` padded tensors with `mask [B, T]`; outputs at padded query
positions are zero.
"""

from __future__ import annotations

import enum
from typing import Sequence

import torch

from kunbench.errors import KunbenchError
from kunbench.kernels import ACTIVATION_IDS, select_implementation
from kunbench.kernels.gdpa_reference import activate, activation_fn, banded_product
from kunbench.ops.banded import band_mask


class GDPAKernel(str, enum.Enum):
    TRITON = "triton"
    TORCH = "torch"


GDPA_CHOICES = ("auto", "triton", "torch")
LEGACY_NAMES = {"fused": "auto", "naive": "torch"}


def normalize_choice(choice: str) -> str:
    """A config's `gdpa` value in canonical form (legacy names mapped), or a one-line error."""
    low = str(choice).strip().lower()
    low = LEGACY_NAMES.get(low, low)
    if low not in GDPA_CHOICES:
        raise KunbenchError(f"gdpa must be {' | '.join(GDPA_CHOICES)}, got {choice!r}")
    return low


def resolve_gdpa(choice: str, device: torch.device | str, dtype: torch.dtype | None = None) -> GDPAKernel:
    """The kernel a GDPA call with config value `choice` runs for tensors on `device`."""
    return GDPAKernel(_kernel_name(str(choice), torch.device(device).type, None if dtype is None else str(dtype)))


@torch.compiler.assume_constant_result
def _kernel_name(choice: str, device_type: str, dtype: str | None) -> str:
    # evaluated once while torch.compile traces (a constant of the graph), not traced into it
    choice = normalize_choice(choice)
    dt = None if dtype is None else getattr(torch, dtype.removeprefix("torch."))
    try:
        return select_implementation(device_type, None if choice == "auto" else choice, dt)
    except (RuntimeError, TypeError, ValueError) as e:
        raise KunbenchError(f"gdpa={choice}: {e}") from None


def uses_triton(choice: str, t: torch.Tensor) -> bool:
    """Whether a GDPA call with config value `choice` on `t` runs the fused kernels."""
    return _kernel_name(str(choice), t.device.type, str(_compute_dtype(t))) == "triton"


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    dev = t.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


def _split_scale(scale) -> tuple[float, torch.Tensor | None]:
    """(float for the kernel, tensor applied outside it or None)."""
    if isinstance(scale, torch.Tensor):
        return 1.0, scale
    return float(scale), None


def _triton(q, k, v, q_lengths, kv_lengths, activations, scale, position, window, broadcast_q):
    q, k, v = same_dtype(q, k, v)
    s, s_tensor = _split_scale(scale)
    if s_tensor is not None and position == "pre":
        q = q * s_tensor.to(q.dtype)  # act((s q) k^T) == act(s q k^T)
    out = torch.ops.kunbench.gdpa_padded_fwd(q.contiguous(), k.contiguous(), v.contiguous(), q_lengths, kv_lengths,
                                              [ACTIVATION_IDS[n] for n in activations], s, position == "pre",
                                              -1 if window is None else int(window), broadcast_q)
    if s_tensor is not None and position == "post":
        out = out * s_tensor.to(out.dtype)
    return out


def _scores_to_weights(a: torch.Tensor, names, scale: float, position: str, head_dim: int) -> torch.Tensor:
    """`act(a * s)` for `pre`; for `post` just `act(a)` (the caller folds `s` into V)."""
    return activate(a * scale if position == "pre" else a, names, head_dim)


def _v_scaled(v: torch.Tensor, scale: float, position: str) -> torch.Tensor:
    # act(a) * s @ V == act(a) @ (s V): scale the smaller tensor
    return v * scale if position == "post" else v


def head_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, activations: Sequence[str], scale,
                 position: str, keep: torch.Tensor | None = None) -> torch.Tensor:
    """`act(q k^T) * s @ v` on head-major `q [B|1, H, Lq, d_h]`, `k, v [B, H, Lk, d_h]` as two
    batched matmuls (`s` folded into V for `post`); `keep`, broadcastable to `[B, H, Lq, Lk]`,
    zeroes the weights of keys a query must not see. The torch path of every mode, and
    InterFormer's `NaivePFFN`."""
    w = _scores_to_weights(torch.matmul(q, k.transpose(-1, -2)), activations, scale, position, head_dim=1)
    if keep is not None:
        w = w.masked_fill(~keep, 0.0)
    return torch.matmul(w, _v_scaled(v, scale, position))


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
              scale, position: str = "post", impl: str = "auto", zero_padding: bool = True) -> torch.Tensor:
    """PFFN mode: `q [B, T, H, d_h]`, `k, v [B, F, H, d_h]` -> `[B, T, H, d_h]`. A caller that
    reads only the real rows (a packed stream's padded view) passes `zero_padding=False`, and the
    torch path then skips zeroing the padded outputs (a full-size multiply and its backward)."""
    if uses_triton(impl, q):
        return _triton(q, k, v, mask.sum(1), None, list(activations), scale, position, None, False)
    if len(set(activations)) > 1:
        # mixed activations: one product per head, so the activated scores are never stacked
        # (a copy of the largest tensor here); ~40% faster than batching the heads on a CPU
        outs = []
        for h, name in enumerate(activations):
            a = torch.matmul(q[:, :, h], k[:, :, h].transpose(1, 2))  # [B, T, F]
            w = activation_fn(name)(a * scale if position == "pre" else a)
            outs.append(torch.matmul(w, _v_scaled(v[:, :, h], scale, position)))  # [B, T, dh]
        out = torch.stack(outs, dim=2)
    else:
        out = head_product(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), activations, scale,
                           position).transpose(1, 2)  # [B, T, H, dh]
    return out * mask[:, :, None, None] if zero_padding else out


def gdpa_seed_pool(seeds: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                   activations: Sequence[str], scale, position: str = "post",
                   impl: str = "auto") -> torch.Tensor:
    """Seed-pooling mode: `seeds [n, H, d_h]` shared by the batch attend over `k, v [B, T, H, d_h]`
    (real rows where `mask`) -> `[B, n, H, d_h]`; a row without events pools to zero."""
    if uses_triton(impl, k):
        return _triton(seeds, k, v, None, mask.sum(1), list(activations), scale, position, None, True)
    out = head_product(seeds.transpose(0, 1)[None], k.transpose(1, 2), v.transpose(1, 2), activations, scale,
                       position, keep=mask[:, None, None, :])  # [B, H, n, dh]
    return out.transpose(1, 2)


def gdpa_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                        activations: Sequence[str], scale, position: str = "post",
                        window: int | None = None, impl: str = "auto") -> torch.Tensor:
    """Self-attention mode over one sequence (`[B, T, H, d_h]` each), keys `|i - j| <= window`."""
    if uses_triton(impl, q):
        lengths = mask.sum(1)
        return _triton(q, k, v, lengths, lengths, list(activations), scale, position, window, False)
    t = q.shape[1]
    if window is not None and 2 * window + 1 < t:
        out = banded_product(q, k, _v_scaled(v, scale, position), mask, window,
                             lambda a: _scores_to_weights(a, activations, scale, position, head_dim=3))
    else:
        keep = band_mask(t, window, q.device)[None] & mask[:, None, :]  # [B, T, T]
        out = head_product(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), activations, scale, position,
                           keep=keep[:, None]).transpose(1, 2)
    return out * mask[:, :, None, None]


__all__ = ["GDPAKernel", "GDPA_CHOICES", "gdpa_pffn", "gdpa_seed_pool", "gdpa_self_attention", "head_product",
           "normalize_choice", "resolve_gdpa", "uses_triton"]
