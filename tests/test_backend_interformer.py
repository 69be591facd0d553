"""InterFormer backend: naive PFFN vs a loop, masked PMA/MHA vs unpadded, padding invariance,
gradients, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from backend_utils import (assert_one_line_error, assert_presets_span_flops, logits_plain_and_padded, make_batch,
                           make_schema, take_rows)
from kunbench.backends.interformer import PRESETS, InterFormerConfig, build, flops_per_example
from kunbench.backends.modules import PMA, NaivePFFN, RopeMHA, apply_rope, rope_tables
from kunbench.backends.registry import get_backend

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("position", ["post", "pre"])
def test_naive_pffn_equals_per_example_per_head_loop(position):
    torch.manual_seed(0)
    b, t, d, h, f, n_in = 3, 7, 8, 2, 5, 12
    pffn = NaivePFFN(n_in, d, h, f, hidden=16, act="gelu", scale_position=position).double()
    x_sum = torch.randn(b, n_in, dtype=torch.float64)
    s = torch.randn(b, t, d, dtype=torch.float64)
    scale = 1.0 / 9
    out = pffn(x_sum, s, scale)
    dh = d // h
    want = torch.zeros_like(s)
    for i in range(b):
        kv = pffn.weight_gen(x_sum[i:i + 1])[0]  # [2 F d]
        k = kv[: f * d].view(f, h, dh)
        v = kv[f * d:].view(f, h, dh)
        for j in range(h):
            sh = s[i, :, j * dh:(j + 1) * dh]  # [T, dh]
            logits = sh @ k[:, j].T  # [T, F]
            a = F.gelu(logits) * scale if position == "post" else F.gelu(logits * scale)
            want[i, :, j * dh:(j + 1) * dh] = a @ v[:, j]
    assert torch.allclose(out, want, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_masked_pma_and_rope_mha_equal_unpadded(fused):
    torch.manual_seed(1)
    d, h = 8, 2
    pma = PMA(d, h, n_seeds=3, fused=fused)
    mha = RopeMHA(d, h, fused=fused)
    s = torch.randn(2, 9, d)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :9] = True
    s_garbage = torch.where(mask[..., None], s, torch.randn_like(s) * 1e3)
    with torch.no_grad():
        p_pad = pma(s_garbage, mask)
        m_pad = mha(s_garbage, mask)
        p_ref = pma(s[:1, :4], torch.ones(1, 4, dtype=torch.bool))
        m_ref = mha(s[:1, :4], torch.ones(1, 4, dtype=torch.bool))
    assert torch.allclose(p_pad[0], p_ref[0], atol=1e-5)
    assert torch.allclose(m_pad[0, :4], m_ref[0], atol=1e-5)


def test_rope_is_relative():
    # q_i . k_j after RoPE depends only on i - j
    dh = 8
    q, k = torch.randn(1, 1, 1, dh).double(), torch.randn(1, 1, 1, dh).double()  # [B, L, H, dh]
    cos, sin = rope_tables(20, dh, "cpu", torch.float64)
    dots = [(apply_rope(q, cos[i:i + 1], sin[i:i + 1]) * apply_rope(k, cos[j:j + 1], sin[j:j + 1])).sum()
            for i, j in [(3, 1), (10, 8), (19, 17)]]
    assert torch.allclose(torch.stack(dots), dots[0].expand(3), atol=1e-10)
    assert not torch.allclose(dots[0], (q * k).sum())  # and it does rotate
    # per-row positions give the same rotation as shared ones
    x = torch.randn(2, 5, 3, dh).double()
    pos = torch.arange(5).expand(2, 5)
    c2, s2 = rope_tables(5, dh, "cpu", torch.float64, positions=pos)
    assert torch.allclose(apply_rope(x, c2, s2), apply_rope(x, cos[:5], sin[:5]))


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_padding_changes_nothing(attention):
    schema = make_schema()
    model = build(dataclasses.replace(TINY, attention=attention, seq_max_len=40), schema).eval()
    batch = make_batch(schema, 6, seed=7, max_len=20)
    ref, padded = logits_plain_and_padded(model, batch, extra_pad=11)
    assert torch.allclose(ref, padded, atol=1e-5, rtol=0)


def test_rows_independent_with_fixed_pffn_scale():
    # with pffn_scale = t_max no quantity depends on the batch, so a row's logit does not depend
    # on the other rows or on the batch's padded length
    schema = make_schema()
    model = build(dataclasses.replace(TINY, pffn_scale="t_max"), schema).eval()
    batch = make_batch(schema, 6, seed=8, max_len=30)
    with torch.no_grad():
        ref = model(batch)
        sub = model(take_rows(batch, [0, 3]))
    assert torch.allclose(sub, ref[[0, 3]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode,expected", [("n_kv", 1 / 8), ("none", 1.0), ("t_max", 1 / (4 + 64)),
                                           ("batch_maxlen", 1 / (4 + 30))])
def test_pffn_scale_modes(mode, expected):
    from kunbench.backends.interformer import pffn_scale

    assert pffn_scale(dataclasses.replace(TINY, pffn_scale=mode), 30) == pytest.approx(expected)
    # batch-independent modes keep rows independent of each other
    if mode in ("n_kv", "none"):
        schema = make_schema()
        model = build(dataclasses.replace(TINY, pffn_scale=mode), schema).eval()
        batch = make_batch(schema, 5, seed=2, max_len=25)
        with torch.no_grad():
            assert torch.allclose(model(take_rows(batch, [0, 4])), model(batch)[[0, 4]], atol=1e-5, rtol=0)


def test_naive_and_sdpa_agree():
    schema = make_schema()
    torch.manual_seed(3)
    naive = build(dataclasses.replace(TINY, attention="naive"), schema).eval()
    sdpa = build(dataclasses.replace(TINY, attention="sdpa"), schema).eval()
    sdpa.load_state_dict(naive.state_dict())
    batch = make_batch(schema, 5, seed=9)
    with torch.no_grad():
        assert torch.allclose(naive(batch), sdpa(batch), atol=1e-5)


def test_events_beyond_t_max_change_nothing():
    schema = make_schema()
    model = build(dataclasses.replace(TINY, seq_max_len=10), schema).eval()
    batch = make_batch(schema, 3, seed=10, min_len=10, max_len=15)
    with torch.no_grad():
        ref = model(batch)
        # change each row's globally oldest event: at least 29 events are more recent than it
        for r in range(3):
            oldest = min((int(s.ts[s.offsets[r]]), et) for et, s in batch.sequences.items())[1]
            s = batch.sequences[oldest]
            s.item[s.offsets[r]] = 499
            s.category[s.offsets[r]] = 19
        assert torch.allclose(model(batch), ref, atol=1e-6, rtol=0)
        # the most recent event matters
        s = batch.sequences["impression"]
        last = int(s.offsets[1]) - 1
        s.ts[last] = batch.request_ts[0] - 1
        s.item[last] = 498
        out = model(batch)
    assert not torch.allclose(out[0], ref[0])


def test_forward_backward_finite_and_empty_histories():
    schema = make_schema()
    model = build(TINY, schema)
    lengths = {et: [0, 3, 0, 25] for et in schema.event_types}
    lengths["click"] = [0, 0, 1, 2]
    batch = make_batch(schema, 4, lengths=lengths)
    logits = model(batch)
    assert logits.shape == (4,) and logits.dtype == torch.float32
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert torch.isfinite(g).all(), name


def test_recency_embedding_reaches_the_logits_and_is_switchable():
    # the embedding is live (perturbing it moves the logits); position_embedding=none drops it
    schema = make_schema()
    cfg = dataclasses.replace(TINY, pffn_scale="t_max")
    model = build(cfg, schema).eval()
    batch = make_batch(schema, 4, seed=5, max_len=20)
    with torch.no_grad():
        ref = model(batch)
        model.recency.add_(torch.randn_like(model.recency))
        assert not torch.allclose(model(batch), ref, atol=1e-4)
    off = build(dataclasses.replace(cfg, position_embedding="none"), schema)
    assert off.recency is None and sum(p.numel() for p in off.parameters()) < sum(
        p.numel() for p in model.parameters())


@pytest.mark.parametrize("sets, fragment", [
    ({"n_heads": 3}, "divisible by n_heads"),
    ({"d": 6, "n_heads": 2}, "must be even for RoPE"),
    ({"pffn_scale": "global"}, "pffn_scale must be"),
    ({"attention": "flash"}, "attention must be"),
    ({"seq_max_len": 0}, "seq_max_len must be"),
    ({"head_mlp": "a,b"}, "head_mlp"),
    ({"recent_k": -1}, "recent_k must be"),
    ({"position_embedding": "absolute"}, "position_embedding must be"),
])
def test_bad_config_is_one_line_error(sets, fragment):
    assert_one_line_error(lambda: get_backend("interformer").make_config("tiny", sets), fragment)


def test_presets_validate_and_span_flops():
    spec = assert_presets_span_flops("interformer", lambda cfg, schema, batch: flops_per_example(cfg, schema, batch)[0],
                                     seq_lengths=[300, 50])
    assert isinstance(spec.make_config(None), InterFormerConfig)
