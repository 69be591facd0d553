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


def test_selfcheck_command_writes_one_result(tmp_path, monkeypatch):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["selfcheck", "-b", "wukong", "--preset", "tiny", "--device", "cpu",
                                    "--set", "selfcheck.kernels=false", "--set", "selfcheck.compile=false",
                                    "--set", "selfcheck.batch_size=16", "--set", "selfcheck.window_s=0.02",
                                    "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    files = list((tmp_path / "res").glob("suite-selfcheck-*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    names = {m["name"] for m in doc["metrics"]}
    assert {"train_qps", "infer_qps", "train_aten_ops_per_step"} <= names
    assert any("not checked" in n for n in doc["notes"])
    assert "GDPA kernels: skipped" in " ".join(doc["extra"]["unchecked"])
