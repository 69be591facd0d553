"""Bring your own data: a dataset without an oracle trains and reports n/a (never an invented
number), and `inspect --verify` catches every lie a manifest can tell about its data."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dataset_fixture import write_contract_dataset
from kunbench.cli import main
from kunbench.data.manifest import sha256_file
from kunbench.metrics import gap_closed


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    write_contract_dataset(root, rows_per_file=(200,), eval_rows_per_file=(100,))
    return root


def _verify(root):
    return CliRunner().invoke(main, ["inspect", str(root), "--verify"])


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def _save_manifest(root, m):
    (root / "manifest.json").write_text(json.dumps(m))


def _rewrite(root, column, change):
    """Replace one column of the first train file by change(column) and re-checksum it, so only the
    contract check can object."""
    m = _manifest(root)
    f = m["splits"]["train"]["files"][0]
    path = root / f["path"]
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i).name, change(table.column(column).combine_chunks()))
    pq.write_table(table, path)
    f.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    _save_manifest(root, m)


def test_an_honest_dataset_verifies(data):
    res = _verify(data)
    assert res.exit_code == 0 and "keeps its contract" in res.output


def test_a_cardinality_smaller_than_the_ids_is_caught(data):
    m = _manifest(data)
    for c in m["columns"]:
        if c["name"] == "seq_click_item":
            c["cardinality"] = 10
    _save_manifest(data, m)
    res = _verify(data)
    assert res.exit_code == 1
    assert "column 'seq_click_item': ID" in res.output and "outside [0, 10)" in res.output
    assert "first at row" in res.output and "train/part-00000.parquet" in res.output


def test_a_manifest_without_checksums_is_reported_not_a_traceback(data):
    m = _manifest(data)
    for f in m["splits"]["train"]["files"]:
        del f["bytes"], f["sha256"]
    _save_manifest(data, m)
    assert CliRunner().invoke(main, ["inspect", str(data)]).exit_code == 0
    res = _verify(data)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "lacks bytes, sha256" in res.output


@pytest.mark.parametrize("column, change, message", [
    ("click", lambda a: pa.array(np.where(np.arange(len(a)) == 7, 2, a.to_numpy()).astype(np.int8)),
     "label 2 is not 0 or 1 (first at row 7)"),
    ("seq_click_ts", lambda a: pa.ListArray.from_arrays(a.offsets, pa.array(a.values.to_numpy() + 10**9)),
     "after its row's request_ts"),
    ("seq_click_ts", lambda a: pa.ListArray.from_arrays(a.offsets, pa.array(-a.values.to_numpy())),
     "not sorted oldest first"),
    ("seq_click_category", lambda a: pa.ListArray.from_arrays(pa.array(np.arange(len(a) + 1, dtype=np.int32)),
                                                              pa.array(np.zeros(len(a), np.int64))),
     "list lengths differ"),  # one category per row, whatever the row's history length
])
def test_data_that_breaks_the_contract_is_caught(data, column, change, message):
    _rewrite(data, column, change)
    res = _verify(data)
    assert res.exit_code == 1, res.output
    assert message in res.output and f"column {column!r}" in res.output


def test_no_oracle_trains_and_reports_n_a(tmp_path):
    root = tmp_path / "log"
    write_contract_dataset(root, rows_per_file=(300,), eval_rows_per_file=(200,), oracle=False)
    assert _verify(root).exit_code == 0
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["train", "--backend", "wukong", "--preset", "tiny", "-d", str(root),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    (doc,) = [json.loads(p.read_text()) for p in out.glob("train-*.json")]
    metrics = doc["metrics"]
    assert metrics["ne"] > 0 and metrics["auc"] is not None
    for key in ("oracle_ne", "gap_closed", "expected_ne", "expected_gap_closed", "oracle_auc"):
        assert metrics[key] is None, key
    assert doc["dataset"]["label_source"].startswith("a test log")
    res = CliRunner().invoke(main, ["run", "--suite", "ne", "--backend", "wukong", "--preset", "tiny", "--data",
                                    str(root), "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "no oracle in this dataset" in res.output and "generator's p_true" not in res.output


def test_gap_closed_refuses_an_oracle_without_signal():
    assert math.isnan(gap_closed(0.95, 0.9999999999999997))  # a constant p_true at the base rate
    assert math.isnan(gap_closed(0.95, float("nan")))
    assert gap_closed(0.95, 0.9) == pytest.approx(0.5)


def test_event_personalization_for_any_event_names(tmp_path):
    from backend_utils import make_schema
    from kunbench.backends.registry import get_backend

    spec = get_backend("kunlun")
    schema = make_schema(event_types=("pv", "buy"))
    plain = spec.make_config("tiny")
    assert not plain.personalized(schema) and "event_personalization changes nothing" in spec.notes(plain, schema)[0]
    ranked = spec.make_config("tiny", {"stream_importance": "buy,pv"})
    assert ranked.stream_for("buy") == ranked.streams["conversion"]
    assert ranked.stream_for("pv") == ranked.streams["impression"]
    assert ranked.personalized(schema) and spec.notes(ranked, schema) == []
    named = spec.make_config("tiny", {"streams.pv.d": 8})
    assert named.personalized(schema) and named.stream_for("pv").d == 8
    with pytest.raises(Exception, match="stream_importance"):
        spec.make_config("tiny", {"stream_importance": "buy,buy"})

    # the ablation marks the switch not applicable instead of training the same model twice
    root = tmp_path / "log"
    write_contract_dataset(root, rows_per_file=(200,), eval_rows_per_file=(100,), event_types=("pv", "buy"))
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["run", "--suite", "ablation", "--data", str(root), "--device", "cpu",
                                    "--set", "ablation.rows=[full, event_personalization off]",
                                    "--set", "train.steps=2", "--set", "ablation.window_s=0.02",
                                    "--set", "ablation.windows=1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    (doc,) = [json.loads(p.read_text()) for p in out.glob("suite-ablation-*.json")]
    rows = [r["row"] for r in doc["tables"][0]["rows"]]
    assert rows == ["full", "event_personalization off (n/a: one shared stream)"], rows
    assert any("not applicable" in n for n in doc["notes"])


def test_training_stops_at_an_id_beyond_its_cardinality(data, tmp_path):
    """Checksums cannot catch a manifest that lies: the loader checks every ID as it decodes."""
    m = _manifest(data)
    for c in m["columns"]:
        if c["name"] == "seq_impression_category":
            c["cardinality"] = 3
    _save_manifest(data, m)
    res = CliRunner().invoke(main, ["train", "--backend", "wukong", "--preset", "tiny", "-d", str(data),
                                    "--out", str(tmp_path / "res")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "column 'seq_impression_category' holds ID" in res.output and "outside [0, 3)" in res.output
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("*.json"))


@pytest.mark.parametrize("no_verify", [False, True])
def test_training_refuses_floats_where_the_manifest_promises_integers(data, tmp_path, no_verify):
    """A float column where the manifest promises int64 IDs would be cast (and truncated) silently;
    the loader reads every footer before the first batch and names the column, checksums or not."""
    _rewrite(data, "ad_id", lambda a: a.cast(pa.float64()))
    res = CliRunner().invoke(main, ["train", "--backend", "wukong", "--preset", "tiny", "-d", str(data),
                                    "--out", str(tmp_path / "res"), *(["--no-verify"] if no_verify else [])])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "column 'ad_id' has type double, which does not match manifest dtype int64" in res.output
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("*.json"))


def test_verify_reads_non_null_lists_as_the_manifest_lists(data):
    """Spark writes arrays without nulls as `list<element: int64 not null>`: the same values."""
    def non_null(a):
        field = pa.field("element", pa.int64(), nullable=False)
        return pa.ListArray.from_arrays(a.offsets, a.values, type=pa.list_(field))

    _rewrite(data, "seq_click_item", non_null)
    res = _verify(data)
    assert res.exit_code == 0 and "the manifest says" not in res.output, res.output


def test_repeated_runs_without_an_oracle_write_their_result(tmp_path):
    root = tmp_path / "log"
    write_contract_dataset(root, rows_per_file=(300,), eval_rows_per_file=(200,), oracle=False)
    res = CliRunner().invoke(main, ["run", "--suite", "ne", "--backend", "logreg,wukong", "--preset", "tiny",
                                    "--data", str(root), "--device", "cpu", "--repeat", "2",
                                    "--set", "train.steps=2", "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    (doc,) = [json.loads(p.read_text()) for p in (tmp_path / "res").glob("suite-ne-*.json")]
    gap = [m for m in doc["metrics"] if m["name"] == "gap_closed"]
    assert gap and all(m["value"] is None and m["samples"] == [None, None] for m in gap)


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m["splits"]["train"]["files"].append(dict(m["splits"]["train"]["files"][0])), "is listed twice"),
    (lambda m: m["splits"]["eval"]["files"].append(dict(m["splits"]["train"]["files"][0])),
     "in training and in evaluation"),
])
def test_a_shard_listed_twice_is_caught(data, edit, fragment):
    m = _manifest(data)
    edit(m)
    for s in m["splits"].values():
        s["rows"] = sum(f["rows"] for f in s["files"])
    _save_manifest(data, m)
    res = _verify(data)
    assert res.exit_code == 1 and fragment in res.output, res.output


def test_eval_rows_must_be_the_latest(data):
    m = _manifest(data)
    f = m["splits"]["eval"]["files"][0]
    path = data / f["path"]
    table = pq.read_table(path)
    i = table.schema.get_field_index("request_ts")
    table = table.set_column(i, "request_ts", pa.array(table.column("request_ts").to_numpy() - 10**7))
    for e in ("impression", "click", "conversion"):
        j = table.schema.get_field_index(f"seq_{e}_ts")
        col = table.column(j).combine_chunks()
        table = table.set_column(j, f"seq_{e}_ts", pa.ListArray.from_arrays(col.offsets,
                                                                            pa.array(col.values.to_numpy() - 10**7)))
    pq.write_table(table, path)
    f.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    _save_manifest(data, m)
    res = _verify(data)
    assert res.exit_code == 1 and "eval rows are not the latest" in res.output, res.output


def test_a_null_request_time_is_one_line(data):
    _rewrite(data, "request_ts", lambda a: pa.array([None if i == 5 else v for i, v in enumerate(a.to_pylist())],
                                                    pa.int64()))
    res = _verify(data)
    assert res.exit_code == 1 and "column 'request_ts': null values (first at row 5)" in res.output, res.output
