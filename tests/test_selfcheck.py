"""`kunbench selfcheck`: the kernel checks pass on this machine (interpreter on CPU) and the command
runs end to end, lists what it could not check and writes one result."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from kunbench.cli import main


def test_gdpa_checks_pass_on_cpu():
    pytest.importorskip("triton")
    from kunbench.suites.selfcheck import gdpa_checks

    rows = gdpa_checks(torch.device("cpu"))
    assert {r["mode"] for r in rows} >= {"pffn", "seed_pool", "self_attention", "jagged_op"}
    assert all(r["status"] == "pass" for r in rows), rows
    assert all(r["rel_err"] is not None and r["rel_err"] < 1e-4 for r in rows)


def _quick_selfcheck(tmp_path, monkeypatch, backends: str, *extra: str) -> dict:
    """A CPU selfcheck of the tiny presets without kernels or compile; its one result file."""
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["selfcheck", "-b", backends, "--preset", "tiny", "--device", "cpu",
                                    "--set", "selfcheck.kernels=false", "--set", "selfcheck.compile=false",
                                    "--set", "selfcheck.batch_size=16", "--set", "selfcheck.window_s=0.02",
                                    *extra, "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    files = list((tmp_path / "res").glob("suite-selfcheck-*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


def test_selfcheck_command_writes_one_result(tmp_path, monkeypatch):
    doc = _quick_selfcheck(tmp_path, monkeypatch, "wukong")
    names = {m["name"] for m in doc["metrics"]}
    assert {"train_qps", "infer_qps", "train_aten_ops_per_step"} <= names
    assert any("not checked" in n for n in doc["notes"])
    assert "GDPA kernels: skipped" in " ".join(doc["extra"]["unchecked"])


def test_a_failing_backend_is_a_row_and_the_result_is_still_written(tmp_path, monkeypatch):
    """On a lent GPU one out-of-memory backend must not lose the other backends' figures."""
    import kunbench.suites.selfcheck as sc

    real = sc.build_model

    def build(ctx, built):
        if built.spec.name == "wukong":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(ctx, built)

    monkeypatch.setattr(sc, "build_model", build)
    doc = _quick_selfcheck(tmp_path, monkeypatch, "wukong,logreg")
    assert any("wukong eager train/infer: FAIL: RuntimeError: CUDA out of memory" in u
               for u in doc["extra"]["unchecked"])
    assert any(m["name"] == "train_qps" and m["backend"] == "logreg" for m in doc["metrics"])
    assert "ratios to wukong: it has no measured round" in doc["extra"]["unchecked"]  # wukong was the baseline
    assert not any(m["name"].endswith("_speedup") for m in doc["metrics"])


def test_a_named_baseline(tmp_path, monkeypatch):
    doc = _quick_selfcheck(tmp_path, monkeypatch, "logreg,wukong", "--set", "selfcheck.baseline=wukong",
                           "--repeat", "2")
    by = {(m["backend"], m["name"]): m for m in doc["metrics"]}
    assert by[("logreg", "train_speedup")]["variant"] == "bs=16 vs wukong"
    assert len(by[("logreg", "train_speedup")]["samples"]) == 2
    assert ("wukong", "train_speedup") not in by


