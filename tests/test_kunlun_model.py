"""Kunlun model: CompSkip runs exactly the modules docs/models.md 3.5 names, event personalization off
means one config, padding changes nothing, analytic FLOPs == FlopCounterMode on the reference path
for every switch, FLOP deltas point where the paper's do, every switch trains a step, config/--set."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from backend_utils import (assert_one_line_error, assert_presets_span_flops, make_batch, make_schema,
                           one_intra_op_thread, take_rows)
from kunbench.backends.gdpa_pffn import GDPAPFFNBlock
from kunbench.backends.hsp import HSP, PMASummary
from kunbench.backends.kunlun import (PRESETS, KunlunConfig, StreamConfig, build, flops_breakdown,
                                      flops_per_example)
from kunbench.backends.modules import Gate, TokenLinear
from kunbench.backends import packed as packed_mod
from kunbench.backends.packed import Packed
from kunbench.backends.mowe import MixtureOfWukongExperts
from kunbench.backends.registry import get_backend
from kunbench.backends.window_attention import WindowSelfAttention

TINY = PRESETS["tiny"]
TOL = 0.02

# every switch flipped from the default, plus a few knobs that change the math path
SWITCHES = [
    {},
    {"rote": "rope"},
    {"rote": "none"},
    {"gdpa": "naive"},
    {"summary": "pma"},
    {"sumkron": "off"},
    {"attention": "full"},
    {"compskip": "off"},
    {"event_personalization": "off"},
    {"experts": 1},
    {"attention_act": "silu"},
    {"seed_attention": "gdpa"},
    {"gdpa_scale_position": "pre", "gdpa_activations": "identity,gelu_tanh"},
]
IDS = [",".join(f"{k}={v}" for k, v in s.items()) or "default" for s in SWITCHES]


def tiny(sets=None, preset="tiny"):
    return get_backend("kunlun").make_config(preset, sets or {})


def reference(cfg: KunlunConfig) -> KunlunConfig:
    """The unfused path FlopCounterMode counts exactly (naive GDPA, explicit-matmul softmax, padded
    streams: the packed layout pools with index_add, which the counter does not see)."""
    return dataclasses.replace(cfg, gdpa="naive", attention_kernel="naive", sequence_layout="padded")


def equal_lengths(b):
    # impression past its 2w+1 = 5 and its max_len 16, click past 2w+1 = 9, conversion below it
    return {"impression": [20] * b, "click": [12] * b, "conversion": [6] * b}


def counted(model, batch) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(batch)
    return float(counter.get_total_flops())



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids contention on a busy machine (60x here)."""
    with one_intra_op_thread():
        yield

# ---- CompSkip -----------------------------------------------------------------------------------
def record_calls(model):
    calls = []
    kinds = {GDPAPFFNBlock: "pffn", WindowSelfAttention: "attn", HSP: "summary", PMASummary: "summary",
             MixtureOfWukongExperts: "mowe"}
    for name, mod in model.named_modules():
        kind = kinds.get(type(mod))
        if kind is not None:
            mod.register_forward_hook(lambda m, i, o, name=name, kind=kind: calls.append((name, kind)))
    return calls


def by_layer(calls, stream_index):
    out = {}
    for name, kind in calls:
        parts = name.split(".")
        if parts[0] == "streams" and parts[1] == str(stream_index):
            layer = "final" if parts[2] == "final_summary" else int(parts[3])
            out.setdefault(layer, []).append(kind)
    return out


@pytest.mark.parametrize("summary", ["hsp", "pma"])
def test_compskip_even_and_odd_layers_run_exactly_their_modules(summary):
    schema = make_schema()
    cfg = tiny({"n_layers": 4, "stream.layers": 4, "streams.click.layers": 4, "streams.conversion.layers": 3,
                "streams.impression.layers": 1, "summary": summary})
    model = build(cfg, schema)
    calls = record_calls(model)
    with torch.no_grad():
        model(make_batch(schema, 4, seed=1))
    # global interaction every layer
    assert [k for _, k in calls if k == "mowe"] == ["mowe"] * 4
    click = by_layer(calls, schema.event_types.index("click"))
    assert click == {0: ["pffn", "summary"], 1: ["attn"], 2: ["pffn", "summary"], 3: ["attn"],
                     "final": ["summary"]}  # the head's refresh after a reusing last layer
    conversion = by_layer(calls, schema.event_types.index("conversion"))
    assert conversion == {0: ["pffn", "summary"], 1: ["attn"], 2: ["pffn", "summary"]}
    impression = by_layer(calls, schema.event_types.index("impression"))
    assert impression == {0: ["pffn", "summary"]}

    off = build(dataclasses.replace(cfg, compskip="off"), schema)
    calls = record_calls(off)
    with torch.no_grad():
        off(make_batch(schema, 4, seed=1))
    click = by_layer(calls, schema.event_types.index("click"))
    assert click == {layer: ["pffn", "attn", "summary"] for layer in range(4)}


