"""The host heap setting: what `kunbench` applies before any work, how to opt out, and that results
record it (a CPU timing measured with glibc's defaults includes page faults)."""

from __future__ import annotations

import json
import platform

import pytest
from click.testing import CliRunner

from kunbench import host_allocator
from kunbench.cli import main
from kunbench.errors import KunbenchError
from kunbench.results.compare import environment_warnings

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_the_opt_out_leaves_the_c_library_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda *a: calls.append(a) or 1)
    assert host_allocator.configure({"KUNBENCH_HOST_MALLOC": "system"}) == \
        "system defaults (KUNBENCH_HOST_MALLOC=system)"
    assert calls == [] and host_allocator.status() == "system defaults (KUNBENCH_HOST_MALLOC=system)"


def test_tuned_sets_both_thresholds(monkeypatch):
    calls = []
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda *a: calls.append(a) or 1)
    assert host_allocator.configure({}) == "glibc tuned: mmap threshold 1 GiB, no trim"
    assert calls == [(host_allocator.M_MMAP_THRESHOLD, 1 << 30), (host_allocator.M_TRIM_THRESHOLD, 2**31 - 1)]


def test_a_refused_or_missing_mallopt_is_reported_as_the_defaults(monkeypatch):
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda *a: 0)
    assert host_allocator.configure({}) == "system defaults (mallopt refused the thresholds)"
    monkeypatch.setattr(host_allocator, "_glibc", lambda: None)
    assert host_allocator.configure({}) == "system defaults (not glibc)"


def test_a_bad_value_is_one_line_naming_the_variable():
    with pytest.raises(KunbenchError, match="KUNBENCH_HOST_MALLOC must be one of tuned, system, got 'fast'"):
        host_allocator.configure({"KUNBENCH_HOST_MALLOC": "fast"})


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_glibc_accepts_the_thresholds():
    assert host_allocator.configure({}) == "glibc tuned: mmap threshold 1 GiB, no trim"


def test_system_after_tuned_in_one_process_reports_the_tuned_heap(monkeypatch):
    """mallopt cannot be undone: the record must not claim glibc's defaults came back."""
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda *a: 1)
    host_allocator.configure({})
    assert host_allocator.configure({"KUNBENCH_HOST_MALLOC": "system"}).startswith("glibc tuned")


def test_a_partly_refused_setting_and_the_users_own_variables_are_recorded(monkeypatch):
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda param, value: param == host_allocator.M_MMAP_THRESHOLD)
    assert host_allocator.configure({}) == "glibc partly tuned: mmap threshold 1 GiB (mallopt refused the other)"
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda *a: 1)
    env = {"MALLOC_TRIM_THRESHOLD_": "0", "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096", "MALLOC_CHECK_": "3"}
    assert host_allocator.configure(env) == ("glibc tuned: mmap threshold 1 GiB, no trim "
                                             "(replacing GLIBC_TUNABLES, MALLOC_TRIM_THRESHOLD_)")


def test_the_timing_commands_apply_it_and_results_record_it(tmp_path, monkeypatch, tiny_dataset):
    monkeypatch.setenv("KUNBENCH_HOST_MALLOC", "tuned")
    monkeypatch.setattr(host_allocator, "_glibc", lambda: lambda *a: 1)
    res = CliRunner().invoke(main, ["run", "--suite", "qps", "-b", "logreg", "--device", "cpu", "--data",
                                    str(tiny_dataset), "--set", "qps.batch_sizes=8", "--set", "qps.window_s=0.01",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "r").glob("suite-qps-*.json")
    assert json.loads(path.read_text())["environment"]["host_malloc"] == "glibc tuned: mmap threshold 1 GiB, no trim"
    monkeypatch.setenv("KUNBENCH_HOST_MALLOC", "bogus")
    assert CliRunner().invoke(main, ["info"]).exit_code == 0  # commands that time nothing leave the heap alone
    res = CliRunner().invoke(main, ["run", "--suite", "qps", "-b", "logreg", "--device", "cpu", "--data",
                                    str(tiny_dataset), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "KUNBENCH_HOST_MALLOC must be one of tuned, system, got 'bogus'" in res.output
    assert not (tmp_path / "r2").exists()


def test_compare_notes_a_different_heap_setting_on_cpu_runs_only():
    def docs(device, heap):
        return [{"environment": {"device": device, **({"host_malloc": heap} if heap else {})}}]

    tuned = "glibc tuned: mmap threshold 1 GiB, no trim"
    warns = environment_warnings(docs("cpu", None), docs("cpu", tuned))
    assert any("host heap setting (CPU timings) differs: base not recorded vs new glibc tuned" in w for w in warns)
    assert not any("host heap" in w for w in environment_warnings(docs("cpu", tuned), docs("cpu", tuned)))
    assert not any("host heap" in w for w in environment_warnings(docs("cuda:0", None), docs("cuda:0", tuned)))
