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


def _quick_selfcheck(tmp_path, monkeypatch, backends: str) -> dict:
    """A CPU selfcheck of the tiny presets without kernels or compile; its one result file."""
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["selfcheck", "-b", backends, "--preset", "tiny", "--device", "cpu",
                                    "--set", "selfcheck.kernels=false", "--set", "selfcheck.compile=false",
                                    "--set", "selfcheck.batch_size=16", "--set", "selfcheck.window_s=0.02",
                                    "--out", str(tmp_path / "res")])
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
