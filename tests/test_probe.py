"""The signal probe: exact recomputation of p_true, views that match what the backends see, and
ceilings that move when the data's history terms are switched off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from kunbench.backends.jagged import merge_padded, pad_stream
from kunbench.cli import main
from kunbench.data.batch import EventSequence
from kunbench.generators.chunk import EventColumns
from kunbench.generators.config import V2_TERMS
from kunbench.generators.probe import fit_logistic, last_k, merged_last_t, probe
from kunbench.generators.signal import HISTORY_TERMS


def _columns(lengths: list[int], ts: list[int]) -> EventColumns:
    lengths_a = np.array(lengths, dtype=np.int64)
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths_a, out=off[1:])
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths_a)
    ts_a = np.array(ts, dtype=np.int64)
    # sort ascending within each row, as datasets store them
    order = np.lexsort((ts_a, row))
    item = np.arange(ts_a.shape[0], dtype=np.int64) + 1000 * row  # unique, recoverable ids
    return EventColumns(lengths_a, off, row, item, item % 7, ts_a[order])


@st.composite
def streams(draw):
    rows = draw(st.integers(1, 4))
    out = {}
    for name in ("impression", "click", "conversion"):
        lengths = draw(st.lists(st.integers(0, 6), min_size=rows, max_size=rows))
        ts = draw(st.lists(st.integers(0, 5), min_size=sum(lengths), max_size=sum(lengths)))  # many ties
        out[name] = _columns(lengths, ts)
    return out


@settings(max_examples=60, deadline=None)
@given(streams(), st.integers(1, 10))
def test_merged_view_keeps_exactly_the_events_the_backend_merge_keeps(events, t_max):
    kept = merged_last_t(events, t_max)
    seqs = [EventSequence(torch.from_numpy(c.item), torch.from_numpy(c.category), torch.from_numpy(c.ts),
                          torch.from_numpy(c.offsets)) for c in events.values()]
    # the merge InterFormer's input layer runs: newest t_max of each stream, merged, newest t_max kept
    merged = merge_padded([pad_stream(s, t_max) for s in seqs], t_max, width=t_max)
    for r in range(merged.kept.shape[0]):
        want = sorted(merged.item[r, :int(merged.kept[r])].tolist())
        got = sorted(np.concatenate([c.item[c.row == r] for c in kept.values()]).tolist())
        assert got == want


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=1, max_size=5), st.integers(1, 6))
def test_last_k_keeps_the_newest_k_of_each_row(lengths, k):
    ts = list(range(sum(lengths)))
    cols = _columns(lengths, ts)
    got = last_k(cols, k)
    assert got.lengths.tolist() == [min(n, k) for n in lengths]
    for r in range(len(lengths)):
        assert got.item[got.row == r].tolist() == cols.item[cols.row == r][-k:].tolist()


def test_fit_logistic_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 3)) * [1.0, 3.0, 0.1] + [0.0, 5.0, 0.0]
    w = np.array([0.7, -0.2, 4.0, -3.0])
    p = 1 / (1 + np.exp(-(x @ w[:-1] + w[-1])))
    np.testing.assert_allclose(fit_logistic(x, p), w, atol=1e-4)


def test_probe_recomputes_p_true_and_orders_the_views(tiny_dataset):
    r = probe(tiny_dataset)
    assert r.max_abs_p_error < 1e-9  # the floor is a function of the observed row, as docs/data.md promises
    ceilings = {v.view: v.expected_gap_closed for v in r.views}
    assert set(ceilings) == {"context", "pooled_last_64", "merged_mean_256", "merged_last_256", "categories_only",
                             "unordered", "exact", *(f"pooled+{t}" for t in V2_TERMS)}
    assert ceilings["exact"] > 0.97
    # tiny histories (at most 64 per type) fit whole in both views
    assert ceilings["merged_last_256"] == pytest.approx(ceilings["exact"], abs=1e-6)
    assert ceilings["context"] < ceilings["pooled_last_64"] < ceilings["exact"]
    assert ceilings["context"] < ceilings["merged_mean_256"] < ceilings["merged_last_256"]
    assert ceilings["pooled_last_64"] < ceilings["unordered"] < ceilings["exact"]


def test_without_history_terms_the_context_view_reaches_the_floor(tmp_path):
    from kunbench.generators.config import build_config
    from kunbench.generators.ctr import generate

    off = {f"signal.{t}": 0.0 for t in HISTORY_TERMS}
    root = generate(build_config("tiny", rows=1200, sets=off), tmp_path / "ctx", progress=False)
    ceilings = {v.view: v.expected_gap_closed for v in probe(root).views}
    assert ceilings["context"] > 0.97
    assert ceilings["pooled_last_64"] == pytest.approx(ceilings["context"], abs=0.03)


def test_probe_cli_table_json_and_errors(tiny_dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["probe", str(tiny_dataset), "--max-rows", "400", "--merge-t", "8", "--pool-k", "4"])
    assert res.exit_code == 0, res.output
    assert "merged_last_8" in res.output and "pooled_last_4" in res.output
    res = runner.invoke(main, ["probe", str(tiny_dataset), "--max-rows", "400", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["train_rows"] == 400 and doc["eval_rows"] == 200
    res = runner.invoke(main, ["probe", str(tiny_dataset), "--pool-k", "0"])
    assert res.exit_code == 2 and "pool_k" in res.output
    res = runner.invoke(main, ["probe", str(tmp_path)])
    assert res.exit_code == 2 and "manifest" in res.output
