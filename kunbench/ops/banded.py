"""Band index plans for symmetric-window self-attention over left-aligned padded sequences.

A query at position `i` sees keys `j` with `|i - j| <= w` (docs/models.md 3.4). Two plans:
- `band_gather(T, w)`: for each query the `2w + 1` key slots `i - w .. i + w` (clamped, with a
  validity mask) -- the exact O(T w) work `gdpa_flops` counts, used by the reference paths (the
  GDPA reference in `kunbench.kernels` and the models' naive kernels);
- `chunk_plan(T, w, c)`: query chunks of `c` rows, each with one contiguous key block of
  `c + 2w` rows -- fewer, larger matmuls for SDPA (about `(c + 2w) / (2w + 1)` times the exact work).
Every query row also keeps its own position (the diagonal), so a padded query never sees an
empty row (softmax would give NaN); padded outputs are masked by every consumer.
"""

from __future__ import annotations

import torch


def band_mask(t: int, window: int | None, device, queries: int | None = None) -> torch.Tensor:
    """`[Tq, T]` bool (`Tq = queries`, default `t`): `|i - j| <= window` (all True for `window=None`)."""
    tq = t if queries is None else queries
    if window is None:
        return torch.ones(tq, t, dtype=torch.bool, device=device)
    i = torch.arange(tq, device=device)
    j = torch.arange(t, device=device)
    return (i[:, None] - j[None, :]).abs() <= window


def full_keep(key_mask: torch.Tensor, window: int | None) -> torch.Tensor:
    """`[B, T, T]` bool: band & real key, plus the diagonal."""
    t = key_mask.shape[1]
    eye = torch.eye(t, dtype=torch.bool, device=key_mask.device)
    return (band_mask(t, window, key_mask.device)[None] & key_mask[:, None, :]) | eye[None]


def band_gather(t: int, window: int, device, queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(index [Tq, 2w+1], valid [Tq, 2w+1])` over `t` keys (`Tq = queries`, default `t`): key
    slot `r` of query `i` is `i - w + r`."""
    rel = torch.arange(-window, window + 1, device=device)
    idx = torch.arange(t if queries is None else queries, device=device)[:, None] + rel[None, :]
    valid = (idx >= 0) & (idx < t)
    return idx.clamp(0, t - 1), valid


def band_keep(key_mask: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """`[B, T, 2w+1]` bool for gathered bands: in range & real key, plus the diagonal slot `w`."""
    keep = valid[None] & key_mask[:, index]
    diag = torch.zeros(index.shape[1], dtype=torch.bool, device=index.device)
    diag[window] = True
    return keep | diag[None, None]


def chunk_plan(t: int, window: int, chunk: int, key_mask: torch.Tensor
               ) -> tuple[int, int, torch.Tensor]:
    """For chunked banded attention: `(n_chunks, padded_T, keep [B, n_chunks, c, c + 2w])`.

    Keys are padded with `w` rows in front and `padded_T - T + w` behind; chunk `n`'s key block
    is rows `n c .. n c + c + 2w - 1` of the padded keys, i.e. absolute key `n c - w + r`."""
    n = -(-t // chunk)
    tp = n * chunk
    q_abs = torch.arange(tp, device=key_mask.device).view(n, chunk, 1)
    r = torch.arange(chunk + 2 * window, device=key_mask.device)
    k_abs = torch.arange(n, device=key_mask.device).view(n, 1, 1) * chunk - window + r.view(1, 1, -1)
    band = (q_abs - k_abs).abs() <= window  # [n, c, c + 2w]
    km = torch.nn.functional.pad(key_mask, (window, tp - t + window))  # [B, tp + 2w]
    kvalid = km.unfold(1, chunk + 2 * window, chunk)  # [B, n, c + 2w]
    keep = band[None] & kvalid[:, :, None, :]
    keep = keep | (q_abs == k_abs)[None]
    return n, tp, keep
