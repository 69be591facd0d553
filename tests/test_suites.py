"""Suite registry (built-ins and a third-party entry point), --set routing, statistics (the eta fit on
synthetic data with a known eta, bootstrap), device peaks, and smoke runs of the suites on the tiny
dataset with tiny presets and a few steps."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kunbench.cli import main
from kunbench.data.batch import Batch
from kunbench.errors import KunbenchError
from kunbench.results import load
from kunbench.metrics import ne
from kunbench.suites.context import route_sets
from kunbench.suites.training import TrainedRun, same_eval_rows
from kunbench.train.evaluate import evaluate
from kunbench.suites.registry import available_suites, get_suite, parse_suite_list

BUILTIN = ("ne", "qps", "mfu", "scaling", "ablation", "kernels")


# ---- registry ----------------------------------------------------------------------------------------
def test_builtin_suites_registered():
    names = available_suites()
    for n in BUILTIN:
        assert n in names
        spec = get_suite(n)
        assert spec.name == n and callable(spec.run) and spec.description
    assert get_suite("ne").data_parallel and get_suite("ablation").data_parallel and not get_suite("qps").data_parallel


def test_unknown_suite_one_line():
    with pytest.raises(KunbenchError, match="unknown suite 'nope'"):
        get_suite("nope")
    with pytest.raises(KunbenchError, match="unknown suite"):
        parse_suite_list("ne,nope")
    assert parse_suite_list("ne, qps,ne") == ["ne", "qps"]
    res = CliRunner().invoke(main, ["run", "--suite", "nope"])
    assert res.exit_code == 2 and "unknown suite 'nope'" in res.output


FAKE_MODULE = '''
from kunbench.results import measurement
from kunbench.suites.registry import SuiteOutput, SuiteSpec


def run(ctx):
    with ctx.window("fake window"):
        value = sum(range(1000))
    return SuiteOutput(measurements=[measurement("fake", "none", "v1", "answer", float(value), unit="",
                                                 better="higher", samples=[value, value + 2.0])],
                       backends=["none"], notes=["from a plugin"])


SUITE = SuiteSpec("fake", "a third-party test suite", run, uses_data=False)
'''


@pytest.fixture()
def fake_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry points register suite 'fake' (like a pip-installed plugin)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "kb_fake_suite_plugin.py").write_text(FAKE_MODULE)
    dist = site / "kb_fake_suite_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kb-fake-suite-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [kunbench.suites]
        fake = kb_fake_suite_plugin:SUITE
        """))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_third_party_suite_entry_point(fake_plugin, tmp_path):
    assert "fake" in available_suites()
    spec = get_suite("fake")
    assert spec.description == "a third-party test suite"
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--suite", "fake", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    files = list(out.glob("suite-fake-*.json"))
    assert len(files) == 1
    doc = load(files[0])
    assert doc["suite"] == "fake" and doc["metrics"][0]["value"] == 499500.0
    assert doc["metrics"][0]["spread"] == pytest.approx(math.sqrt(2.0))
    assert doc["environment"]["python"] and doc["environment"]["world_size"] == 1
    assert doc["telemetry"]["gpu"]["available"] is False and doc["telemetry"]["host"]["cpu"]
    assert "from a plugin" in doc["notes"]
    res = CliRunner().invoke(main, ["list"])
    assert "fake" in res.output


