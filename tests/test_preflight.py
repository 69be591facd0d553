"""Output paths are checked before any work starts, and result files are readable by others."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from kunbench.cli import main
from kunbench.results import preflight_out_dir, write_result


@pytest.mark.parametrize("argv", [
    ["train", "-b", "wukong", "--device", "cpu"],
    ["run", "--suite", "mfu", "-b", "wukong", "--device", "cpu"],
])
def test_out_that_is_a_file_fails_before_work(tmp_path, argv, monkeypatch):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    res = CliRunner().invoke(main, [*argv, "--out", str(target)])
    assert res.exit_code == 2, res.output
    assert "exists and is not a directory" in res.output and "Traceback" not in res.output
    assert target.read_text() == "keep me"
    assert not (tmp_path / "cache").exists()  # nothing was generated or trained first


def test_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    res = CliRunner().invoke(main, ["train", "-b", "wukong", "--device", "cpu", "--out", str(tmp_path / "f" / "sub")])
    assert res.exit_code == 2 and "cannot write there" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(Exception) as exc:
        preflight_out_dir(ro / "sub")
    assert "cannot write there" in str(exc.value)


def test_result_files_are_world_readable(tmp_path):
    doc = {"schema_version": 1, "kind": "train", "backend": "x", "config": {}, "metrics": {}, "environment": {},
           "created": "now", "dataset": {}, "train_config": {}, "preset": "p", "timing": {}}
    from kunbench.results import REQUIRED_KEYS

    doc.update({k: doc.get(k, {}) for k in REQUIRED_KEYS})
    path = write_result(doc, tmp_path)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH, oct(mode)
    assert json.loads(path.read_text())["backend"] == "x"
