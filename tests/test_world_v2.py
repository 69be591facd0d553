"""World v2 (terms 8-12): each nonlinear term reacts to exactly what it claims to read, the probe's
set view cannot see order or time, and datasets from the older generator still load and recompute."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kunbench.data.manifest import load_manifest
from kunbench.generators.chunk import Chunk, EventColumns
from kunbench.generators.config import V2_TERMS, build_config, config_from_dict
from kunbench.generators.probe import _unordered_features, probe
from kunbench.generators.signal import TERMS, history_features
from kunbench.generators.world import build_world

DAY = 86400
NOW = 1_800_000_000
WORLD = build_world(build_config("tiny"))
N_CAT = WORLD.config.num_item_categories


def _cols(items: list[int], cats: list[int], ages_days: list[float]) -> EventColumns:
    """One row's stream; events given newest last (as datasets store them)."""
    n = len(items)
    ts = np.array([NOW - int(a * DAY) for a in ages_days], dtype=np.int64)
    assert (np.diff(ts) >= 0).all(), "ages must be given oldest first"
    return EventColumns(np.array([n]), np.array([0, n]), np.zeros(n, dtype=np.int64),
                        np.array(items, dtype=np.int64), np.array(cats, dtype=np.int64), ts)


def _chunk(ad: int, ad_cat: int, **streams: EventColumns) -> Chunk:
    empty = _cols([], [], [])
    events = {e: streams.get(e, empty) for e in WORLD.config.events}
    return Chunk(0, 1, np.array([NOW]), np.array([1]), np.array([ad]), np.array([ad_cat]), np.array([0]),
                 np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float32), [], events)


def _term(term: str, chunk: Chunk, world=WORLD) -> float:
    return float(history_features(world, chunk, chunk.events, frozenset({term}))[term][0])


def _item(cat: int, k: int) -> int:
    return cat + N_CAT * k  # the generator's interest-path item ids: item % n_cat is its category


def test_repeat_counts_the_ads_own_item_and_saturates():
    ad, cat = _item(3, 0), 3
    other = _item(3, 1)
    none = _term("repeat", _chunk(ad, cat, click=_cols([other] * 5, [cat] * 5, [5, 4, 3, 2, 1])))
    one = _term("repeat", _chunk(ad, cat, click=_cols([other] * 4 + [ad], [cat] * 5, [5, 4, 3, 2, 1])))
    many = _term("repeat", _chunk(ad, cat, click=_cols([ad] * 40, [cat] * 40, [1.0] * 40)))
    more = _term("repeat", _chunk(ad, cat, click=_cols([ad] * 80, [cat] * 80, [1.0] * 80)))
    old = _term("repeat", _chunk(ad, cat, click=_cols([ad] + [other] * 4, [cat] * 5, [25, 4, 3, 2, 1])))
    assert none == 0.0 < old < one < many < 1.0
    assert more - many < 1e-6  # saturated: not a mean, not a count


def test_target_peak_follows_the_single_best_item_whatever_the_history_length():
    cat = 5
    ad = _item(cat, 0)
    far = [_item((cat + 1 + k) % N_CAT, 1) for k in range(60)]
    far_cats = [i % N_CAT for i in far]
    short = _term("target_peak", _chunk(ad, cat, click=_cols([ad], [cat], [1])))
    long = _term("target_peak", _chunk(ad, cat, click=_cols(far + [ad], far_cats + [cat], [2] * 60 + [1])))
    without = _term("target_peak", _chunk(ad, cat, click=_cols(far, far_cats, [2] * 60)))
    assert long == pytest.approx(short, abs=0.05)  # one close item counts however long the history
    assert without < short - 0.1  # random categories: similarities spread around 0 in 8 dimensions


def test_transition_reads_the_newest_events_in_order():
    ad_cat = 7
    cats = [11, 12, 13, 14, 15, 16]
    items = [_item(c, 0) for c in cats]
    ages = [6, 5, 4, 3, 2, 1]
    base = _term("transition", _chunk(_item(ad_cat, 0), ad_cat, click=_cols(items, cats, ages)))
    rev = _term("transition", _chunk(_item(ad_cat, 0), ad_cat, click=_cols(items[::-1], cats[::-1], ages)))
    assert base != pytest.approx(rev, abs=1e-6)  # order matters
    # only the newest `transition_events` count: changing the oldest event changes nothing
    k = WORLD.config.signal.transition_events
    changed = cats.copy()
    changed[0] = 99
    assert len(cats) > k
    alt = _term("transition", _chunk(_item(ad_cat, 0), ad_cat, click=_cols(items, changed, ages)))
    assert alt == pytest.approx(base, abs=1e-12)


def test_time_gap_is_a_bump_at_the_category_cycle_not_a_decay():
    cat = 9
    cycle = float(WORLD.cycle_days[cat])
    ad = _item(cat, 0)

    def at(age_days: float) -> float:
        return _term("time_gap", _chunk(ad, cat, click=_cols([_item(cat, 2)], [cat], [age_days])))

    on, young, old = at(cycle), at(cycle / 8), at(cycle * 8)
    assert on > 0.5 and young < 0.05 and old < 0.05  # non-monotone in age
    other_cat = _term("time_gap", _chunk(ad, cat, click=_cols([_item(cat + 1, 2)], [cat + 1], [cycle])))
    assert other_cat == 0.0


