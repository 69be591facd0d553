"""`kunbench generate` and `kunbench inspect` through click's CliRunner."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from kunbench.cli import main

FAST = ["--set", "rows_per_shard=256", "--set", "row_group_rows=128", "--set", "num_categorical=4",
        "--quiet"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_generate_then_inspect_and_verify(tmp_path):
    out = tmp_path / "d"
    r = _invoke("generate", "--preset", "tiny", "--rows", 600, "--out", out, "--seed", 5, *FAST)
    assert r.exit_code == 0, r.output
    assert "manifest written" in r.output and "oracle NE" in r.output
    r = _invoke("inspect", out)
    assert r.exit_code == 0, r.output
    for word in ("train", "eval", "context_categorical", "sequence", "impression", "oracle NE"):
        assert word in r.output
    r = _invoke("inspect", out, "--verify")
    assert r.exit_code == 0 and "verified 4 files" in r.output, r.output
    # the same command again resumes: nothing to write
    r = _invoke("generate", "--preset", "tiny", "--rows", 600, "--out", out, "--seed", 5, *FAST)
    assert r.exit_code == 0 and "wrote 0 shard(s)" in r.output and "4 already complete" in r.output


def test_verify_names_damaged_and_missing_shards(tiny_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    victim = copy / "train" / "part-00000.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x5A
    victim.write_bytes(bytes(data))
    (copy / "eval" / "part-00000.parquet").unlink()
    r = _invoke("inspect", copy, "--verify")
    assert r.exit_code == 1, r.output
    assert "damaged: train/part-00000.parquet (sha256 mismatch)" in r.output
    assert "missing: eval/part-00000.parquet" in r.output
    assert "train/part-00001.parquet" not in r.output  # intact shards are not reported


def test_inspect_of_a_non_dataset_is_a_one_line_error(tmp_path):
    _one_line_error(_invoke("inspect", tmp_path), "not a kunbench dataset")


def test_shard_index_run_explains_the_manifest(tmp_path):
    out = tmp_path / "d"
    r = _invoke("generate", "--rows", 600, "--out", out, "--num-shards", 2, "--shard-index", 1, *FAST)
    assert r.exit_code == 0, r.output
    assert "wrote shards train-00001" in r.output and "rerun without --shard-index" in r.output
    assert not (out / "manifest.json").exists()


def test_different_dataset_is_refused_without_force(tmp_path):
    out = tmp_path / "d"
    assert _invoke("generate", "--rows", 300, "--out", out, *FAST).exit_code == 0
    r = _invoke("generate", "--rows", 300, "--out", out, "--seed", 9, *FAST)
    _one_line_error(r, "holds a different dataset", "--force")
    r = _invoke("generate", "--rows", 300, "--out", out, "--seed", 9, "--force", *FAST)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, needles", [
    (["--rows", "-5"], ["-5"]),
    (["--rows", "0"], ["rows", "0"]),
    (["--preset", "huge"], ["unknown preset", "huge"]),
    (["--set", "no_such_knob=1"], ["no_such_knob"]),
    (["--set", "events.click.median_length=1000"], ["events.click.median_length", "1000"]),
    (["--set", "events.click.min_length=80"], ["events.click", "80"]),
    (["--set", "events.nope.value=2"], ["nope"]),
    (["--set", "base_ctr=1.5"], ["base_ctr", "1.5"]),
    (["--set", "signal.cross=-1"], ["signal.cross", "-1"]),
    (["--set", "zipf_exponent=abc"], ["zipf_exponent", "abc"]),
    (["--set", "cardinality_min=1"], ["cardinality_min", "1"]),
    (["--set", "noequals"], ["noequals"]),
    (["--num-shards", "0"], ["--num-shards", "0"]),
    (["--num-shards", "2", "--shard-index", "5"], ["--shard-index", "5"]),
    (["--workers", "0"], ["--workers", "0"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--rows", "5"], ["rows=5", "eval"]),
])
def test_bad_knobs_are_one_line_errors(tmp_path, args, needles):
    r = _invoke("generate", "--out", tmp_path / "d", "--quiet", *args)
    _one_line_error(r, *needles)


def test_config_file(tmp_path):
    cfg = tmp_path / "gen.toml"
    cfg.write_text('preset = "tiny"\nrows = 400\nevent_types = ["impression", "like"]\n'
                   "rows_per_shard = 256\n[events.like]\nmedian_length = 5\nmax_length = 10\n"
                   "[signal]\ncross = 0.0\n")
    out = tmp_path / "d"
    r = _invoke("generate", "--config", cfg, "--out", out, "--quiet", "--set", "signal.context=0.2")
    assert r.exit_code == 0, r.output
    from kunbench.data.manifest import load_manifest

    m = load_manifest(out)
    assert m.schema.event_types == ("impression", "like")
    assert m.data["config"]["signal"]["cross"] == 0.0 and m.data["config"]["signal"]["context"] == 0.2
    assert m.data["splits"]["train"]["lengths"]["like"]["max"] <= 10
    bad = tmp_path / "bad.toml"
    bad.write_text("rows = [")
    _one_line_error(_invoke("generate", "--config", bad, "--out", tmp_path / "e"), "bad.toml")
