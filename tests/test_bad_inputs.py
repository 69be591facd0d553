"""Bad inputs found by a hostile-user sweep: each gets one clean line (exit 2, no traceback) and
writes nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kunbench.cli import main


def _result_doc(tmp_path):
    from kunbench.results import make_document, measurement, write_result

    doc = make_document("qps", [measurement("qps", "wukong", "bs=8", "train_qps", 10.0, unit="ex/s",
                                            better="higher")], backends=["wukong"], config={}, dataset=None,
                        environment={}, timing={})
    return write_result(doc, tmp_path / "res")


def _bad_toml(tmp_path):
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe suite = 1")
    return ["run", "--suite", "mfu", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out")]


CASES = [
    ("non-UTF-8 config", _bad_toml, "is not UTF-8 text"),
    ("repeated event type", lambda t: ["generate", "--preset", "tiny", "--rows", "100", "--set",
                                       "event_types=click,click", "--out", str(t / "data")],
     "event_types names click more than once"),
    *[(f"generator {kv}", lambda t, kv=kv: ["generate", "--preset", "tiny", "--rows", "100", "--set", kv, "--out",
                                            str(t / "data")], frag)
      for kv, frag in [("request_span_days=inf", "request_span_days must be a finite number"),
                       ("start_ts=9223372036854775000", "start_ts must be epoch seconds"),
                       ("history_span_days=1e300", "history_span_days must be <= 36500"),
                       ("session_minutes=inf", "session_minutes must be a finite number"),
                       ("latent_dim=100000000", "latent_dim must be <= 4096"),
                       ("num_categorical=10000000", "num_categorical must be <= 20,000")]],
    ("a trillion rows", lambda t: ["generate", "--preset", "tiny", "--rows", "1000000000000", "--out",
                                   str(t / "data")], "rows must be <= 10,000,000,000"),
    ("report into a missing directory", lambda t: ["report", str(_result_doc(t)), "--format", "md", "-o",
                                                   str(t / "missing" / "r.md")], "does not exist"),
]


@pytest.mark.parametrize("name, make_argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(tmp_path, monkeypatch, name, make_argv, fragment):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    argv = make_argv(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.fixture
def damaged_dataset(tiny_dataset, tmp_path):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(tiny_dataset, root)
    shard = sorted((root / "train").glob("*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(raw))
    return root, shard


@pytest.mark.parametrize("command", ["train", "probe"])
def test_damaged_shard_stops_before_work(damaged_dataset, tmp_path, command):
    root, shard = damaged_dataset
    argv = (["train", "-b", "wukong", "--preset", "tiny", "-d", str(root), "--steps", "2", "--device", "cpu",
             "--no-progress", "--out", str(tmp_path / "res")] if command == "train" else ["probe", str(root)])
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    assert "is damaged" in res.output and shard.name in res.output and "sha256" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("*.json"))


def test_no_verify_trains_on_an_intact_dataset_without_hashing(tiny_dataset, tmp_path, monkeypatch):
    import kunbench.data.manifest as manifest

    def boom(m):
        raise AssertionError("verified despite --no-verify")

    monkeypatch.setattr(manifest, "verify_files", boom)
    res = CliRunner().invoke(main, ["train", "-b", "wukong", "--preset", "tiny", "-d", str(tiny_dataset), "--steps",
                                    "2", "--device", "cpu", "--no-progress", "--no-verify", "--out",
                                    str(tmp_path / "res")])
    assert res.exit_code == 0, res.output


def test_second_generate_into_a_directory_being_written_stops(tmp_path):
    import fcntl
    import os

    out = tmp_path / "data"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the directory
    try:
        res = CliRunner().invoke(main, ["generate", "--preset", "tiny", "--rows", "100", "--out", str(out)])
    finally:
        os.close(fd)
    assert res.exit_code == 2 and "being written by another kunbench generate run" in res.output
    assert list(out.iterdir()) == []  # nothing written, no lock file left
    res = CliRunner().invoke(main, ["generate", "--preset", "tiny", "--rows", "100", "--out", str(out)])
    assert res.exit_code == 0, res.output  # the lock is free again: the run goes ahead
    assert (out / "manifest.json").is_file() and not list(out.glob("*.lock"))


def _children_of(pid: int) -> list[int]:
    import os

    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as fh:
                    if any(ln.split()[1:] == [str(pid)] for ln in fh if ln.startswith("PPid:")):
                        kids.append(int(entry))
            except OSError:
                pass
    return kids


def test_generate_workers_die_with_their_parent(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-m", "kunbench", "generate", "--preset", "tiny", "--rows", "400000",
                               "--set", "rows_per_shard=25000", "--workers", "3", "--out", str(tmp_path / "d")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        children = []
        for _ in range(200):  # wait for the worker processes to start
            time.sleep(0.1)
            children = _children_of(parent.pid)
            if len(children) >= 2:
                break
        assert children, "no worker processes started"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        alive = children
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [c for c in alive if os.path.exists(f"/proc/{c}") and "Z" not in open(f"/proc/{c}/stat").read()
                     .split(")")[-1].split()[0]]
        assert not alive, f"workers {alive} outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_killed_cache_generation_resumes_instead_of_leaving_a_temp_dir(tmp_path, monkeypatch):
    from pathlib import Path

    from kunbench.cache import default_dataset

    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))

    def killed(config, out):
        (Path(out) / "shard-done").write_text("x")
        raise KeyboardInterrupt  # the run dies half way

    with pytest.raises(KeyboardInterrupt):
        default_dataset("tiny", generate=killed)
    seen = []

    def resumed(config, out):
        seen.append((Path(out) / "shard-done").is_file())
        (Path(out) / "manifest.json").write_text("{}")

    target = default_dataset("tiny", generate=resumed)
    assert seen == [True]  # the second run found the first one's work
    assert (target / "manifest.json").is_file()
    leftovers = [p.name for p in target.parent.iterdir() if p.is_dir() and p != target]
    assert leftovers == []


@pytest.mark.parametrize("option, fragment", [
    ("mfu.window_s=inf", "mfu.window_s must be a finite number > 0"),
    ("mfu.batch_size=-3", "mfu.batch_size must be an integer > 0"),
    ("selfcheck.budget_s=-1", "selfcheck.budget_s must be a finite number >= 0"),
    ("ne.bootstrap=-5", "ne.bootstrap must be an integer >= 0"),
    ("ne.baseline=nosuch", "ne.baseline='nosuch' is not one of the backends run"),
])
def test_invalid_suite_option_values(tmp_path, monkeypatch, option, fragment):
    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["run", "--suite", option.split(".")[0], "-b", "wukong", "--set", option,
                                    "--device", "cpu", "--out", str(tmp_path / "res")])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output


def test_report_skips_one_truncated_file_in_a_directory(tmp_path):
    good = _result_doc(tmp_path)
    (good.parent / "suite-broken.json").write_text(good.read_text()[:40])  # a run killed mid-write
    res = CliRunner().invoke(main, ["report", str(good.parent), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "suite-broken.json" in res.output and "train_qps" in res.output
    res = CliRunner().invoke(main, ["report", str(good.parent / "suite-broken.json")])  # named: must load
    assert res.exit_code == 2 and "Traceback" not in res.output


def _copy_with_manifest(tiny_dataset, tmp_path, edit):
    import shutil

    root = tmp_path / "edited"
    shutil.copytree(tiny_dataset, root)
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def test_verify_notices_a_removed_eval_split(tiny_dataset, tmp_path):
    root = _copy_with_manifest(tiny_dataset, tmp_path, lambda m: m["splits"].pop("eval"))
    res = CliRunner().invoke(main, ["inspect", str(root), "--verify"])
    assert res.exit_code != 0 and "no eval split" in res.output and "Traceback" not in res.output


def test_manifest_with_columns_not_a_list_is_one_line(tiny_dataset, tmp_path):
    root = _copy_with_manifest(tiny_dataset, tmp_path, lambda m: m.__setitem__("columns", {"a": 1}))
    res = CliRunner().invoke(main, ["inspect", str(root)])
    assert res.exit_code == 2 and "'columns' must be a list" in res.output and "Traceback" not in res.output


def test_generate_that_cannot_fit_on_the_disk_is_refused_first(tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))  # 1 MB free
    res = CliRunner().invoke(main, ["generate", "--preset", "small", "--rows", "100000", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "need about" in res.output and "free" in res.output
    assert not (tmp_path / "d").exists()


def test_disk_estimate_is_close_to_what_is_written(tiny_dataset):
    from kunbench.data.manifest import load_manifest
    from kunbench.generators.config import config_from_dict
    from kunbench.generators.ctr import estimated_bytes

    m = load_manifest(tiny_dataset)
    written = sum(f["bytes"] for s in m.splits.values() for f in s["files"])
    rows = sum(m.split_rows(s) for s in m.splits)
    estimate = estimated_bytes(config_from_dict(m.data["config"]), rows)
    assert 0.5 * written < estimate < 3.0 * written, (estimate, written)


# ---- a second sweep (after bring-your-own-data) ---------------------------------------------------
def _set_column(name, **kw):
    def edit(m):
        for c in m["columns"]:
            if c["name"] == name:
                c.update(kw)
    return edit


MANIFEST_CASES = [
    ("cardinality not a number", _set_column("ctx_cat_003", cardinality="big"), 2, "cardinality must be a positive"),
    ("bytes not a number", lambda m: m["splits"]["train"]["files"][0].update(bytes="x"), 2,
     "'bytes' must be a non-negative integer"),
    ("a path outside the dataset", lambda m: m["splits"]["train"]["files"][0].update(path="../../etc/hostname"), 2,
     "paths must stay inside the dataset directory"),
    ("a column left out", lambda m: m.update(columns=[c for c in m["columns"] if c["name"] != "ctx_cat_003"]), 1,
     "ctx_cat_003 are not in the manifest"),
    ("a dtype that lies", _set_column("click", dtype="float32"), 1, "the manifest says float32"),
    ("rows the files do not hold", lambda m: m["splits"]["eval"].update(files=[]), 1,
     "split 'eval' says"),
    ("no label column", lambda m: m.update(columns=[c for c in m["columns"] if c["role"] != "label"]), 1,
     "needs exactly one 'label' column"),
]


@pytest.mark.parametrize("name, edit, code, fragment", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_verify_catches_a_lying_manifest(tiny_dataset, tmp_path, name, edit, code, fragment):
    root = _copy_with_manifest(tiny_dataset, tmp_path, edit)
    res = CliRunner().invoke(main, ["inspect", str(root), "--verify"])
    assert res.exit_code == code, res.output
    assert fragment in res.output and "Traceback" not in res.output


def test_verify_reports_an_unreadable_shard_whose_checksum_matches(tiny_dataset, tmp_path):
    from kunbench.data.manifest import sha256_file

    def edit(m):
        f = m["splits"]["train"]["files"][0]
        path = tmp_path / "edited" / f["path"]
        path.write_text("not parquet")
        f.update(bytes=path.stat().st_size, sha256=sha256_file(path))

    res = CliRunner().invoke(main, ["inspect", str(_copy_with_manifest(tiny_dataset, tmp_path, edit)), "--verify"])
    assert res.exit_code == 1 and "unreadable" in res.output and "Traceback" not in res.output, res.output


def test_export_of_a_damaged_dataset_writes_nothing(damaged_dataset, tmp_path):
    root, shard = damaged_dataset
    res = CliRunner().invoke(main, ["export", str(root), "--out", str(tmp_path / "log")])
    assert res.exit_code == 2 and "is damaged" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "log").exists() or not list((tmp_path / "log").iterdir())


def test_cli_values_that_used_to_pass_silently(tiny_dataset, tmp_path):
    doc = str(_result_doc(tmp_path))
    cases = [
        (["compare", doc, doc, "--fail", "train_qps:-1%", "--noise-k", "nan"], "--noise-k must be a finite"),
        (["report", doc, "-o", str(tmp_path / "x.md")], "--output writes md or csv"),
        (["run", "--suite", "selfcheck", "--device", "cpu", "--set", "selfcheck.kernels=maybe", "--out",
          str(tmp_path / "o")], "selfcheck.kernels must be true or false"),
        (["run", "--suite", "ne", "--backend", "logreg", "--data", str(tiny_dataset), "--set", "data.rows=5",
          "--out", str(tmp_path / "o")], "with --data it would change nothing"),
    ]
    for argv, fragment in cases:
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output, (argv, res.output)


def test_train_takes_the_backend_prefix_run_takes(tiny_dataset, tmp_path):
    res = CliRunner().invoke(main, ["train", "-b", "kunlun", "--preset", "tiny", "-d", str(tiny_dataset), "--steps",
                                    "1", "--device", "cpu", "--no-progress", "--no-verify", "--set",
                                    "kunlun.stream_importance=click,nope", "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    assert "stream_importance names nope" in res.output  # an unknown type is named, not silently ranked


def test_import_force_over_a_generated_dataset_then_generate_refuses(tiny_dataset, tmp_path):
    import shutil

    out = tmp_path / "d"
    shutil.copytree(tiny_dataset, out)
    (tmp_path / "log.csv").write_text("u,i,y,ts\n" + "".join(f"{k % 5},{k % 7},{k % 2},{1000 + k}\n"
                                                               for k in range(200)))
    (tmp_path / "s.toml").write_text('[input]\npath = "log.csv"\nuser = "u"\nitem = "i"\ntimestamp = "ts"\n'
                                     'label = "y"\n[events]\nrules = [{name = "seen", when = "y >= 0"}]\n')
    res = CliRunner().invoke(main, ["import", str(tmp_path / "s.toml"), "--out", str(out), "--force", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (out / ".kunbench-dataset.json").exists() and not (out / ".shards").exists()
    before = (out / "manifest.json").read_bytes()
    res = CliRunner().invoke(main, ["generate", "--preset", "tiny", "--rows", "300", "--out", str(out)])
    assert res.exit_code == 2 and (out / "manifest.json").read_bytes() == before  # nothing lost without --force