def test_the_compiled_run_follows_the_eager_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["selfcheck", "-b", "logreg", "--preset", "tiny", "--device", "cpu",
                                    "--set", "selfcheck.kernels=false", "--set", "selfcheck.batch_size=16",
                                    "--set", "selfcheck.window_s=0.02", "--repeat", "1", "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "res").glob("suite-selfcheck-*.json")
    doc = json.loads(path.read_text())
    names = {m["name"] for m in doc["metrics"]}
    assert {"train_qps", "compiled_train_qps", "compiled_train_compile_s"} <= names
    assert doc["tables"][-1]["rows"][0]["compiled_preset"] == "tiny"
    assert doc["config"]["baseline"] is None  # one backend: nothing to divide by


def test_a_backend_failing_in_a_round_leaves_the_rounds_and_keeps_those_it_finished(tmp_path, monkeypatch):
    import kunbench.suites.selfcheck as sc

    real = sc.ThroughputProbe.window

    def window(self):
        if self.label == "selfcheck wukong infer" and len(self.window_qps) == 1:
            raise RuntimeError("an illegal memory access was encountered (simulated)")
        return real(self)

    monkeypatch.setattr(sc.ThroughputProbe, "window", window)
    doc = _quick_selfcheck(tmp_path, monkeypatch, "logreg,wukong", "--repeat", "3")
    assert any(u.startswith("wukong eager train/infer: FAIL: RuntimeError: an illegal memory access")
               and "(in round 2 of 3); its figures are from the 1 round(s) before" in u
               for u in doc["extra"]["unchecked"])
    by = {(m["backend"], m["name"]): m for m in doc["metrics"]}
    assert len(by[("logreg", "train_qps")]["samples"]) == 3  # the others finish every round
    assert len(by[("wukong", "train_qps")]["samples"]) == len(by[("wukong", "infer_qps")]["samples"]) == 1
    ratio = by[("wukong", "train_speedup")]
    assert ratio["samples"] == pytest.approx([by[("wukong", "train_qps")]["samples"][0]
                                              / by[("logreg", "train_qps")]["samples"][0]])


def test_a_fault_that_fails_every_later_window_keeps_the_finished_rounds(tmp_path, monkeypatch):
    """A CUDA fault that poisons the context fails every window after it, of every backend."""
    import kunbench.suites.selfcheck as sc

    real, calls = sc.ThroughputProbe.window, []

    def window(self):
        calls.append(self.label)
        if len(calls) > 5:  # round 1 (4 windows) and logreg's train window of round 2 went through
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return real(self)

    monkeypatch.setattr(sc.ThroughputProbe, "window", window)
    doc = _quick_selfcheck(tmp_path, monkeypatch, "logreg,wukong", "--repeat", "3")
    qps = {m["backend"]: m["samples"] for m in doc["metrics"] if m["name"] == "train_qps"}
    assert {b: len(v) for b, v in qps.items()} == {"logreg": 1, "wukong": 1}
    assert sum("(in round 2 of 3)" in u for u in doc["extra"]["unchecked"]) == 2
    assert any(m["name"] == "train_speedup" and m["backend"] == "wukong" for m in doc["metrics"])


def test_a_baseline_that_is_not_run_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["selfcheck", "-b", "wukong,logreg", "--device", "cpu",
                                    "--set", "selfcheck.baseline=kunlun", "--out", str(tmp_path / "res")])
    assert res.exit_code != 0
    assert "selfcheck.baseline must be one of the backends run (wukong, logreg), got 'kunlun'" in res.output
    assert not list((tmp_path / "res").glob("**/*.json"))  # nothing written


def test_float32_on_a_gpu_is_held_to_tf32_precision():
    from kunbench.suites.selfcheck import TOLERANCE, tolerance

    assert tolerance(torch.float32, cuda=False) == TOLERANCE[torch.float32] == 1e-4
    assert tolerance(torch.float32, cuda=True) == 2e-3  # tl.dot rounds fp32 inputs to TF32 on a GPU
    assert tolerance(torch.bfloat16, cuda=True) == TOLERANCE[torch.bfloat16]


def test_an_nvml_query_that_fails_is_reported_not_raised(monkeypatch):
    import sys
    import types

    from kunbench.environment import gpu_info

    class NVMLError(Exception):
        pass

    def refused(*_):
        raise NVMLError("Insufficient Permissions")

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=refused, nvmlSystemGetDriverVersion=refused)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    info = gpu_info()
    assert info["available"] is False and "Insufficient Permissions" in info["reason"]


def test_op_count_leaves_out_cuda_launches_it_could_not_see(monkeypatch):
    """A CUDA step always launches kernels: a count of zero (CUPTI refused, as in some containers,
    simulated here by a CPU step) must be absent, not a measured 0."""
    import kunbench.op_count as op_count

    monkeypatch.setattr(op_count, "sync", lambda device: None)
    ops = op_count.count_ops(lambda: torch.ones(3) + 1, torch.device("cuda"))
    assert ops["aten_ops"] > 0 and "cuda_launches" not in ops
    assert op_count.count_ops(lambda: torch.ones(3) + 1, torch.device("cpu")).keys() == {"aten_ops"}


def test_on_a_gpu_the_backend_runs_default_to_bf16_unless_a_dtype_is_named():
    import types

    from kunbench.suites.context import RunOptions, SuiteContext
    from kunbench.suites.registry import get_suite

    spec = get_suite("selfcheck")
    assert spec.cuda_dtype == "bf16" and get_suite("mfu").cuda_dtype == "fp32"

    def ctx(device, **opts):
        return SuiteContext(RunOptions(suites=["selfcheck"], **opts), "selfcheck",
                            dist=types.SimpleNamespace(device=torch.device(device)), cuda_dtype=spec.cuda_dtype)

    assert ctx("cuda").dtype == "bf16"
    assert ctx("cuda").train_config().dtype == "bf16"  # the training step autocasts too, not only inference
    assert ctx("cpu").train_config().dtype == "fp32"
    assert ctx("cpu").dtype == "fp32"
    assert ctx("cuda", dtype="fp32").dtype == "fp32"
    assert ctx("cuda", sets={"train.dtype": "fp32"}).dtype == "fp32"
