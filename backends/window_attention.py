"""Sliding-window self-attention over one event stream (docs/models.md 3.4), with ROTE on Q and K.

Token `i` sees keys `|i - j| <= w` (symmetric: every token is history, nothing leaks);
`window=None` is full attention (`attention = full`). Pre-norm residual block (Decision):
`S <- S + W_o Attn(ROTE(Q), ROTE(K), V)` with `Q, K, V = W_qkv LN(S)`.

Softmax by default, two kernels:
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` with a boolean band mask. Where the
  window is narrow against T (`T > 3w + 1`), queries are cut into chunks of `c = max(w, 8)` rows,
  each attending to one key block of `c + 2w` rows (`kunbench.ops.banded.chunk_plan`): O(T w)
  work and memory, about `(c + 2w) / (2w + 1)` (~1.5x) the exact band;
- `naive`: explicit matmuls on exactly `min(T, 2w + 1)` keys per query
  (`kunbench.ops.banded.band_gather`), the reference FlopCounterMode checks against.
`attention_act` set to an activation runs GDPA's self-attention mode instead (no softmax, scale
`1 / min(maxlen, 2w + 1)` -- Decision: the most keys a query can see), fused or naive by `gdpa`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kunbench.backends.gdpa_ops import gdpa_self_attention
from kunbench.backends.modules import attention_flops
from kunbench.backends.packed import Packed, from_padded, padded_mask, to_padded
from kunbench.backends.packed import window_attention as packed_window_attention
from kunbench.backends.rote import rotate
from kunbench.ops.banded import band_gather, band_keep, chunk_plan, full_keep


def softmax_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                             window: int | None, kernel: str = "sdpa", plan: dict | None = None) -> torch.Tensor:
    """`q, k, v [B, T, H, d_h]`, key mask `[B, T]` -> `[B, T, H, d_h]` (zero at padded queries).

    `plan` (a dict, one per sequence and forward pass) caches the masks, which every layer of a
    stream shares."""
    b, t, h, dh = q.shape
    plan = {} if plan is None else plan
    if kernel == "naive":
        if window is not None and 2 * window + 1 < t:
            index, valid = band_gather(t, window, q.device)
            k_band, v_band = k[:, index], v[:, index]  # [B, T, W, H, dh]
            scores = torch.einsum("bqhd,bqwhd->bqwh", q, k_band) * dh ** -0.5
            keep = band_keep(mask, index, valid, window)
            probs = torch.softmax(scores.masked_fill(~keep[..., None], float("-inf")), dim=2)
            out = torch.einsum("bqwh,bqwhd->bqhd", probs, v_band)
        else:
            qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            scores = torch.matmul(qh, kh.transpose(-1, -2)) * dh ** -0.5
            scores = scores.masked_fill(~full_keep(mask, window)[:, None], float("-inf"))
            out = torch.matmul(torch.softmax(scores, dim=-1), vh).transpose(1, 2)
        return out * mask[:, :, None, None]
    if window is None or t <= 3 * window + 1:
        key = ("full", window)
        if key not in plan:
            plan[key] = full_keep(mask, window)[:, None]  # [B, 1, T, T] bool
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=plan[key])
        return out.transpose(1, 2) * mask[:, :, None, None]
    c = max(window, 8)
    kw = c + 2 * window
    n = -(-t // c)
    tp = n * c
    key = ("chunks", window)
    if key not in plan:
        _, _, keep = chunk_plan(t, window, c, mask)  # keep [B, n, c, kw]
        # a boolean mask: SDPA takes it as is (an additive float mask cost ~40% more on a CPU,
        # building it and reading it)
        plan[key] = keep.reshape(b * n, 1, c, kw)
    attn_mask = plan[key]
    if tp != t:
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, tp - t)) for x in (q, k, v))
    # views, not copies: query chunk j of the flattened batch is rows j c .. j c + c - 1, and its key
    # block is rows j c - w .. j c + c + w - 1 of the keys flattened over the batch with w guard rows
    # at either end (a block reaching into a neighbouring sample reads only keys the mask drops);
    # unfold's backward adds the overlapping gradients natively
    qc = q.reshape(b * n, c, h, dh).transpose(1, 2)  # [B n, H, c, dh]

    def key_blocks(x: torch.Tensor) -> torch.Tensor:
        flat = F.pad(x.reshape(b * tp, h, dh), (0, 0, 0, 0, window, window))
        return flat.unfold(0, kw, c).transpose(-1, -2)  # [B n, H, kw, dh]

    out = F.scaled_dot_product_attention(qc, key_blocks(k), key_blocks(v), attn_mask=attn_mask)
    out = out.transpose(1, 2).reshape(b, tp, h, dh)[:, :t]
    return out * mask[:, :, None, None]


class WindowSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, window: int | None, attention_act: str | None = None,
                 kernel: str = "sdpa", gdpa_impl: str = "auto", scale_position: str = "post"):
        super().__init__()
        self.d, self.h, self.window = d, heads, window
        self.attention_act, self.kernel = attention_act, kernel
        self.gdpa_impl, self.scale_position = gdpa_impl, scale_position
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, s: torch.Tensor, mask: torch.Tensor, rot: tuple[torch.Tensor, torch.Tensor] | None,
                maxlen: int | torch.Tensor, plan: dict | None = None) -> torch.Tensor:
        """`rot`: `rote.full_tables` `(cos, sin)` `[B|1, T, H, d_h]` or None; `plan`: mask cache."""
        if isinstance(mask, Packed):
            return self._packed(s, mask, rot, maxlen, plan if plan is not None else {})
        b, t, d = s.shape
        h, dh = self.h, d // self.h
        q, k, v = self.qkv(self.ln(s)).view(b, t, 3, h, dh).unbind(2)  # [B, T, H, dh]
        if rot is not None:
            q, k = rotate(q, *rot).to(v.dtype), rotate(k, *rot).to(v.dtype)  # fp32 tables under autocast
        return s + self.out(self._attend(q, k, v, mask, maxlen, plan).reshape(b, t, d))

    def _attend(self, q, k, v, mask: torch.Tensor, maxlen, plan: dict) -> torch.Tensor:
        """Padded `q, k, v [B, T, H, d_h]`: softmax windows, or GDPA's self-attention mode."""
        if self.attention_act is None:
            return softmax_window_attention(q, k, v, mask, self.window, self.kernel, plan)
        span = torch.as_tensor(maxlen)
        if self.window is not None:
            span = span.clamp(max=2 * self.window + 1)
        return gdpa_self_attention(q, k, v, mask, activations=[self.attention_act] * self.h,
                                   scale=1.0 / span.clamp(min=1).to(torch.float32),
                                   position=self.scale_position, window=self.window, impl=self.gdpa_impl)

    def _packed(self, s: torch.Tensor, p: Packed, rot, maxlen, plan: dict) -> torch.Tensor:
        """Packed tokens `s [N, d]`: softmax windows run packed (`packed.window_attention`); full
        attention and the GDPA mode run on a padded view."""
        n, d = s.shape
        h, dh = self.h, d // self.h
        q, k, v = self.qkv(self.ln(s)).view(n, 3, h, dh).unbind(1)  # [N, H, dh]
        if rot is not None:
            q, k = rotate(q, *rot).to(v.dtype), rotate(k, *rot).to(v.dtype)
        if self.attention_act is None and self.window is not None and self.kernel == "sdpa":
            o = packed_window_attention(q, k, v, p, self.window, plan)
        else:
            o = from_padded(self._attend(*(to_padded(x, p) for x in (q, k, v)), padded_mask(p), maxlen, {}), p)
        return s + self.out(o.reshape(n, d))

    @staticmethod
    def flops(length, d: int, window: int | None):
        """QKV and output projections + `4 T min(T, 2w + 1) d` (docs/models.md 4)."""
        keys = length if window is None else torch.clamp(torch.as_tensor(length), max=2 * window + 1)
        return 2 * 3 * length * d * d + 2 * length * d * d + attention_flops(length, keys, d)