def test_fatigue_counts_exposures_after_the_last_engagement_only():
    cat = 4
    ad = _item(cat, 0)
    imp = _cols([_item(cat, 1)] * 3, [cat] * 3, [0.6, 0.4, 0.2])
    fresh = _term("fatigue", _chunk(ad, cat, impression=imp))
    clicked_after = _term("fatigue", _chunk(ad, cat, impression=imp, click=_cols([_item(cat, 5)], [cat], [0.1])))
    clicked_between = _term("fatigue", _chunk(ad, cat, impression=imp, click=_cols([_item(cat, 5)], [cat], [0.5])))
    clicked_other = _term("fatigue", _chunk(ad, cat, impression=imp, click=_cols([_item(cat + 1, 5)], [cat + 1], [0.1])))
    assert fresh < clicked_between < clicked_after == 0.0  # it only ever lowers the logit
    assert clicked_other == pytest.approx(fresh)  # an engagement elsewhere does not reset it
    own_item = _term("fatigue", _chunk(ad, cat, impression=_cols([ad] * 3, [cat] * 3, [0.6, 0.4, 0.2])))
    assert own_item < fresh


def test_fatigue_is_off_with_a_single_event_type():
    cfg = build_config("tiny", sets={"event_types": "click"})
    assert cfg.fatigue_streams is None
    with pytest.raises(Exception, match="fatigue_engagement"):
        build_config("tiny", sets={"signal.fatigue_engagement": "nosuch"})


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_the_unordered_view_cannot_see_order_or_time(seed):
    """Scrambling order and timestamps inside each stream leaves the set view unchanged and moves
    the order and time terms."""
    from kunbench.generators.chunk import build_chunk, chunk_rng, request_times

    cfg = WORLD.config
    rng = chunk_rng(seed % 1000, 0)
    chunk = build_chunk(WORLD, rng, 0, 16, request_times(cfg, rng, 0, 16))
    perm_rng = np.random.default_rng(seed)
    scrambled = {}
    for e, c in chunk.events.items():
        order = np.concatenate([lo + perm_rng.permutation(hi - lo) for lo, hi in zip(c.offsets[:-1], c.offsets[1:])])
        ts = np.sort(perm_rng.integers(chunk.request_ts[c.row] - 40 * DAY, chunk.request_ts[c.row]))
        ts = np.concatenate([np.sort(ts[lo:hi]) for lo, hi in zip(c.offsets[:-1], c.offsets[1:])])
        scrambled[e] = dataclasses.replace(c, item=c.item[order], category=c.category[order], ts=ts)
    other = dataclasses.replace(chunk, events=scrambled)
    active = frozenset(V2_TERMS)
    a = np.stack(_unordered_features(WORLD, chunk, active))
    b = np.stack(_unordered_features(WORLD, other, active))
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    fa = history_features(WORLD, chunk, chunk.events, active)
    fb = history_features(WORLD, other, other.events, active)
    assert not np.allclose(fa["transition"], fb["transition"])
    assert not np.allclose(fa["time_gap"], fb["time_gap"]) or not fa["time_gap"].any()


def test_family_views_add_to_pooling(tmp_path):
    root = tmp_path / "d"
    from kunbench.generators.ctr import generate

    generate(build_config("tiny", rows=8000, sets={"eval_fraction": 0.25}), root, progress=False)
    ceilings = {v.view: v.expected_gap_closed for v in probe(root).views}
    for t in V2_TERMS:
        assert ceilings[f"pooled+{t}"] > ceilings["pooled_last_64"] + 0.005, (t, ceilings)
    assert ceilings["unordered"] < ceilings["exact"] - 0.1
    assert ceilings["exact"] > 0.98


def test_a_dataset_from_the_previous_generator_still_loads_and_recomputes(tiny_dataset, tmp_path):
    """Write a version-2 dataset (terms 1-7 only, no output_version, no v2 config keys) and read it
    back: its version is stated and its p_true is recomputed exactly, with the v2 terms absent."""
    from kunbench.generators.ctr import generate

    off = {f"signal.{t}": 0.0 for t in V2_TERMS}
    root = generate(build_config("tiny", rows=1200, sets=off), tmp_path / "old", progress=False)
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    m.pop("output_version")
    for t in V2_TERMS:
        m["config"]["signal"].pop(t)
        for key in ("term_std", "term_scale"):
            m["world"][key].pop(t)
    m["world"]["terms"] = list(TERMS[:7])
    path.write_text(json.dumps(m))
    manifest = load_manifest(root)
    assert manifest.output_version == 2
    cfg = config_from_dict(manifest.data["config"])
    assert all(getattr(cfg.signal, t) == 0.0 for t in V2_TERMS)
    r = probe(root)
    assert r.max_abs_p_error < 1e-12
    assert not any(v.view.startswith("pooled+") for v in r.views)
    assert load_manifest(tiny_dataset).output_version == 3