def test_compskip_on_odd_layer_reuses_the_last_summary():
    schema = make_schema()
    model = build(tiny(), schema).eval()
    seen = []
    model.mowe[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.mowe[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(make_batch(schema, 3, seed=2))
    n_x = model.input_layer.n_context_tokens
    n_w = TINY.n_F + TINY.n_L
    first, second = seen  # layer 0, layer 1
    assert torch.equal(first[:, n_x:], second[:, n_w:])  # same summaries fed to both layers


# ---- event personalization ----------------------------------------------------------------------
def test_event_personalization_off_gives_every_stream_the_same_config():
    schema = make_schema()
    on = tiny()
    off = tiny({"event_personalization": "off"})
    cfgs_on = on.stream_configs(schema)
    assert len(set(cfgs_on.values())) > 1  # personalised: impressions smaller than clicks
    assert cfgs_on["impression"].max_len < cfgs_on["click"].max_len
    assert cfgs_on["impression"].d < cfgs_on["click"].d
    cfgs_off = off.stream_configs(schema)
    assert set(cfgs_off.values()) == {off.stream}
    model = build(off, schema)
    shapes = [[tuple(p.shape) for p in s.parameters()] for s in model.streams]
    assert all(sh == shapes[0] for sh in shapes)
    # an event type the config does not name uses the shared stream config
    assert on.stream_for("share") == on.stream


def test_streams_set_per_event_type():
    cfg = tiny({"streams.click.window": 7, "stream.max_len": 40, "streams.view.layers": 1})
    assert cfg.streams["click"].window == 7 and cfg.streams["click"].d == TINY.streams["click"].d
    assert cfg.stream.max_len == 40 and cfg.longest_stream_len == 40
    assert cfg.streams["view"] == dataclasses.replace(cfg.stream, layers=1)


# ---- padding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets", SWITCHES, ids=IDS)
def test_padding_changes_nothing(sets):
    schema = make_schema()
    model = build(tiny(sets), schema).eval()
    lengths = {"impression": [0, 3, 25, 9, 16], "click": [5, 0, 30, 2, 0], "conversion": [0, 0, 4, 7, 1]}
    batch = make_batch(schema, 5, seed=7, lengths=lengths)
    with torch.no_grad():
        ref = model(batch)
        model.input_layer.debug_extra_pad = 9
        model.input_layer.debug_pad_garbage = True
        padded = model(batch)
    assert torch.isfinite(ref).all()
    assert torch.allclose(ref, padded, atol=1e-5, rtol=0)


def test_rows_independent_with_fixed_gdpa_scale_and_events_beyond_max_len_ignored():
    schema = make_schema()
    model = build(tiny({"gdpa_scale": "t_max"}), schema).eval()
    batch = make_batch(schema, 6, seed=8, max_len=40)
    with torch.no_grad():
        ref = model(batch)
        assert torch.allclose(model(take_rows(batch, [1, 4])), ref[[1, 4]], atol=1e-5, rtol=0)
        # the oldest impression of a row with more than max_len = 16 impressions is never seen
        s = batch.sequences["impression"]
        r = int(torch.nonzero(s.lengths > 16)[0])
        s.item[s.offsets[r]] = 3
        s.category[s.offsets[r]] = 4
        assert torch.allclose(model(batch), ref, atol=1e-6, rtol=0)


def test_pffn_scale_n_kv_scales_only_the_pffn():
    # pffn_scale = n_kv: the PFFN uses 1/dff, seed pooling keeps 1/maxlen; with gdpa_scale = t_max
    # too, nothing depends on the batch
    schema = make_schema()
    torch.manual_seed(0)
    base = build(tiny({"gdpa_scale": "t_max"}), schema).eval()
    nkv = build(tiny({"gdpa_scale": "t_max", "pffn_scale": "n_kv"}), schema).eval()
    nkv.load_state_dict(base.state_dict())
    batch = make_batch(schema, 6, seed=4, max_len=30)
    with torch.no_grad():
        ref = nkv(batch)
        assert torch.allclose(nkv(take_rows(batch, [2, 5])), ref[[2, 5]], atol=1e-5, rtol=0)
        assert not torch.allclose(base(batch), ref, atol=1e-4)
    seen = []
    block = next(m for m in nkv.modules() if type(m).__name__ == "GDPAPFFNBlock")
    block.register_forward_hook(lambda mod, args, out: seen.append(args[3]))
    with torch.no_grad():
        nkv(batch)
    assert seen == [1.0 / nkv.config.dff]


# ---- FLOPs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets", SWITCHES, ids=IDS)
def test_flops_match_flop_counter_on_reference_path(sets):
    schema = make_schema(n_multihot=2)
    cfg = reference(tiny(sets))
    model = build(cfg, schema)
    b = 3
    batch = make_batch(schema, b, lengths=equal_lengths(b))
    analytic = flops_per_example(cfg, schema, batch)
    assert analytic.shape == (b,) and analytic.dtype == torch.float64
    total = counted(model, batch)
    assert abs(float(analytic.sum()) - total) <= TOL * total, (float(analytic.sum()), total)


def test_flops_follow_each_rows_length():
    schema = make_schema()
    cfg = reference(tiny())
    model = build(cfg, schema)
    lengths = {"impression": [0, 4, 30], "click": [0, 1, 10], "conversion": [0, 9, 7]}
    batch = make_batch(schema, 3, lengths=lengths)
    per_row = flops_per_example(cfg, schema, batch)
    assert len(set(per_row.tolist())) == 3
    for r in (1, 2):  # (row 0 has no events at all; the reference pads it to one slot)
        one = take_rows(batch, [r])
        total = counted(model, one)
        assert abs(float(per_row[r]) - total) <= TOL * total


def test_window_cuts_attention_flops_to_2w_plus_1_keys():
    schema = make_schema()
    b = 2
    batch = make_batch(schema, b, lengths=equal_lengths(b))
    win = tiny({"compskip": "off"})
    full = tiny({"compskip": "off", "attention": "full"})
    fw, ff = flops_breakdown(win, schema, batch), flops_breakdown(full, schema, batch)
    for et, t in (("impression", 16), ("click", 12), ("conversion", 6)):
        sc = win.streams[et]
        keys = min(t, 2 * sc.window + 1)
        want = sc.layers * 4 * t * (t - keys) * sc.d  # QK^T and PV over the cut keys
        assert float(ff[et][0] - fw[et][0]) == want
        if t > 2 * sc.window + 1:
            assert fw[et][0] < ff[et][0]
    # FlopCounterMode sees the same cut
    counts = [counted(build(reference(c), schema), batch) for c in (win, full)]
    analytic = [float(flops_per_example(c, schema, batch).sum()) for c in (win, full)]
    assert counts[1] - counts[0] == pytest.approx(analytic[1] - analytic[0], rel=TOL)


def test_compskip_removes_the_share_of_flops_the_skipped_modules_held():
    schema = make_schema()
    b = 2
    batch = make_batch(schema, b, lengths={"impression": [16] * b, "click": [30] * b, "conversion": [30] * b})
    sets = {"n_layers": 4, "stream.layers": 4, "streams.click.layers": 4, "streams.conversion.layers": 4,
            "streams.impression.layers": 4}
    on, off = tiny(sets), tiny({**sets, "compskip": "off"})
    f_on = flops_breakdown(on, schema, batch)
    f_off = flops_breakdown(off, schema, batch)
    # global interaction every layer either way; only X_sum (the K/V generators' input) is skipped
    # in the odd layers, where no GDPA PFFN runs
    n_w = on.n_F + on.n_L
    x_sum = TokenLinear.flops(n_w, on.n_sum, on.d) + Gate.flops(on.n_sum, on.d)
    assert float(f_off["global"][0] - f_on["global"][0]) == 2 * x_sum
    for et in schema.event_types:
        sc, t = on.streams[et], float(batch.sequences[et].lengths[0].clamp(max=on.streams[et].max_len))
        d = on.d
        pffn = GDPAPFFNBlock.flops(t, sc.d, on.dff, on.n_sum * d, on.kv_hidden)
        attn = float(WindowSelfAttention.flops(t, sc.d, sc.window))
        summ = HSP.flops(t, sc.d, d, sc.n_tok, on.seed_factor, on.sumkron_k, True)
        # off runs all three in 4 layers; on runs pffn + summary in 2 and attention in 2, + 1 final summary
        skipped = 2 * pffn + 2 * attn + 4 * summ - 3 * summ
        assert float(f_off[et][0] - f_on[et][0]) == pytest.approx(skipped)
        share = skipped / float(f_off[et][0])
        assert 0.35 < share < 0.65  # roughly half the sequence work, as the paper's -43%
    total_on, total_off = float(sum(f_on.values())[0]), float(sum(f_off.values())[0])
    assert total_on < total_off
    counts = [counted(build(reference(c), schema), batch) for c in (on, off)]
    assert counts[1] - counts[0] == pytest.approx(b * (total_off - total_on), rel=TOL)


# ---- every switch trains --------------------------------------------------------------------------
@pytest.mark.parametrize("sets", SWITCHES, ids=IDS)
def test_every_switch_trains_a_step_with_finite_grads(sets):
    torch.manual_seed(0)
    schema = make_schema()
    model = build(tiny(sets), schema)
    lengths = {"impression": [0, 3, 25, 9], "click": [0, 0, 30, 2], "conversion": [0, 0, 4, 7]}
    batch = make_batch(schema, 4, seed=3, lengths=lengths)
    opt = torch.optim.AdamW(model.dense_parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        logits = model(batch)
        assert logits.shape == (4,) and logits.dtype == torch.float32
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(g).all(), name
        opt.step()
        losses.append(float(loss.detach()))
    assert all(map(lambda x: x == x, losses))


def test_switches_change_the_model():
    schema = make_schema()
    base = build(tiny(), schema)
    n_base = sum(p.numel() for p in base.parameters())
    for sets in SWITCHES[1:]:
        cfg = tiny(sets)
        assert cfg != TINY or sets == {}
    assert sum(p.numel() for p in build(tiny({"sumkron": "off"}), schema).parameters()) > n_base
    assert sum(p.numel() for p in build(tiny({"experts": 1}), schema).parameters()) < n_base
    assert sum(p.numel() for p in build(tiny({"compskip": "off"}), schema).parameters()) > n_base


# ---- config ---------------------------------------------------------------------------------------
def test_set_values_parse():
    cfg = tiny({"compskip": "off", "sumkron": "false", "event_personalization": True, "experts": 3,
                "gdpa_activations": "gelu,relu", "attention_act": "silu", "rote": "none"})
    assert (cfg.compskip, cfg.sumkron, cfg.event_personalization) == ("off", "off", "on")
    assert cfg.experts == 3 and cfg.gdpa_activations == ("gelu", "relu") and cfg.attention_act == "silu"
    assert cfg.rote == "none"
    assert tiny({"attention_act": "none"}).attention_act is None
    assert cfg.activations_for(3) == ["gelu", "relu", "gelu"]


@pytest.mark.parametrize("sets, fragment", [
    ({"compskip": "maybe"}, "compskip must be on or off"),
    ({"rote": "alibi"}, "rote must be"),
    ({"gdpa": "cuda_graph"}, "gdpa must be"),
    ({"summary": "mean"}, "summary must be"),
    ({"attention": "local"}, "attention must be"),
    ({"experts": 0}, "experts must be"),
    ({"gdpa_activations": "gelu,tanh"}, "gdpa_activations"),
    ({"attention_act": "softplus"}, "attention_act"),
    ({"streams.click.heads": 3}, "streams.click.d (16) must be divisible"),
    ({"streams.click.layers": 5}, "must be <= n_layers"),
    ({"stream.window": -1}, "stream.window must be"),
    ({"streams.click": 3}, "streams.NAME.KEY"),
    ({"streams.click.colour": 3}, "unknown config key"),
    ({"row_groups": 0}, "row_groups must be an integer >= 1"),
])
def test_bad_config_is_one_line_error(sets, fragment):
    assert_one_line_error(lambda: tiny(sets), fragment)


def test_presets_validate_and_span_flops():
    spec = assert_presets_span_flops("kunlun", lambda cfg, schema, batch: flops_per_example(cfg, schema, batch)[0],
                                     seq_lengths=[600, 80])
    assert isinstance(spec.make_config(None), KunlunConfig)
    assert isinstance(spec.make_config(None).stream, StreamConfig)


@pytest.mark.parametrize("sets", SWITCHES, ids=IDS)
def test_packed_and_padded_layouts_compute_the_same(sets):
    # the packed streams (the default) against the padded ones, forward and every gradient, on
    # ragged rows with empty ones, rows past max_len and a stream that nobody in the batch has
    schema = make_schema(n_multihot=2)
    cfg = tiny(sets)
    assert cfg.sequence_layout == "packed"
    torch.manual_seed(0)
    packed = build(cfg, schema)
    padded = build(dataclasses.replace(cfg, sequence_layout="padded"), schema)
    padded.load_state_dict(packed.state_dict())
    batch = make_batch(schema, 5, seed=9, lengths={"impression": [0, 3, 40, 1, 17], "click": [12, 0, 5, 33, 2],
                                                   "conversion": [0, 0, 0, 0, 0]})
    outs = []
    for model in (packed, padded):
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.square().sum().backward()
        grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for n, p in model.named_parameters()
                 if p.grad is not None}
        outs.append((out.detach(), grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    assert outs[0][1].keys() == outs[1][1].keys()
    for n in outs[0][1]:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("sets", [{}, {"summary": "pma"}, {"seed_attention": "gdpa"}, {"gdpa": "naive"}],
                         ids=["default", "summary=pma", "seed_attention=gdpa", "gdpa=naive"])
def test_row_groups_compute_what_one_padded_view_does(sets, monkeypatch):
    # a long tail of click and conversion rows: the packed streams' padded products run in row
    # groups; logits and every gradient must equal those of one padded view (row_groups = 1)
    schema = make_schema(n_multihot=1)
    cfg = tiny(sets)
    assert cfg.row_groups > 1
    torch.manual_seed(0)
    grouped = build(cfg, schema)
    single = build(dataclasses.replace(cfg, row_groups=1), schema)
    single.load_state_dict(grouped.state_dict())
    lengths = {"impression": [2] * 14 + [16, 16], "click": [3, 1, 0, 4, 2, 3] * 2 + [30, 28, 25, 31],
               "conversion": [0] * 12 + [9, 1, 14, 2]}
    batch = make_batch(schema, 16, seed=4, lengths=lengths)
    seen = []
    orig = Packed.groups
    # tiny's tensors are below the size where a second group pays for its calls: lower the bar
    monkeypatch.setattr(packed_mod, "GROUP_MIN_ELEMENTS", 0)

    def spy(self, max_groups, width):
        got = orig(self, max_groups, width)
        seen.append(got is not None)
        return got

    outs = []
    for model in (grouped, single):
        model.zero_grad(set_to_none=True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Packed, "groups", spy)
            out = model(batch)
        out.square().sum().backward()
        grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for n, p in model.named_parameters()
                 if p.grad is not None}
        outs.append((out.detach(), grads))
        if model is grouped:
            assert any(seen)  # some product really ran in groups
            seen.clear()
    assert not any(seen)
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    assert outs[0][1].keys() == outs[1][1].keys()
    for n in outs[0][1]:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


def test_length_slices_of_other_rows_are_not_used(monkeypatch):
    # a batch cut to fewer rows but still carrying the full batch's slices: they describe other
    # rows, so the model must pad as one view (a group too narrow would drop events silently)
    monkeypatch.setattr(packed_mod, "GROUP_MIN_ELEMENTS", 0)
    schema = make_schema(n_multihot=1)
    full = make_batch(schema, 16, seed=4, lengths={"click": [1] * 8 + [30] * 8, "impression": [2] * 16,
                                                   "conversion": [3] * 16})
    sub = dataclasses.replace(take_rows(full, list(range(8, 16))), length_slices=full.length_slices)
    sub = dataclasses.replace(sub, max_lengths={et: full.max_lengths[et] for et in full.max_lengths})
    made = []
    orig = Packed.groups
    monkeypatch.setattr(Packed, "groups", lambda self, g, w: made.append(orig(self, g, w)) or made[-1])
    torch.manual_seed(0)
    model = build(tiny(), schema).eval()
    with torch.no_grad():
        got = model(sub)
        want = model(dataclasses.replace(sub, length_slices={}))
    assert made and all(g is None for g in made)
    torch.testing.assert_close(got, want)


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=20))
def test_row_groups_equal_one_view_for_any_lengths(lengths):
    # rows of any length, empty ones and ones past max_len: up to 3 groups against one padded view
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packed_mod, "GROUP_MIN_ELEMENTS", 0)
        schema = make_schema(n_multihot=1)
        cfg = dataclasses.replace(tiny(), row_groups=3)
        torch.manual_seed(0)
        grouped = build(cfg, schema).eval()
        single = build(dataclasses.replace(cfg, row_groups=1), schema).eval()
        single.load_state_dict(grouped.state_dict())
        b = len(lengths)
        batch = make_batch(schema, b, seed=b, lengths={"click": [a for a, _ in lengths],
                                                       "conversion": [c for _, c in lengths],
                                                       "impression": [3] * b})
        with torch.no_grad():
            torch.testing.assert_close(grouped(batch), single(batch), atol=1e-5, rtol=1e-5)
