"""The GDPA reference against per-example, per-head loops written the long way."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from kunbench.kernels import ACTIVATIONS, gdpa, gdpa_flops
from kunbench.kernels.gdpa_reference import activation_fn
from kunbench.ops.jagged import lengths_to_offsets


def randn(*shape, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def offsets_of(lengths):
    return lengths_to_offsets(torch.tensor(lengths, dtype=torch.int64))


def loop_gdpa(q, k, v, q_off, kv_off, acts, scale, pos, window=None, broadcast=False):
    """Example by example, head by head, key by key: the definition with nothing fused."""
    batch = (kv_off.numel() - 1) if kv_off is not None else k.shape[0]
    outs = []
    for b in range(batch):
        qb = q if broadcast else q[q_off[b]:q_off[b + 1]]
        kb = k[kv_off[b]:kv_off[b + 1]] if kv_off is not None else k[b]
        vb = v[kv_off[b]:kv_off[b + 1]] if kv_off is not None else v[b]
        ob = torch.zeros_like(qb)
        for h, name in enumerate(acts):
            act = activation_fn(name)
            for i in range(qb.shape[0]):
                for j in range(kb.shape[0]):
                    if window is not None and abs(i - j) > window:
                        continue
                    sc = torch.dot(qb[i, h], kb[j, h])
                    w = act(sc * scale) if pos == "pre" else act(sc) * scale
                    ob[i, h] += w * vb[j, h]
        outs.append(ob)
    return torch.stack(outs) if broadcast else torch.cat(outs) if outs else q[:0]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("position", ["pre", "post"])
def test_pffn_mode_matches_loop(activation, position):
    torch.manual_seed(0)
    lengths, heads, dh, f = [3, 0, 1, 5], 2, 4, 3
    q = randn(sum(lengths), heads, dh)
    k, v = randn(len(lengths), f, heads, dh), randn(len(lengths), f, heads, dh)
    off = offsets_of(lengths)
    out = gdpa(q, k, v, q_offsets=off, activation=activation, scale_position=position)
    ref = loop_gdpa(q, k, v, off, None, [activation] * heads, 1 / 5, position)
    torch.testing.assert_close(out, ref)


def test_per_head_activations_and_explicit_scale():
    torch.manual_seed(1)
    lengths, heads, dh, f = [2, 4], 3, 5, 2
    q = randn(sum(lengths), heads, dh)
    k, v = randn(2, f, heads, dh), randn(2, f, heads, dh)
    acts = ["gelu", "silu", "relu"]
    out = gdpa(q, k, v, q_offsets=offsets_of(lengths), activation=acts, scale=0.3)
    torch.testing.assert_close(out, loop_gdpa(q, k, v, offsets_of(lengths), None, acts, 0.3, "post"))


def test_seed_pooling_broadcast_q():
    torch.manual_seed(2)
    kv_lengths, heads, dh, seeds = [4, 0, 1], 2, 3, 5
    q = randn(seeds, heads, dh)
    k, v = randn(sum(kv_lengths), heads, dh), randn(sum(kv_lengths), heads, dh)
    off = offsets_of(kv_lengths)
    out = gdpa(q, k, v, kv_offsets=off, broadcast_q=True, activation="silu")
    assert out.shape == (3, seeds, heads, dh)
    torch.testing.assert_close(out, loop_gdpa(q, k, v, None, off, ["silu"] * heads, 1 / seeds, "post",
                                              broadcast=True))
    assert torch.count_nonzero(out[1]) == 0  # an empty sequence pools to zero


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4), window=st.integers(0, 4),
       activation=st.sampled_from(ACTIVATIONS))
def test_windowed_self_attention_matches_band_mask_loop(lengths, window, activation):
    torch.manual_seed(sum(lengths) + window)
    heads, dh = 2, 3
    n = sum(lengths)
    q, k, v = (randn(n, heads, dh) for _ in range(3))
    off = offsets_of(lengths)
    out = gdpa(q, k, v, q_offsets=off, kv_offsets=off, window=window, activation=activation)
    scale = 1 / max(max(lengths), 1)
    ref = loop_gdpa(q, k, v, off, off, [activation] * heads, scale, "post", window=window)
    torch.testing.assert_close(out, ref)


def test_flops_formula_matches_flop_counter_banded_and_full():
    torch.manual_seed(3)
    b, t, heads, dh, window = 3, 24, 2, 8, 3
    q, k, v = (randn(b * t, heads, dh) for _ in range(3))
    off = offsets_of([t] * b)
    lengths = torch.full((b,), t)
    for w in (window, None):
        with FlopCounterMode(display=False) as counter:
            gdpa(q, k, v, q_offsets=off, kv_offsets=off, window=w)
        expected = float(gdpa_flops(lengths, lengths, heads, dh, window=w).sum())
        assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)
    kd, vd = randn(b, 16, heads, dh), randn(b, 16, heads, dh)
    with FlopCounterMode(display=False) as counter:
        gdpa(q, kd, vd, q_offsets=off)
    assert counter.get_total_flops() == pytest.approx(
        float(gdpa_flops(lengths, torch.full((b,), 16), heads, dh).sum()), rel=0.02)


def test_gradients_flow_and_match_loop():
    torch.manual_seed(4)
    lengths, heads, dh, f = [2, 3], 1, 2, 2
    q = randn(5, heads, dh, requires_grad=True)
    k = randn(2, f, heads, dh, requires_grad=True)
    v = randn(2, f, heads, dh, requires_grad=True)
    off = offsets_of(lengths)
    g1 = torch.autograd.grad(gdpa(q, k, v, q_offsets=off).square().sum(), (q, k, v))
    g2 = torch.autograd.grad(loop_gdpa(q, k, v, off, None, ["gelu"], 1 / 3, "post").square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(window=-1), "window"),
    (dict(activation="tanh"), "tanh"),
    (dict(activation=["gelu"]), "activations"),
])
def test_bad_arguments_are_named(kwargs, needle):
    q = randn(3, 2, 4)
    off = offsets_of([1, 2])
    with pytest.raises(ValueError, match=needle):
        gdpa(q, q, q, q_offsets=off, kv_offsets=off, **kwargs)


def test_offsets_that_do_not_cover_q_are_rejected():
    q = randn(3, 1, 2)
    with pytest.raises(ValueError, match="q_offsets"):
        gdpa(q, randn(2, 2, 1, 2), randn(2, 2, 1, 2), q_offsets=torch.tensor([0, 1, 2]))
