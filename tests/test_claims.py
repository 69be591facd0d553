"""The claims suite: one dataset per history term, the matrix of backends' expected gap closed
beside the probe's ceilings, and its option checks. One small run (two terms, Wukong, a few
steps, tiny datasets in a private cache) is shared by the tests that read its result."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kunbench.cli import main
from kunbench.data.manifest import load_manifest
from kunbench.generators.probe import probe
from kunbench.results import load
from kunbench.suites import claims
from kunbench.suites.context import RunOptions, SuiteContext

ROWS = 1500
BACKEND = "wukong"
TERMS = claims.history_terms()[:2]


@pytest.fixture(scope="module")
def claims_run(tmp_path_factory):
    """(result document, the TrainedRuns the suite made, keyed by (term, backend))."""
    out = tmp_path_factory.mktemp("claims_out")
    trained: dict[tuple[str, str], object] = {}
    real = claims.train_and_predict

    def recording(ctx, built, seed=0, label=None):
        run = real(ctx, built, seed=seed, label=label)
        term = next(t for t in TERMS if f"claims {t} " in label)
        trained[(term, built.name)] = run
        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUNBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(claims, "train_and_predict", recording)
        res = CliRunner().invoke(main, [
            "run", "--suite", "claims", "--backend", BACKEND, "--device", "cpu", "--threads", "1",
            "--set", f"claims.rows=[{','.join(TERMS)}]", "--set", f"claims.data_rows={ROWS}",
            "--set", "train.steps=4", "--set", "train.batch_size=64", "--out", str(out)])
    assert res.exit_code == 0, res.output
    (path,) = out.glob("suite-claims-*.json")
    return load(path), trained, res.output


def test_matrix_has_a_row_per_term_and_a_cell_per_backend(claims_run):
    doc, _, output = claims_run
    matrix = doc["tables"][0]
    assert [r["term"] for r in matrix["rows"]] == TERMS
    keys = [c["key"] for c in matrix["columns"]]
    assert keys[:2] == ["term", BACKEND]
    for r in matrix["rows"]:
        assert isinstance(r[BACKEND], float)
        assert r["view:context"] is not None and r["view:exact"] is not None
    assert "claims: expected gap closed per history term" in output
    assert any("how to read claims" in n for n in doc["notes"])
    json.dumps(doc)


def test_cells_are_the_trained_runs_and_the_probe(claims_run):
    doc, trained, _ = claims_run
    rows = {r["term"]: r for r in doc["tables"][0]["rows"]}
    ms = {(m["backend"], m["variant"], m["name"]): m for m in doc["metrics"]}
    assert set(trained) == {(t, BACKEND) for t in TERMS}
    for term in TERMS:
        gap = trained[(term, BACKEND)].metrics()["expected_gap_closed"]
        assert rows[term][BACKEND] == pytest.approx(gap, abs=1e-12)
        assert ms[(BACKEND, term, "expected_gap_closed")]["value"] == pytest.approx(gap, abs=1e-12)
        assert ms[(BACKEND, term, "expected_gap_closed")]["spread"] > 0
        # the ceilings are the probe's on this term's own dataset, and ordered
        root = doc["dataset"]["per_term"][term]["path"]
        again = {v.view: v.expected_gap_closed for v in probe(root, pool_k=claims.POOL_K, merge_t=claims.MERGE_T).views}
        for view, value in again.items():
            assert ms[("probe", term, f"ceiling_{view}")]["value"] == pytest.approx(value, abs=1e-9)
        assert rows[term]["view:context"] == pytest.approx(again["context"], abs=1e-9)
        assert again["exact"] >= again["context"]
        assert rows[term]["view:exact"] > 0.9  # the one history term is recomputable from the row
    # two terms, two different datasets
    paths = {doc["dataset"]["per_term"][t]["path"] for t in TERMS}
    assert len(paths) == len(TERMS)


def test_each_dataset_has_only_its_history_term(claims_run):
    doc, _, _ = claims_run
    all_terms = claims.history_terms()
    for term in TERMS:
        cfg = load_manifest(doc["dataset"]["per_term"][term]["path"]).data["config"]
        sig = cfg["signal"]
        assert sig[term] == claims.DEFAULT_STRENGTH
        assert all(sig[t] == 0.0 for t in all_terms if t != term), sig
        assert sig["context"] == sig["cross"] == claims.DEFAULT_CONTEXT_STRENGTH
        assert cfg["rows"] == ROWS and cfg["base_ctr"] == claims.QUICK_BASE_CTR


def _ctx(sets, full=False):
    return SuiteContext(opts=RunOptions(suites=["claims"], sets=sets, full=full), suite="claims")


def test_term_sets_order():
    all_terms = claims.history_terms()
    other = all_terms[1]
    ctx = _ctx({"data.base_ctr": 0.1, f"data.signal.{other}": 0.7, "data.signal.context": 0.4})
    s = claims.settings(ctx)
    preset, sets = claims.term_sets(ctx, s, all_terms[0], all_terms)
    assert preset == "tiny" and sets["rows"] == claims.QUICK_CLAIMS_DATA_SETS["rows"] == 57344
    assert sets["base_ctr"] == 0.1 and sets["signal.context"] == 0.4  # data.* beats the suite's defaults
    assert sets[f"signal.{other}"] == 0.0  # ... but never turns a second history term on
    ctx = _ctx({"data.base_ctr": 0.1, "claims.base_ctr": 0.3, "claims.context_strength": "preset",
                "claims.strength": 2})
    s = claims.settings(ctx)
    _, sets = claims.term_sets(ctx, s, all_terms[0], all_terms)
    assert sets["base_ctr"] == 0.3 and "signal.context" not in sets and sets[f"signal.{all_terms[0]}"] == 2.0
    ctx = _ctx({}, full=True)
    preset, sets = claims.term_sets(ctx, claims.settings(ctx), all_terms[0], all_terms)
    assert preset == "small" and "rows" not in sets and "base_ctr" not in sets


@pytest.mark.parametrize("sets, message", [
    ({"claims.rows": "[target_match,nope]"}, "claims.rows: unknown value 'nope'"),
    ({"claims.rows": "[context]"}, "claims.rows: unknown value 'context'"),
    ({"claims.strength": 0}, "claims.strength: must be > 0"),
    ({"claims.strength": "strong"}, "claims.strength: expected a number"),
    ({"claims.data_rows": 10}, "claims.data_rows: expected a number >= 100"),
    ({"claims.data_rows": 1000.5}, "claims.data_rows: expected an integer"),
    ({"claims.base_ctr": 1.5}, "claims.base_ctr: expected a rate in (0, 1)"),
    ({"claims.probe_rows": 0}, "claims.probe_rows: expected a number >= 1"),
    ({"data.nokey": 1}, "claims: the target_match dataset: unknown config key 'nokey'"),
])
def test_bad_options_are_one_line_errors(sets, message, tmp_path, monkeypatch):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path))
    args = ["run", "--suite", "claims", "--backend", BACKEND, "--device", "cpu", "--no-write"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # rejected before any dataset was generated


def test_missing_views_are_left_out_not_invented():
    from types import SimpleNamespace

    from kunbench.suites.registry import SuiteOutput

    run = SimpleNamespace(telemetry=None, preset="tiny")
    cell = {"runs": [run], "gap": 0.3, "gaps": [0.3], "spread": 0.01, "kind": "test"}
    results = {"recency": {"ceilings": {"context": 0.1, "exact": 1.0}, "probe": None, "runs": {"wukong": cell}},
               "repeat": {"ceilings": {"context": 0.2, "exact": 0.99, "unordered": 0.5, "pooled+repeat": 0.9},
                          "probe": None, "runs": {"wukong": cell}}}
    ctx = _ctx({})
    s = claims.settings(ctx)
    out = SuiteOutput()
    ctx.dist = SimpleNamespace(device="cpu", world_size=1)
    claims._report(ctx, out, s, ["recency", "repeat"], ["wukong"], results, {"repeat": "pooled+repeat"}, 1, [])
    matrix = out.tables[0]
    keys = [c["key"] for c in matrix["columns"]]
    assert keys == ["term", "wukong", "view:context", "view:unordered", "view:exact", "term_view", "view:term"]
    rec, rep = matrix["rows"]
    assert rec["view:unordered"] is None and rec["term_view"] is None and rec["view:term"] is None
    assert rep["view:unordered"] == 0.5 and rep["term_view"] == "pooled+repeat" and rep["view:term"] == 0.9
    assert any("pooled_last_64" in n and "merged_last_256" in n for n in matrix["notes"])
    names = {(m["backend"], m["variant"], m["name"]) for m in out.measurements}
    assert ("probe", "repeat", "ceiling_pooled+repeat") in names
    assert ("probe", "recency", "ceiling_unordered") not in names
    assert out.tables[1]["rows"][0]["wukong"] == pytest.approx(0.3 - 0.1)
