"""Packed-stream helpers (backends/packed.py): the padded views and the windowed attention must
equal their plain PyTorch definitions, values and gradients, for any row lengths."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kunbench.backends.packed import (_NeighbourBlocks, choose_groups, from_groups, from_padded, plan, to_groups,
                                      to_padded, window_attention)
from kunbench.ops.jagged import slice_maxima

LENGTHS = st.lists(st.integers(0, 23), min_size=1, max_size=6)


def _plan(lengths: list[int], extra: int = 0):
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    return plan(offsets, int(offsets[-1]), max(lengths) + extra)


@settings(max_examples=40, deadline=None)
@given(lengths=LENGTHS, extra=st.integers(0, 3))
def test_padded_views_and_their_gradients_equal_index_put_and_index(lengths, extra):
    p = _plan(lengths, extra)
    n, t = p.row.shape[0], max(p.longest, 1)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    padded = to_padded(x, p)
    ref = torch.zeros(len(lengths), t, 2, 3, dtype=torch.float64).index_put((p.row, p.pos), x)
    assert torch.equal(padded, ref)
    w = torch.randn(padded.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad((padded * w).sum(), x)
    assert torch.equal(gx, w[p.row, p.pos])

    y = torch.randn(len(lengths), t, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    back = from_padded(y, p)
    assert torch.equal(back, y[p.row, p.pos])
    u = torch.randn(back.shape, generator=g, dtype=torch.float64)
    (gy,) = torch.autograd.grad((back * u).sum(), y)
    assert torch.equal(gy, torch.zeros_like(y).index_put((p.row, p.pos), u))


def test_neighbour_blocks_gradient_is_unfolds():
    c, n = 4, 5
    x = torch.randn((n + 2) * c, 2, 3, dtype=torch.float64, requires_grad=True)
    blocks = _NeighbourBlocks.apply(x, c)
    ref = x.unfold(0, 3 * c, c).transpose(-1, -2)  # [n, H, 3c, dh]
    assert torch.equal(blocks, ref)
    w = torch.randn(blocks.shape, dtype=torch.float64)
    (got,) = torch.autograd.grad((blocks * w).sum(), x)
    (want,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: _NeighbourBlocks.apply(t, c), (x,))


def _reference(q, k, v, lengths, window):
    """Per row, dense softmax attention under the band `|i - j| <= w`."""
    outs, start = [], 0
    for length in lengths:
        sl = slice(start, start + length)
        qh, kh, vh = (x[sl].transpose(0, 1) for x in (q, k, v))  # [H, L, dh]
        i = torch.arange(length)
        band = (i[:, None] - i[None, :]).abs() <= window
        outs.append(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=band).transpose(0, 1))
        start += length
    return torch.cat(outs) if outs else q.new_zeros(q.shape)


@settings(max_examples=30, deadline=None)
@given(lengths=LENGTHS, window=st.sampled_from([1, 3, 8, 11]))
def test_window_attention_equals_per_row_banded_softmax(lengths, window):
    p = _plan(lengths)
    n = p.row.shape[0]
    g = torch.Generator().manual_seed(n + window)
    q, k, v = (torch.randn(n, 2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    got = window_attention(q, k, v, p, window, {})
    want = _reference(q, k, v, lengths, window)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if n:
        w = torch.randn(got.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((got * w).sum(), (q, k, v))
        refs = torch.autograd.grad((want * w).sum(), (q, k, v))
        for a, b in zip(grads, refs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ---- row groups -----------------------------------------------------------------------------------
GROUP_LENGTHS = st.lists(st.integers(0, 40), min_size=1, max_size=24)


def _grouped_plan(lengths: list[int], slack: int = 0):
    """A plan whose slices come from `slice_maxima`, each raised by `slack` (an upper bound)."""
    p = _plan(lengths)
    p.slices = tuple(w + slack for w in slice_maxima(torch.tensor(lengths)).maxima)
    return p


@settings(max_examples=60, deadline=None)
@given(lengths=GROUP_LENGTHS, max_groups=st.integers(1, 5), slack=st.integers(0, 3))
def test_groups_cover_every_row_once_each_padded_to_fit(lengths, max_groups, slack):
    p = _grouped_plan(lengths, slack)
    bounds = choose_groups(p.slices, p.batch, p.longest, max_groups)
    assert 1 <= len(bounds) <= max(max_groups, 1)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, no overlap
    ordered = sorted(lengths)
    for start, end, width in bounds:
        assert start < end and width >= max(1, ordered[end - 1])  # every row fits its group
    area = sum((end - start) * width for start, end, width in bounds)
    assert area <= len(lengths) * max(p.longest, 1)  # never more padding than one view
    assert choose_groups(p.slices, p.batch, p.longest, max_groups) == bounds  # host ints only: deterministic


def test_groups_cut_a_long_tail_and_leave_even_lengths_alone():
    tail = [10] * 56 + [100] * 8  # one long eighth: two groups pad 56x10 + 8x100, not 64x100
    p = _grouped_plan(tail)
    assert choose_groups(p.slices, p.batch, p.longest, 4) == ((0, 56, 10), (56, 64, 100))
    even = _grouped_plan([30] * 63 + [29])
    assert even.groups(4, 1) is None  # nothing to save: one padded view
    assert _plan(tail).groups(4, 1) is None  # no slices carried: one padded view
    assert p.groups(4, 1 << 18) is not None  # wide tokens: any saving pays
    # the second group saves 56 x 90 slots: too few elements to pay for its calls at 16 features
    assert p.groups(4, 16) is None
    assert choose_groups(p.slices, p.batch, p.longest, 4, min_saving=56 * 90 - 1) == ((0, 56, 10), (56, 64, 100))
    assert choose_groups(p.slices, p.batch, p.longest, 4, min_saving=56 * 90) == ((0, 64, 100),)


@settings(max_examples=40, deadline=None)
@given(lengths=GROUP_LENGTHS, slack=st.integers(0, 3))
def test_grouped_views_and_their_gradients_equal_the_padded_ones(lengths, slack):
    p = _grouped_plan(lengths, slack)
    groups = p.groups(3, 1 << 18)
    if groups is None:
        return
    n = p.row.shape[0]
    g = torch.Generator().manual_seed(n + slack)
    x = torch.randn(n, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    padded = to_padded(x, p)  # [B, T, 2, 3]
    parts = to_groups(x, groups)
    for (start, end, width), part, mask, rows in zip(groups.bounds, parts, groups.masks,
                                                      groups.rows(torch.arange(p.batch))):
        assert part.shape[:2] == (end - start, width)
        real = padded[rows][:, :width]
        assert torch.equal(part, real)  # the same tokens, zeros after each row's end
        assert torch.equal(mask, torch.arange(width)[None] < p.lengths[rows][:, None])
        assert torch.equal(padded[rows][:, width:], torch.zeros_like(padded[rows][:, width:]))
    back = from_groups([t * 2 for t in parts], groups)
    assert torch.equal(back, x * 2)
    assert torch.autograd.gradcheck(lambda t: from_groups([u.sin() for u in to_groups(t, groups)], groups), (x,))
    y = torch.randn(p.batch, 5, generator=g, dtype=torch.float64)
    assert torch.equal(groups.unrows(groups.rows(y)), y)