def test_broken_plugin_is_one_line(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "kb_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kb-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kunbench.suites]\nbroken = kb_no_such_module:SUITE\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(KunbenchError, match="suite 'broken'"):
        get_suite("broken")


# ---- --set routing ----------------------------------------------------------------------------------
def test_route_sets():
    r = route_sets({"train.steps": 5, "data.rows": 100, "qps.batch_sizes": [8], "wukong.d": 8, "d": 16,
                           "stream.window": 4})
    assert r["train"] == {"steps": 5} and r["data"] == {"rows": 100}
    assert r["suite:qps"] == {"batch_sizes": [8]} and r["backend:wukong"] == {"d": 8}
    assert r["all_backends"] == {"d": 16, "stream.window": 4}


def test_trained_run_expected_ne():
    rng = np.random.default_rng(3)
    pt = rng.uniform(0.01, 0.1, 500)
    y = (rng.random(500) < pt).astype(float)
    run = _trained_run(y, pt * 1.1, pt)
    m = run.metrics()
    assert m["expected_ne"] == pytest.approx(ne(pt, pt * 1.1)) and m["ne"] == pytest.approx(ne(y, pt * 1.1))
    assert m["oracle_ne"] == pytest.approx(ne(y, pt))
    other = _trained_run(y.copy(), pt, pt.copy())
    assert same_eval_rows(run, other)
    assert not same_eval_rows(run, _trained_run(y[::-1].copy(), pt, pt[::-1].copy()))


def _trained_run(y, probs, p_true):
    """A TrainedRun whose evaluation is the one `kunbench train` computes on these rows."""
    class Rows:
        def __iter__(self):
            for i in range(0, len(y), 128):
                yield _batch(y[i:i + 128], probs[i:i + 128], p_true[i:i + 128])

    result = evaluate(_EchoModel(), Rows(), keep_rows=True)
    return TrainedRun("x", "tiny", None, 0, None, result, 0, None, None)


class _EchoModel(torch.nn.Module):
    """Predicts the probability a test batch carries in its dense context."""

    def forward(self, batch):
        return torch.logit(batch.context_dense[:, 0].double())


def _batch(y, probs, p_true):
    n = len(y)
    return Batch(context_categorical=torch.zeros(n, 0, dtype=torch.int64),
                 context_dense=torch.as_tensor(probs, dtype=torch.float64)[:, None], multihot={}, sequences={},
                 request_ts=torch.zeros(n, dtype=torch.int64), labels=torch.as_tensor(y, dtype=torch.float32),
                 p_true=torch.as_tensor(p_true, dtype=torch.float64))


def test_scaling_ladder_spans_decades(tiny_dataset):
    import torch

    from kunbench.backends.registry import available_backends, get_backend
    from kunbench.data.synthetic import SyntheticBatches
    from kunbench.suites.scaling import DEFAULT_FACTORS

    src = SyntheticBatches.from_manifest(tiny_dataset, batch_size=16, pool_size=1)
    for name in [b for b in ("wukong", "interformer", "kunlun") if b in available_backends()]:
        spec = get_backend(name)
        base = spec.make_config("tiny")
        flops = [float(torch.as_tensor(spec.flops_per_example(spec.make_config("tiny", spec.scale(base, f)),
                                                              src.schema, src.pool[0])).mean())
                 for f in DEFAULT_FACTORS]
        assert flops == sorted(flops)
        assert math.log10(flops[-1] / flops[0]) >= 1.5, (name, flops)


def test_backend_specs_declare_what_callers_need():
    from kunbench.backends.registry import get_backend

    interformer, wukong, kunlun = (get_backend(n) for n in ("interformer", "wukong", "kunlun"))
    assert interformer.max_lengths(interformer.make_config("tiny")) == 64
    kcfg = kunlun.make_config("tiny")
    assert kunlun.max_lengths(kcfg) == kcfg.longest_stream_len
    # the widths are declared, nested stream configs included, and d stays a multiple of 2 x heads
    changes = kunlun.scale(kcfg, 2.0)
    assert {"d", "stream.d", "streams.click.d", "fmb_mlp"} <= set(changes)
    assert changes["streams.click.d"] == 2 * kcfg.streams["click"].d
    assert all(v % (2 * kcfg.streams["click"].heads) == 0 for k, v in changes.items() if k.endswith(".d"))
    assert wukong.scale(wukong.make_config("tiny"), 0.5)["fmb_mlp"] == [32]
    bare = dataclasses.replace(wukong, width_keys=())
    with pytest.raises(KunbenchError, match="declares no width_keys"):
        bare.scale(wukong.make_config("tiny"), 2.0)
    with pytest.raises(KunbenchError, match="has no field 'nope'"):
        dataclasses.replace(wukong, width_keys=("nope",)).scale(wukong.make_config("tiny"), 2.0)


# ---- smoke runs -----------------------------------------------------------------------------------------
def _run(args):
    res = CliRunner().invoke(main, ["run", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def _docs(out, suite):
    return [load(p) for p in sorted(out.glob(f"suite-{suite}-*.json"))]


def test_smoke_ne_and_qps(tiny_dataset, tmp_path):
    out = tmp_path / "res"
    res = _run(["--suite", "ne,qps", "--backend", "wukong,interformer", "--preset", "tiny", "--data", tiny_dataset,
                "--device", "cpu", "--set", "train.steps=2", "--set", "train.batch_size=64",
                "--set", "qps.batch_sizes=[16]", "--set", "qps.window_s=0.02", "--set", "qps.warmup=1",
                "--repeat", "2", "--out", out])
    assert "ne: quality on the same data" in res.output and "qps: throughput" in res.output
    (ne_doc,) = _docs(out, "ne")
    names = {(m["backend"], m["name"]) for m in ne_doc["metrics"]}
    for b in ("wukong", "interformer"):
        for n in ("ne", "auc", "calibration", "oracle_ne", "gap_closed", "fwd_flops_per_example", "params"):
            assert (b, n) in names
    rel = next(m for m in ne_doc["metrics"] if m["name"] == "relative_ne_pct")
    assert rel["backend"] == "wukong" and rel["baseline"] == "interformer"
    assert rel["spread"] is not None and len(rel["samples"]) == 2  # two seeds, paired
    ne = next(m for m in ne_doc["metrics"] if m["name"] == "ne" and m["backend"] == "wukong")
    assert 0.3 < ne["value"] < 5 and "seeds" in ne["spread_kind"]
    assert ne_doc["environment"]["world_size"] == 1 and ne_doc["environment"]["device"] == "cpu"
    assert ne_doc["dataset"]["path"] and ne_doc["telemetry"]["host"]["rss_peak_gib"] > 0
    assert ne_doc["config"]["train"]["steps"] == 2

    (qps_doc,) = _docs(out, "qps")
    q = {(m["backend"], m["name"]): m for m in qps_doc["metrics"]}
    for b in ("wukong", "interformer"):
        for n in ("infer_qps", "train_qps", "latency_p50", "latency_p99", "train_mfu_pct"):
            assert (b, n) in q, (b, n)
        assert q[(b, "infer_qps")]["value"] > 0 and len(q[(b, "infer_qps")]["samples"]) == 2
        assert q[(b, "latency_p99")]["value"] >= q[(b, "latency_p50")]["value"]
        assert q[(b, "infer_qps")]["telemetry"]["host"]["cpu"]
    # the run's results compare cleanly against themselves
    p = out.glob("suite-qps-*.json").__next__()
    cmp = CliRunner().invoke(main, ["compare", str(p), str(p), "--fail", "qps:-5%"])
    assert cmp.exit_code == 0, cmp.output


@pytest.mark.parametrize("interleave", ["true", "false"])
def test_mfu_measures_every_backend_interleaved_or_in_turn(tiny_dataset, tmp_path, interleave):
    out = tmp_path / "res"
    _run(["--suite", "mfu", "--backend", "wukong,logreg", "--data", tiny_dataset, "--device", "cpu",
          "--set", "mfu.batch_size=16", "--set", "mfu.window_s=0.02", "--set", f"mfu.interleave={interleave}",
          "--repeat", "3", "--out", out])
    (mfu,) = _docs(out, "mfu")
    assert mfu["config"]["interleave"] is (interleave == "true")
    for b in ("wukong", "logreg"):
        m = {x["name"]: x for x in mfu["metrics"] if x["backend"] == b}
        assert m["train_step_ms"]["value"] > 0 and m["infer_step_ms"]["value"] > 0
        assert len(m["train_qps"]["samples"]) == 3 and m["train_aten_ops_per_step"]["value"] > 0
    by = {(x["backend"], x["name"]): x for x in mfu["metrics"]}
    if interleave == "true":  # ratios to the baseline (the first backend), window by window
        assert mfu["config"]["baseline"] == "wukong"
        assert ("wukong", "train_speedup") not in by  # the baseline's own 1.0 is not stored
        pairs = zip(by[("logreg", "train_qps")]["samples"], by[("wukong", "train_qps")]["samples"])
        ratios = [q / r for q, r in pairs]
        assert by[("logreg", "train_speedup")]["samples"] == pytest.approx(ratios)
        assert by[("logreg", "train_speedup")]["value"] == pytest.approx(sorted(ratios)[1])  # the median
        assert by[("logreg", "train_speedup")]["variant"] == "bs=16 vs wukong"
        assert ("logreg", "infer_speedup") in by and ("logreg", "train_mfu_ratio") in by
        rows = {r["backend"]: r for r in mfu["tables"][0]["rows"]}
        assert rows["wukong"]["train_speedup"] == 1.0
        headers = [c["header"] for c in mfu["tables"][0]["columns"]]
        assert "train ex/s x wukong" in headers
    else:  # windows measured in turn are not paired: no ratios
        assert mfu["config"]["baseline"] is None and ("logreg", "train_speedup") not in by


def test_mfu_baseline_and_interleave_must_be_valid(tiny_dataset, tmp_path):
    res = CliRunner().invoke(main, ["run", "--suite", "mfu", "--backend", "wukong,logreg", "--data", tiny_dataset,
                                    "--device", "cpu", "--set", "mfu.baseline=kunlun", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "mfu.baseline must be one of the backends run (wukong, logreg), got 'kunlun'" in res.output
    assert not list(tmp_path.glob("*.json"))
    # a typo must not flip the switch: one line naming the value, nothing written
    for suite in ("mfu", "ablation"):
        res = CliRunner().invoke(main, ["run", "--suite", suite, "--backend", "wukong,logreg", "--data", tiny_dataset,
                                        "--device", "cpu", "--set", f"{suite}.interleave=sometimes",
                                        "--out", str(tmp_path)])
        assert res.exit_code != 0
        assert f"{suite}.interleave must be true or false, got 'sometimes'" in res.output
        assert "Traceback" not in res.output
    assert not list(tmp_path.glob("*.json"))


def test_smoke_mfu_scaling_ablation(tiny_dataset, tmp_path):
    out = tmp_path / "res"
    res = _run(["--suite", "mfu,scaling,ablation", "--backend", "wukong", "--data", tiny_dataset, "--device", "cpu",
                "--set", "train.steps=2", "--set", "train.batch_size=64", "--set", "scaling.factors=[0.5,1,2]",
                "--set", "mfu.batch_size=16", "--set", "mfu.window_s=0.02", "--set", "ablation.batch_size=16",
                "--set", "ablation.window_s=0.02", "--set", "ablation.windows=2", "--out", out])
    assert "mfu:" in res.output and "scaling: expected NE(C)" in res.output
    assert "ablation: one switch per row" in res.output
    (mfu,) = _docs(out, "mfu")
    m = {x["name"]: x for x in mfu["metrics"]}
    assert m["train_mfu_pct"]["value"] > 0 and "3 x forward" in m["train_mfu_pct"]["flops_convention"]
    assert m["train_mfu_pct"]["peak_source"].startswith("measured")
    (sc,) = _docs(out, "scaling")
    fit = sc["extra"]["scaling"]["wukong"]["fit"]
    assert fit["n"] == 3 and fit["eta"] is not None and fit["eta_ci"] is not None
    assert fit["on"] == "expected_ne"  # the fit is on expected NE, not on the label draw
    pts = sc["extra"]["scaling"]["wukong"]["points"]
    assert all(p["expected_ne"] is not None and p["expected_ne_spread"] is not None for p in pts)
    assert fit["ne0"] == pytest.approx(np.mean([p["expected_ne"] for p in pts]))
    size_cols = [c["key"] for c in sc["tables"][0]["columns"]]
    assert {"expected_ne", "ne", "expected_gap_closed"} <= set(size_cols)
    assert {(m["name"]) for m in sc["metrics"]} >= {"ne", "expected_ne", "eta"}
    assert any(n.startswith("plot: ") for n in sc["notes"])
    (ab,) = _docs(out, "ablation")
    rows = [r["row"] for r in ab["tables"][0]["rows"]]
    assert rows == ["Wukong"]
    names = {x["name"] for x in ab["metrics"]}
    assert {"ne", "expected_ne", "gap_closed", "fwd_gflops_per_example", "train_qps", "infer_qps", "params",
            "train_mfu_pct"} <= names
    cols = [c["key"] for c in ab["tables"][0]["columns"]]
    assert {"expected_ne", "dne", "ne", "dne_sampled"} <= set(cols)
    # kunlun is registered: --backend leaves its rows out, they are not "skipped" as unregistered
    # (the unregistered case: test_ablation_deltas_on_expected_ne)
    assert not any("rows skipped" in n for n in ab["notes"])
    json.dumps(ab)  # plain JSON all the way down


def test_ablation_deltas_on_expected_ne(tiny_dataset, tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["run", "--suite", "ablation", "--backend", "interformer,wukong", "--data",
                                    str(tiny_dataset), "--device", "cpu", "--set", "train.steps=2",
                                    "--set", "train.batch_size=64", "--set", "ablation.batch_size=16",
                                    "--set", "ablation.window_s=0.02", "--set", "ablation.windows=3",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "ΔNE % (exp.)" in res.output and "ΔNE % (sampled)" in res.output
    (ab,) = _docs(out, "ablation")
    rows = {r["row"]: r for r in ab["tables"][0]["rows"]}
    assert list(rows) == ["InterFormer", "Wukong"]  # no Kunlun rows here: deltas against InterFormer
    w = rows["Wukong"]
    assert w["dne"] == pytest.approx(100.0 * (w["expected_ne"] / rows["InterFormer"]["expected_ne"] - 1.0))
    assert w["dne_sampled"] == pytest.approx(100.0 * (w["ne"] / rows["InterFormer"]["ne"] - 1.0))
    assert w["dne_spread"] is not None and w["dne_sampled_spread"] is not None
    m = {(x["backend"], x["name"]): x for x in ab["metrics"]}
    assert m[("wukong", "delta_expected_ne_pct")]["value"] == pytest.approx(w["dne"])
    assert m[("wukong", "delta_ne_pct")]["value"] == pytest.approx(w["dne_sampled"])
    extra = {r["row"]: r for r in ab["extra"]["ablation_rows"]}
    assert extra["Wukong"]["delta_expected_ne_pct"] == pytest.approx(w["dne"])
    # interleaved windows: Δ QPS is the median of the window-by-window changes, ± their std
    for mode in ("train", "infer"):
        pairs = zip(m[("wukong", f"{mode}_qps")]["samples"], m[("interformer", f"{mode}_qps")]["samples"])
        pcts = [100.0 * (q / r - 1.0) for q, r in pairs]
        assert len(pcts) == 3
        assert w[f"dqps_{mode}"] == pytest.approx(sorted(pcts)[1])  # the median
        assert w[f"dqps_{mode}_spread"] == pytest.approx(statistics.stdev(pcts))
        assert extra["Wukong"][f"delta_qps_{mode}_pct_spread"] == pytest.approx(statistics.stdev(pcts))


def test_run_rejects_bad_options(tiny_dataset, tmp_path):
    r = CliRunner().invoke(main, ["run", "--suite", "ne", "--backend", "nope", "--data", str(tiny_dataset)])
    assert r.exit_code == 2 and "unknown backend" in r.output
    r = CliRunner().invoke(main, ["run", "--suite", "ne", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "no manifest.json" in r.output
    r = CliRunner().invoke(main, ["run", "--suite", "ne", "--backend", "wukong", "--set", "wukong.nokey=1",
                                  "--data", str(tiny_dataset)])
    assert r.exit_code == 2 and "nokey" in r.output
    r = CliRunner().invoke(main, ["run", "--suite", "ne", "--dtype", "bf16", "--device", "cpu"])
    assert r.exit_code == 2 and "bf16" in r.output


def test_config_file(tiny_dataset, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(textwrap.dedent(f"""\
        suite = "qps"
        backends = ["wukong"]
        preset = "tiny"
        data = "{tiny_dataset}"
        device = "cpu"
        repeat = 1
        [qps]
        batch_sizes = [8]
        window_s = 0.01
        warmup = 1
        modes = ["infer"]
        """))
    out = tmp_path / "o"
    _run(["--config", cfg, "--out", out])
    (doc,) = _docs(out, "qps")
    assert {m["name"] for m in doc["metrics"]} >= {"infer_qps", "latency_p50"}
    assert doc["config"]["settings"]["batch_sizes"] == [8]


@pytest.mark.parametrize("option, fragment", [
    ("ne.bootstrapp=5", "unknown option ne.bootstrapp (options of ne: baseline, bootstrap)"),
    ("mfu.batchsize=8", "unknown option mfu.batchsize"),
    ("selfcheck.budget=1", "options of selfcheck: baseline, batch_size, budget_s"),
])
def test_unknown_suite_option_is_rejected_before_work(tmp_path, monkeypatch, option, fragment):
    from click.testing import CliRunner

    from kunbench.cli import main

    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    suite = option.split(".")[0]
    res = CliRunner().invoke(main, ["run", "--suite", suite, "--set", option, "--device", "cpu",
                                    "--out", str(tmp_path / "res")])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output
    assert not (tmp_path / "cache").exists()
