"""`kunbench train` and `kunbench list` through click's CliRunner: one-line errors (exit 2) and a
full run on a small dataset with the toy backend registered by monkeypatching the registry."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from dataset_fixture import write_contract_dataset
from kunbench.backends import registry
from kunbench.cli import main
from toy_backend import toy_spec


@pytest.fixture()
def toy_registered(monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")  # rich wraps at 80 columns off a terminal; the message has no newline
    module = types.ModuleType("toy_registered")
    module.SPEC = toy_spec()
    monkeypatch.setitem(sys.modules, "toy_registered", module)
    monkeypatch.setitem(registry.BUILTIN_MODULES, "toy", "toy_registered")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    write_contract_dataset(root, rows_per_file=(300,), eval_rows_per_file=(200,))
    return root


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--backend", "nope"], ["unknown backend 'nope'"]),
    (["--backend", "toy", "--preset", "huge"], ["no preset 'huge'"]),
    (["--backend", "toy", "--set", "bogus=1"], ["unknown config key 'bogus'"]),
    (["--backend", "toy", "--set", "noequals"], ["key=value"]),
    (["--backend", "toy", "--set", "train.embedding_optimizer=sgd"], ["embedding_optimizer"]),
    (["--backend", "toy", "--device", "tpu"], ["unknown device"]),
    (["--backend", "toy", "--lr", "-1"], ["lr must be > 0"]),
])
def test_bad_flags_give_one_line(toy_registered, data_dir, args, needles):
    result = CliRunner().invoke(main, ["train", "--data", str(data_dir), *args])
    _one_line_error(result, *needles)


def test_missing_data_dir_gives_one_line(toy_registered, tmp_path):
    _one_line_error(CliRunner().invoke(main, ["train", "--backend", "toy", "--data", str(tmp_path / "x")]),
                    "no such dataset")
    _one_line_error(CliRunner().invoke(main, ["train", "--backend", "toy", "--data", str(tmp_path)]),
                    "not a kunbench dataset")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_gives_one_line(toy_registered, data_dir):
    _one_line_error(CliRunner().invoke(main, ["train", "--backend", "toy", "--data", str(data_dir),
                                              "--device", "cuda"]), "CUDA is not available")
    _one_line_error(CliRunner().invoke(main, ["train", "--backend", "toy", "--data", str(data_dir),
                                              "--device", "cpu", "--dtype", "bf16"]), "bf16")


def test_nan_in_training_gives_one_line_naming_the_step(toy_registered, data_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--backend", "toy", "--data", str(data_dir), "--set",
                                       "nan_after=3", "--batch-size", "32", "--no-progress",
                                       "--out", str(tmp_path)])
    _one_line_error(result, "step 3", "not finite")


def test_train_runs_and_writes_result(toy_registered, data_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--backend", "toy", "--data", str(data_dir), "--steps", "3",
                                       "--batch-size", "64", "--seed", "1", "--set", "d=4",
                                       "--set", "train.clip_grad_norm=0.5", "--out", str(tmp_path),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for label in ("NE", "oracle NE", "gap closed", "AUC", "calibration", "params", "FLOPs / example",
                  "train examples/s", "eval examples/s"):
        assert label in result.output
    files = list(tmp_path.glob("train-toy-*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["config"]["d"] == 4 and doc["train_config"]["clip_grad_norm"] == 0.5
    assert doc["train_config"]["seed"] == 1 and doc["metrics"]["train"]["steps"] == 3


def test_list_shows_backends_generators_suites(toy_registered):
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0, result.output
    for needle in ("backend", "wukong", "interformer", "toy", "generator", "ctr", "suite"):
        assert needle in result.output


def test_default_dataset_is_generated_once(monkeypatch, tmp_path):
    from kunbench import cache

    monkeypatch.setenv("KUNBENCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_generate(config, out_dir):
        calls.append(out_dir)
        write_contract_dataset(out_dir, rows_per_file=(50,), eval_rows_per_file=(20,))

    first = cache.default_dataset(generate=fake_generate)
    second = cache.default_dataset(generate=fake_generate)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "datasets" and first.name.startswith("small-")
    assert (first / "manifest.json").is_file()
    assert [p.name for p in first.parent.iterdir() if not p.name.startswith(".")] == [first.name]
