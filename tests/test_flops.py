"""Analytic forward FLOPs (docs/models.md section 4) vs torch.utils.flop_counter.FlopCounterMode.

The comparison is honest about padding: the counter sees padded tensors, so it is run either on a
batch whose rows all have the same (true) length, where padded == true, or on one-example
batches (no padding at all) and compared row by row with the analytic count of varying lengths.
Both backends run their unfused reference path (InterFormer `attention = "naive"`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from backend_utils import make_batch, make_schema, take_rows
from kunbench.backends import interformer, wukong

TOL = 0.02


def counted(model, batch) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(batch)
    return float(counter.get_total_flops())


CONFIGS = [
    ("wukong", wukong, wukong.PRESETS["tiny"]),
    ("wukong", wukong, dataclasses.replace(wukong.PRESETS["tiny"], l=3, n_F=3, n_L=5, k=6, fmb_mlp=(20, 12))),
    ("wukong", wukong, dataclasses.replace(wukong.PRESETS["tiny"], l=2, fm_y="attentive")),
    ("interformer", interformer, dataclasses.replace(interformer.PRESETS["tiny"], attention="naive")),
    ("interformer", interformer, dataclasses.replace(interformer.PRESETS["tiny"], attention="naive", n_layers=2,
                                                     dhen_layers=2, seq_max_len=24, recent_k=3,
                                                     token_mlp_hidden=5, n_dense_tokens=2)),
]


@pytest.mark.parametrize("name, module, config", CONFIGS)
def test_equal_length_batch(name, module, config):
    schema = make_schema(n_multihot=2)
    model = module.build(config, schema)
    b = 4
    batch = make_batch(schema, b, lengths={"impression": [9] * b, "click": [5] * b, "conversion": [3] * b})
    analytic = module.flops_per_example(config, schema, batch)
    assert analytic.shape == (b,) and analytic.dtype == torch.float64
    assert torch.all(analytic == analytic[0])
    total = counted(model, batch)
    assert abs(float(analytic.sum()) - total) <= TOL * total, (name, float(analytic.sum()), total)


@pytest.mark.parametrize("name, module, config", CONFIGS)
def test_varying_lengths_one_example_at_a_time(name, module, config):
    schema = make_schema()
    model = module.build(config, schema)
    # lengths include empty histories and rows past InterFormer's seq_max_len
    lengths = {"impression": [0, 4, 30, 12], "click": [0, 1, 10, 12], "conversion": [0, 0, 7, 12]}
    batch = make_batch(schema, 4, lengths=lengths)
    singles = []
    for r in range(4):
        one = take_rows(batch, [r])
        analytic = float(module.flops_per_example(config, schema, one)[0])
        total = counted(model, one)
        assert abs(analytic - total) <= TOL * total, (name, r, analytic, total)
        singles.append(analytic)
    per_row = module.flops_per_example(config, schema, batch).tolist()
    if name == "interformer":
        assert len(set(per_row)) >= 3  # cost follows each row's own (capped) length
        # the batch-shared PMA seed projection is split over the batch instead of paid per row
        shared = (config.n_layers + 1) * 2 * config.pma_seeds * config.d ** 2
        assert per_row == pytest.approx([x - shared * 3 / 4 for x in singles], rel=1e-12)
    else:
        assert per_row == pytest.approx(singles, rel=1e-12)


def test_interformer_flops_grow_quadratically_with_length():
    cfg = interformer.PRESETS["small"]
    schema = make_schema(n_cat=90)
    lens = [0, 50, 100, 200]
    batch = make_batch(schema, 4, lengths={"impression": lens, "click": [0] * 4, "conversion": [0] * 4})
    f = interformer.flops_per_example(cfg, schema, batch).tolist()
    d2, d3 = f[2] - f[1], f[3] - f[2]  # steps of 50 and 100 events
    assert d3 > 2 * d2  # superlinear: self-attention is L^2
