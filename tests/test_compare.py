"""kunbench compare: planted regressions fail, unchanged reruns and noise-sized changes pass;
threshold parsing; environment warnings; malformed and foreign result files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kunbench.cli import main
from kunbench.errors import KunbenchError
from kunbench.results import load, make_document, measurement, write_result
from kunbench.results.compare import compare, parse_rule


def env(gpu: str | None = None, cpu: str = "AMD EPYC") -> dict:
    g = {"available": True, "driver": "550", "devices": [{"index": 0, "name": gpu, "memory_total_gib": 80}]} \
        if gpu else {"available": False, "reason": "no GPU"}
    return {"python": "3.11", "torch": "2.4", "cpu": cpu, "cpu_count": 2, "gpu": g,
            "device": "cuda:0" if gpu else "cpu", "dtype": "fp32", "world_size": 1, "git_sha": "abc"}


def doc(qps=1000.0, qps_samples=(990.0, 1000.0, 1010.0), ne=0.85, ne_spread=0.001, environment=None,
        latency=2.0) -> dict:
    ms = [
        measurement("qps", "wukong", "bs=256", "train_qps", qps, unit="ex/s", better="higher",
                    samples=list(qps_samples)),
        measurement("qps", "wukong", "bs=256", "infer_qps", qps * 3, unit="ex/s", better="higher",
                    samples=[s * 3 for s in qps_samples]),
        measurement("qps", "wukong", "bs=256", "latency_p99", latency, unit="ms", better="lower"),
        measurement("ne", "wukong", "tiny", "ne", ne, better="lower", spread=ne_spread,
                    spread_kind="bootstrap std over eval rows"),
        measurement("ne", "wukong", "tiny", "oracle_ne", 0.80, better="none"),
    ]
    return make_document("qps", ms, backends=["wukong"], config={}, dataset=None,
                         environment=environment or env(), timing={"total_s": 1.0})


def write(tmp_path, name, d):
    out = tmp_path / name
    return write_result(d, out)


def run(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def test_parse_rule():
    r = parse_rule("qps:-5%")
    assert (r.pattern, r.direction, r.threshold, r.percent) == ("qps", -1, 5.0, True)
    r = parse_rule("ne:+0.1%")
    assert (r.direction, r.threshold) == (1, 0.1)
    r = parse_rule("ne:0.002")
    assert (r.direction, r.percent) == (0, False) and r.bad_direction("lower") == 1
    assert r.matches("ne") and parse_rule("qps:-5%").matches("train_qps") and not r.matches("auc")
    assert parse_rule("*qps*:-1%").matches("train_qps_loader")
    for bad in ("qps", "qps:", "qps:-x%", ":5%", "qps:-0%"):
        with pytest.raises(KunbenchError):
            parse_rule(bad)


def test_planted_regression_fails(tmp_path):
    base = write(tmp_path, "base", doc())
    new = write(tmp_path, "new", doc(qps=850.0, qps_samples=(845.0, 850.0, 855.0)))  # -15 %, tight noise
    res = run(base, new, "--fail", "qps:-5%")
    assert res.exit_code == 1, res.output
    assert "regression" in res.output and "train_qps" in res.output and "FAIL" in res.output


def test_unchanged_rerun_passes(tmp_path):
    base = write(tmp_path, "base", doc())
    new = write(tmp_path, "new", doc(qps=1001.0, qps_samples=(992.0, 1001.0, 1009.0), ne=0.8501))
    res = run(base, new, "--fail", "qps:-5%", "--fail", "ne:+0.1%")
    assert res.exit_code == 0, res.output
    assert "no regression" in res.output


def test_noise_sized_change_passes(tmp_path):
    """-8 % past a 5 % threshold, but the windows scatter by ~10 %: inside the noise -> exit 0."""
    base = write(tmp_path, "base", doc(qps=1000.0, qps_samples=(900.0, 1000.0, 1100.0)))
    new = write(tmp_path, "new", doc(qps=920.0, qps_samples=(820.0, 920.0, 1020.0)))
    res = run(base, new, "--fail", "qps:-5%")
    assert res.exit_code == 0, res.output
    assert "within noise" in res.output
    # the same -8 % between runs with tight windows is a regression
    base2 = write(tmp_path, "base2", doc(qps=1000.0, qps_samples=(998.0, 1000.0, 1002.0)))
    new2 = write(tmp_path, "new2", doc(qps=920.0, qps_samples=(918.0, 920.0, 922.0)))
    assert run(base2, new2, "--fail", "qps:-5%").exit_code == 1


def test_ne_regression_and_improvement(tmp_path):
    base = write(tmp_path, "base", doc(ne=0.85, ne_spread=0.0002))
    worse = write(tmp_path, "worse", doc(ne=0.86, ne_spread=0.0002))  # +1.2 %
    better = write(tmp_path, "better", doc(ne=0.84, ne_spread=0.0002))
    assert run(base, worse, "--fail", "ne:+0.1%").exit_code == 1
    assert run(base, better, "--fail", "ne:+0.1%").exit_code == 0
    # no sign: the direction comes from better="lower"
    assert run(base, worse, "--fail", "ne:0.1%").exit_code == 1
    # latency has no spread: any rise past the threshold counts
    slow = write(tmp_path, "slow", doc(latency=3.0))
    assert run(base, slow, "--fail", "latency_p99:+10%").exit_code == 1


def test_library_compare_statuses():
    b = doc()
    b["_source"] = "b.json"
    n = doc(qps=1200.0, qps_samples=(1199.0, 1200.0, 1201.0))
    n["_source"] = "n.json"
    cmp = compare([b], [n], [parse_rule("qps:-5%")])
    st = {r.key[3]: r.status for r in cmp.rows}
    assert st["train_qps"] == "better" and st["ne"] == "unchanged" and cmp.exit_code == 0


def test_environment_mismatch_warns(tmp_path):
    base = write(tmp_path, "base", doc(environment=env("NVIDIA H100 80GB HBM3")))
    new = write(tmp_path, "new", doc(environment=env("NVIDIA A100-SXM4-80GB")))
    res = run(base, new)
    assert res.exit_code == 0
    assert "warning" in res.output and "different GPU" in res.output


@pytest.mark.parametrize("gate", ["auc:-1%", "nee:+0.1%"])
def test_gate_matching_nothing_is_an_error(tmp_path, gate):
    # a typo in a CI gate must not pass as "no regression" while NE is 10% worse
    base = write(tmp_path, "base", doc())
    worse = write(tmp_path, "worse", doc(ne=0.935))
    res = run(base, worse, "--fail", gate)
    assert res.exit_code == 2
    assert "no metric present in both runs matches" in res.output and "ne" in res.output
    assert "Traceback" not in res.output


def test_directories_compare(tmp_path):
    write(tmp_path, "a", doc())
    write(tmp_path, "b", doc(qps=500.0, qps_samples=(499.0, 500.0, 501.0)))
    assert run(tmp_path / "a", tmp_path / "b", "--fail", "qps:-5%").exit_code == 1


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not a readable result JSON"),
    ('{"name": "some-package", "version": "1.0"}', "not a kunbench result"),
    ('[1, 2, 3]', "not a kunbench result"),
    ('{"schema_version": 99, "kind": "suite"}', "unsupported result schema_version"),
    ('{"schema_version": 1, "kind": "mystery", "metrics": []}', "unknown result kind"),
    ('{"schema_version": 1, "kind": "suite", "metrics": {"ne": 1}, "environment": {}}', "'metrics' is not a list"),
    ('{"schema_version": 1, "kind": "suite", "metrics": [{"name": "ne"}], "environment": {}}', "lacks"),
])
def test_malformed_and_foreign_files(tmp_path, content, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    good = write(tmp_path, "good", doc())
    with pytest.raises(KunbenchError) as err:
        load(bad)
    assert str(bad) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)
    res = run(good, bad)
    assert res.exit_code == 2 and "bad.json" in res.output and "Traceback" not in res.output


def test_missing_file(tmp_path):
    res = run(tmp_path / "nope.json", tmp_path / "nope2.json")
    assert res.exit_code == 2 and "nope.json" in res.output


def test_train_documents_compare(tmp_path):
    """`kunbench train` results compare too (their scalar metrics, no spread)."""
    from kunbench.results import write_result

    def train_doc(ne):
        return {"schema_version": 1, "kind": "train", "created": "2026-01-01T00:00:00+00:00", "backend": "wukong",
                "preset": "tiny", "config": {}, "dataset": {}, "metrics": {"ne": ne, "auc": 0.7},
                "environment": env(), "timing": {}}

    a = write_result(train_doc(0.85), tmp_path / "a")
    b = write_result(train_doc(0.90), tmp_path / "b")
    assert run(a, b, "--fail", "ne:+1%").exit_code == 1
    assert run(a, a, "--fail", "ne:+1%").exit_code == 0


def test_written_document_roundtrip(tmp_path):
    p = write(tmp_path, "x", doc())
    assert p.name.startswith("suite-qps-wukong-")
    d = load(p)
    assert d["schema_version"] == 1 and d["kind"] == "suite" and d["_source"] == str(p)
    raw = json.loads(p.read_text())
    assert raw["metrics"][0]["samples"] == [990.0, 1000.0, 1010.0]


def test_results_from_different_datasets_are_flagged():
    from kunbench.results.compare import environment_warnings

    a = {"environment": {}, "dataset": {"manifest_fingerprint": "aaaa"}}
    b = {"environment": {}, "dataset": {"manifest_fingerprint": "bbbb"}}
    assert any("different datasets" in w for w in environment_warnings([a], [b]))
    assert not any("different datasets" in w for w in environment_warnings([a], [dict(a)]))
