"""Wukong backend: the math (optimized FM, residual), padding invariance, gradients, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from backend_utils import (assert_one_line_error, assert_presets_span_flops, logits_plain_and_padded, make_batch,
                           make_schema, take_rows)
from kunbench.backends.registry import get_backend
from kunbench.backends.wukong import PRESETS, WukongConfig, WukongLayer, build, forward_flops
from kunbench.backends.modules import optimized_fm

TINY = PRESETS["tiny"]


def test_optimized_fm_equals_long_way():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 6, generator=g, dtype=torch.float64)
    y = torch.randn(11, 4, generator=g, dtype=torch.float64)
    # long way: the explicit pairwise interaction matrix P[b, i, j] = <x_i, x_j>, then P @ Y
    p = torch.zeros(3, 11, 11, dtype=torch.float64)
    for b in range(3):
        for i in range(11):
            for j in range(11):
                p[b, i, j] = (x[b, i] * x[b, j]).sum()
    want = torch.einsum("bij,jk->bik", p, y)
    assert torch.allclose(optimized_fm(x, y), want, rtol=1e-10, atol=1e-10)


def test_layer_matches_reference_formula():
    torch.manual_seed(0)
    layer = WukongLayer(n_in=10, d=6, n_F=3, n_L=4, k=5, mlp_hidden=(16,), act="relu").double()
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    fm = torch.bmm(torch.bmm(x, x.transpose(1, 2)), layer.y.expand(2, -1, -1))  # X X^T Y
    fmb = layer.fm_mlp(layer.fm_norm(fm.flatten(1))).view(2, 3, 6)
    lcb = torch.einsum("ln,bnd->bld", layer.lcb.weight, x)
    res = torch.einsum("on,bnd->bod", layer.residual.weight, x)
    want = layer.norm(torch.cat([fmb, lcb], 1) + res)
    assert torch.allclose(layer(x), want, atol=1e-10)
    # R is the identity when n == n_F + n_L
    same = WukongLayer(n_in=7, d=6, n_F=3, n_L=4, k=5, mlp_hidden=(), act="relu")
    assert same.residual is None


def test_forward_shape_dtype_and_backward_finite():
    schema = make_schema()
    model = build(TINY, schema)
    batch = make_batch(schema, 6)
    logits = model(batch)
    assert logits.shape == (6,) and logits.dtype == torch.float32
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert torch.isfinite(g).all(), name


def test_padding_changes_nothing():
    schema = make_schema()
    model = build(dataclasses.replace(TINY, history_k=12), schema).eval()
    batch = make_batch(schema, 7, seed=4, max_len=20)
    ref, padded = logits_plain_and_padded(model, batch, extra_pad=9)
    assert torch.allclose(ref, padded, atol=1e-6, rtol=0)
    # a row's logit does not depend on the other rows (so not on the batch's padded length)
    with torch.no_grad():
        sub = model(take_rows(batch, [2, 5]))
    assert torch.allclose(sub, ref[[2, 5]], atol=1e-6, rtol=0)


def test_events_older_than_last_k_change_nothing():
    schema = make_schema()
    model = build(dataclasses.replace(TINY, history_k=5), schema).eval()
    batch = make_batch(schema, 4, seed=5, min_len=8, max_len=12)
    with torch.no_grad():
        ref = model(batch)
        for s in batch.sequences.values():
            for r in range(4):
                lo, hi = int(s.offsets[r]), int(s.offsets[r + 1])
                s.item[lo:hi - 5] = 123  # everything before the last 5 events
                s.category[lo:hi - 5] = 3
        assert torch.allclose(model(batch), ref, atol=1e-6, rtol=0)
        s = batch.sequences["click"]
        s.item[int(s.offsets[1]) - 1] = 321  # the most recent click of row 0 matters
        out = model(batch)
    assert not torch.allclose(out[0], ref[0])
    assert torch.allclose(out[1:], ref[1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("sets, fragment", [
    ({"l": 0}, "l must be an integer >= 1"),
    ({"d": -4}, "d must be"),
    ({"k": 0}, "k must be"),
    ({"fmb_mlp": "64,0"}, "fmb_mlp"),
    ({"max_rows_per_field": 2**40}, "max_rows_per_field"),
    ({"act": "tanh"}, "act must be"),
    ({"fm_y": "dynamic"}, "fm_y must be"),
    ({"n_F": "many"}, "n_F must be an integer"),
    ({"nope": 1}, "unknown config key"),
])
def test_bad_config_is_one_line_error(sets, fragment):
    assert_one_line_error(lambda: get_backend("wukong").make_config("tiny", sets), fragment)


def test_presets_validate_and_span_flops():
    spec = assert_presets_span_flops("wukong", lambda cfg, schema, _batch: forward_flops(cfg, schema))
    cfg = spec.make_config(None, {"l": 3, "fmb_mlp": "32,32"})
    assert isinstance(cfg, WukongConfig) and cfg.l == 3 and cfg.fmb_mlp == (32, 32)


def test_attentive_y_and_output_bias():
    schema = make_schema()
    model = build(dataclasses.replace(TINY, fm_y="attentive"), schema)
    assert model.layers[0].y is None and model.layers[0].y_proj is not None
    batch = make_batch(schema, 4)
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
    assert model.layers[0].y_proj.weight.grad is not None
    model.set_output_bias(0.03)
    with torch.no_grad():
        model.head.net[-1].weight.zero_()
        assert torch.allclose(torch.sigmoid(model(batch)), torch.full((4,), 0.03))
