"""Result JSON: atomic writes, unique names, and the train document's schema."""

from __future__ import annotations

import json
import os

import pytest

from dataset_fixture import write_contract_dataset
from kunbench.errors import KunbenchError
from kunbench.results import store as results
from kunbench.train.config import TrainConfig
from kunbench.results import RESULT_SCHEMA_VERSION, REQUIRED_KEYS, write_result
from kunbench.results import load as read_result
from kunbench.train.runner import run_training
from toy_backend import toy_spec


def _doc(**kw):
    doc = {k: {} for k in REQUIRED_KEYS}
    doc.update(schema_version=RESULT_SCHEMA_VERSION, kind="train", backend="toy", created="now")
    doc.update(kw)
    return doc


def test_atomic_write_unique_names_and_no_temp_files(tmp_path):
    paths = {write_result(_doc(metrics={"ne": 0.9, "nan": float("nan")}), tmp_path) for _ in range(20)}
    assert len(paths) == 20
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)  # no .tmp left behind
    doc = read_result(next(iter(paths)))
    assert doc["metrics"] == {"ne": 0.9, "nan": None}  # JSON has no NaN
    assert all(p.name.startswith("train-toy-") and p.suffix == ".json" for p in paths)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(results.json, "dump", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_result(_doc(), tmp_path)
    assert os.listdir(tmp_path) == []


def test_replace_is_atomic_over_an_existing_file(tmp_path):
    target = tmp_path / "r.json"
    results.atomic_write_json(target, {"a": 1})
    results.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["r.json"]


def test_incomplete_documents_and_bad_files_are_refused(tmp_path):
    with pytest.raises(KunbenchError, match="lacks"):
        write_result({"kind": "train"}, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(KunbenchError, match="not a readable result"):
        read_result(bad)
    bad.write_text('{"schema_version": 99}')
    with pytest.raises(KunbenchError, match="schema_version"):
        read_result(bad)


def test_train_result_schema(tmp_path):
    data = tmp_path / "data"
    write_contract_dataset(data, rows_per_file=(400,), eval_rows_per_file=(300,))
    run = run_training("toy", data, spec=toy_spec(), train_cfg=TrainConfig(batch_size=64, steps=4),
                       out_dir=tmp_path / "out", device="cpu")
    assert run.path.parent == tmp_path / "out"
    doc = read_result(run.path)
    assert doc.pop("_source") == str(run.path)
    assert doc == json.loads(json.dumps(results._jsonable(run.document)))
    for key in REQUIRED_KEYS:
        assert key in doc
    assert doc["kind"] == "train" and doc["backend"] == "toy" and doc["preset"] == "small"
    assert doc["config"] == {"d": 8, "max_rows_per_field": 4096, "sparse": False, "nan_after": 0}
    assert doc["train_config"]["steps"] == 4 and doc["train_config"]["batch_size"] == 64
    ds = doc["dataset"]
    assert ds["path"] == str(data.resolve()) and len(ds["manifest_fingerprint"]) == 16
    assert ds["eval_rows"] == 300 and ds["train_rows"] == 400
    m = doc["metrics"]
    for key in ("ne", "auc", "logloss", "calibration", "oracle_ne", "oracle_ne_manifest", "gap_closed", "params",
                "embedding_params", "dense_params", "flops_per_example", "train_examples_per_s",
                "eval_examples_per_s"):
        assert key in m, key
    assert m["oracle_ne"] == pytest.approx(m["oracle_ne_manifest"], abs=1e-9)
    assert m["train"]["steps"] == 4 and m["examples"] == 300
    assert m["params"] == m["embedding_params"] + m["dense_params"] > 0
    env = doc["environment"]
    for key in ("python", "torch", "git_sha", "hostname", "device", "dtype", "world_size"):
        assert key in env
    assert set(doc["timing"]) >= {"train_s", "eval_s", "total_s"}
