"""Packed sequences: the real events of a batch's rows back to back, `[N, ...]`, no padding.

Kunlun runs each event stream packed (`sequence_layout = packed`): every per-token op (projections,
norms, ROTE, the PFFN's products, the summaries' keys) then costs the batch's real events, not
`B x` its longest row. On `small` the click histories fill 37% of their padded width, so a padded
stream spends most of its work on padding that the analytic FLOPs never count.

A `Packed` stream carries, beside its values, each token's row and position in the row, and the
row offsets. Products that need a per-row shape (a row's own K/V, seed pooling) run on a padded
view (`to_padded` / `from_padded`), which costs one scatter and one gather of the tokens. Every
helper here reads only shapes on the host: N is the values' length, and the longest row is a host
integer that the batch carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kunbench.ops.jagged import lengths_of, segment_ids


@dataclass
class Packed:
    row: torch.Tensor  # [N] int64, the row of each token
    pos: torch.Tensor  # [N] int64, its position in the row (0 = oldest kept)
    offsets: torch.Tensor  # [B+1]
    lengths: torch.Tensor  # [B]
    longest: int  # host int: at least the longest row (the padded width when one is needed)

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]


def plan(offsets: torch.Tensor, n: int, longest: int) -> Packed:
    """Row and position of each of the `n` packed tokens (no host read of the offsets)."""
    row = segment_ids(offsets, n)
    pos = torch.arange(n, device=offsets.device) - offsets[row]
    return Packed(row, pos, offsets, lengths_of(offsets), int(longest))


def to_padded(x: torch.Tensor, p: Packed, width: int | None = None) -> torch.Tensor:
    """`[N, ...]` -> left-aligned `[B, T, ...]` with zeros in the padding."""
    t = max(p.longest if width is None else width, 1)
    out = x.new_zeros((p.batch, t, *x.shape[1:]))
    return out.index_put((p.row, p.pos), x)


def from_padded(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """Left-aligned `[B, T, ...]` -> `[N, ...]` (the real positions only)."""
    return x[p.row, p.pos]


def padded_mask(p: Packed, width: int | None = None) -> torch.Tensor:
    t = max(p.longest if width is None else width, 1)
    return torch.arange(t, device=p.lengths.device)[None, :] < p.lengths[:, None]


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Packed, window: int,
                     cache: dict) -> torch.Tensor:
    """Softmax self-attention of packed `q, k, v [N, H, dh]` over keys of the same row with
    `|i - j| <= window`. Tokens are cut into chunks of `c = max(w, 8)`; chunk `j` attends to the
    key block of rows `j c - w .. j c + c + w - 1` (a view: unfold of the keys with `w` guard
    rows), masked to its own row. Work and memory grow as `N w`, and padding costs nothing."""
    n, h, dh = q.shape
    c = max(window, 8)
    kw = c + 2 * window
    nc = -(-max(n, 1) // c)
    tp = nc * c
    key = ("packed_window", window)
    if key not in cache:
        row = F.pad(p.row, (0, tp - n), value=-1)  # padded query slots: row -1
        krow = F.pad(p.row, (window, tp - n + window), value=-2)  # guard and padded keys: row -2
        qrow = row.view(nc, c, 1)
        kblock = krow.unfold(0, kw, c)  # [nc, kw]
        qi = torch.arange(c, device=q.device).view(1, c, 1)
        kj = torch.arange(kw, device=q.device).view(1, 1, kw) - window
        band = (qi - kj).abs() <= window
        keep = (qrow == kblock[:, None, :]) & band
        keep = keep | (qi == kj)  # a query always sees its own slot: no empty softmax row
        cache[key] = keep[:, None]  # [nc, 1, c, kw]
    if tp != n:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, tp - n)) for x in (q, k, v))
    qc = q.view(nc, c, h, dh).transpose(1, 2)

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, window, window)).unfold(0, kw, c).transpose(-1, -2)  # [nc, H, kw, dh]

    out = F.scaled_dot_product_attention(qc, blocks(k), blocks(v), attn_mask=cache[key])
    return out.transpose(1, 2).reshape(tp, h, dh)[:n]
