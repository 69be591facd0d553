"""Generator output: the public format, determinism across workers and shard splits, resume,
refusing a different dataset."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kunbench.data.manifest import load_manifest
from kunbench.errors import KunbenchError
from kunbench.generators.config import build_config, config_from_dict
from kunbench.generators.ctr import run
from kunbench.generators.signal import calibrate
from kunbench.generators.world import build_world
from kunbench.generators.writer import plan_shards, write_shard
from kunbench.metrics import LogLossSums

# small and fast, but several shards and row groups per split
FAST = {"rows_per_shard": 256, "row_group_rows": 64, "num_categorical": 6, "num_users": 5000}


def _fast_config(rows: int = 900, **sets):
    return build_config("tiny", sets={**FAST, **sets}, rows=rows)


def _parts(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob("*/part-*.parquet"))}


def _read_split(root: Path, split: str) -> pa.Table:
    m = load_manifest(root)
    return pa.concat_tables([pq.read_table(p) for p in m.files(split)])


# ---- format ---------------------------------------------------------------------------------
def test_manifest_and_columns_follow_the_contract(tiny_dataset):
    m = load_manifest(tiny_dataset)
    d = m.data
    cfg = config_from_dict(d["config"])
    assert d["schema_version"] == 1 and d["fingerprint"] == cfg.fingerprint() and d["seed"] == cfg.seed
    names = [c.name for c in m.columns]
    assert names[:7] == ["request_ts", "click", "p_true", "user_id", "ad_id", "ad_category", "surface"]
    assert names[7] == "ctx_cat_000" and "ctx_dense_000" in names and "ctx_multihot_00" in names
    assert names[-3:] == ["seq_conversion_item", "seq_conversion_category", "seq_conversion_ts"]
    assert m.schema.event_types == ("impression", "click", "conversion") == tuple(d["event_types"])
    assert m.schema.categorical_index("item") == 1
    assert all(c.cardinality and c.cardinality >= 2 for c in m.schema.categorical)
    assert m.split_rows("train") + m.split_rows("eval") == 2000 and m.split_rows("eval") == 200

    table = pq.read_table(m.files("train")[0])
    types = {"int64": pa.int64(), "int8": pa.int8(), "float64": pa.float64(), "float32": pa.float32(),
             "list<int64>": pa.list_(pa.int64())}
    assert table.schema.names == names
    for c in m.columns:
        assert table.schema.field(c.name).type == types[c.dtype], c.name
    for c in m.schema.categorical:  # values inside the declared cardinality
        col = table.column(c.name).to_numpy()
        assert col.min() >= 0 and col.max() < c.cardinality, c.name
    for split in ("train", "eval"):
        for f in d["splits"][split]["files"]:
            pf = pq.ParquetFile(tiny_dataset / f["path"])
            assert pf.metadata.num_rows == f["rows"]
            assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
            assert all(pf.metadata.row_group(g).num_rows <= cfg.row_group_rows
                       for g in range(pf.num_row_groups))


def test_rows_sorted_by_time_and_histories_before_the_request(tiny_dataset):
    m = load_manifest(tiny_dataset)
    cfg = config_from_dict(m.data["config"])
    train, ev = _read_split(tiny_dataset, "train"), _read_split(tiny_dataset, "eval")
    ts = np.concatenate([train.column("request_ts").to_numpy(), ev.column("request_ts").to_numpy()])
    assert (np.diff(ts) >= 0).all()  # eval is the latest slice
    assert train.column("request_ts").to_numpy().max() <= ev.column("request_ts").to_numpy().min()
    for table in (train, ev):
        req = table.column("request_ts").to_numpy()
        for e, spec in cfg.events.items():
            col = table.column(f"seq_{e}_ts").combine_chunks()
            lengths = np.diff(col.offsets.to_numpy())
            assert lengths.min() >= spec.min_length and lengths.max() <= spec.max_length
            vals = col.values.to_numpy()
            rows = np.repeat(np.arange(len(req)), lengths)
            assert (vals < req[rows]).all()
            assert (vals >= req[rows] - cfg.history_span_days * 86400 - 1).all()
            same_row = rows[1:] == rows[:-1]
            assert (np.diff(vals)[same_row] >= 0).all()  # oldest to newest
            items = table.column(f"seq_{e}_item").combine_chunks()
            cats = table.column(f"seq_{e}_category").combine_chunks()
            assert np.array_equal(items.offsets.to_numpy(), col.offsets.to_numpy())
            assert ((items.values.to_numpy() % cfg.num_item_categories) == cats.values.to_numpy()).all()
        ad, adc = table.column("ad_id").to_numpy(), table.column("ad_category").to_numpy()
        assert (ad % cfg.num_item_categories == adc).all()


def test_oracle_ne_and_base_ctr_recomputed_from_the_files(tiny_dataset):
    m = load_manifest(tiny_dataset)
    for split in ("train", "eval"):
        t = _read_split(tiny_dataset, split)
        click, p = t.column("click").to_numpy(), t.column("p_true").to_numpy()
        sums = LogLossSums()
        sums.add(click, p)
        s = m.splits[split]
        assert s["oracle_ne"] == pytest.approx(sums.ne, rel=1e-9)
        assert s["base_ctr"] == pytest.approx(click.mean(), rel=1e-12)
        assert s["mean_p_true"] == pytest.approx(p.mean(), rel=1e-9)
        assert set(np.unique(click)) <= {0, 1} and ((p > 0) & (p < 1)).all()
        assert s["request_ts"]["min"] == t.column("request_ts").to_numpy().min()
        for e, st in s["lengths"].items():
            lengths = np.diff(t.column(f"seq_{e}_ts").combine_chunks().offsets.to_numpy())
            assert st["max"] == lengths.max() and st["min"] == lengths.min()
            assert st["mean"] == pytest.approx(lengths.mean())
            assert st["p50"] == int(np.percentile(lengths, 50, method="inverted_cdf"))
            assert st["p99"] == int(np.percentile(lengths, 99, method="inverted_cdf"))


# ---- determinism ----------------------------------------------------------------------------
def test_byte_identical_across_workers_and_shard_splits(tmp_path):
    cfg = _fast_config()
    one = run(cfg, tmp_path / "one", progress=False)
    assert one.manifest_written and len(one.written) == len(plan_shards(cfg)) == 5
    two = run(cfg, tmp_path / "two", workers=2, progress=False)
    assert two.manifest_written
    reference = _parts(tmp_path / "one")
    assert _parts(tmp_path / "two") == reference

    # two "machines", then merge the directories and rerun without --shard-index
    halves = [run(cfg, tmp_path / f"m{i}", num_shards=2, shard_index=i, progress=False) for i in (0, 1)]
    assert [h.manifest_written for h in halves] == [False, False]
    assert halves[0].written == ["train-00000", "train-00002", "eval-00000"]
    assert halves[1].written == ["train-00001", "train-00003"]
    merged = tmp_path / "merged"
    for i in (0, 1):
        shutil.copytree(tmp_path / f"m{i}", merged, dirs_exist_ok=True)
    final = run(cfg, merged, progress=False)
    assert final.manifest_written and final.written == [] and len(final.skipped) == 5
    assert _parts(merged) == reference
    assert json.loads((merged / "manifest.json").read_text()) == json.loads(
        (tmp_path / "one" / "manifest.json").read_text())

    other_seed = run(_fast_config(seed=1), tmp_path / "seed1", progress=False)
    assert other_seed.manifest_written and _parts(tmp_path / "seed1") != reference


def test_resume_after_interruption(tmp_path):
    cfg = _fast_config()
    root = tmp_path / "d"
    run(cfg, root, progress=False)
    reference = _parts(root)
    manifest = (root / "manifest.json").read_text()

    # an interrupted run: a shard whose sidecar never got written, a half-written temp file,
    # a shard that was never renamed into place
    (root / ".shards" / "train-00001.json").unlink()
    (root / "train" / ".part-00003.parquet.tmp").write_bytes(b"partial")
    (root / "train" / ".part-00000.parquet.tmp").write_bytes(b"stale")  # its shard is complete
    (root / ".shards" / ".train-00002.json.tmp-999").write_text("{")
    (root / "train" / "part-00003.parquet").unlink()
    (root / ".shards" / "train-00003.json").unlink()
    res = run(cfg, root, progress=False)
    assert res.written == ["train-00001", "train-00003"]
    assert sorted(res.skipped) == ["eval-00000", "train-00000", "train-00002"]
    assert _parts(root) == reference
    assert not list(root.glob("*/.part-*")) and not list(root.glob(".shards/.*"))
    assert (root / "manifest.json").read_text() == manifest

    # a damaged finished shard is detected by its checksum and regenerated
    p = root / "eval" / "part-00000.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    assert run(cfg, root, progress=False).written == ["eval-00000"]
    assert _parts(root) == reference


def _first_shard(tmp_path):
    """(write(**kwargs), train dir) for the first shard of a small dataset, nothing written yet."""
    cfg = _fast_config()
    world = build_world(cfg)
    calib = calibrate(world)
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    spec = plan_shards(cfg)[0]
    return (lambda **kw: write_shard(world, calib, spec, root, cfg.fingerprint(), **kw)), root / "train"


def test_interrupted_shard_leaves_no_partial_file(tmp_path):
    write, train = _first_shard(tmp_path)

    def boom(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write(on_chunk=boom)
    assert list(train.iterdir()) == []


def test_a_failed_row_group_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """Row groups are written on a background thread: its error reaches the caller, the writer
    thread stops, and the temp file is removed."""
    import pyarrow.parquet as pq

    write, train = _first_shard(tmp_path)
    real = pq.ParquetWriter.write_table
    calls = []

    def failing(self, table, *args, **kwargs):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        write()
    assert len(calls) == 2
    assert list(train.iterdir()) == []


# ---- the output directory -------------------------------------------------------------------
def test_refuses_a_different_dataset_unless_forced(tmp_path):
    root = tmp_path / "d"
    a = _fast_config(rows=300)
    run(a, root, progress=False)
    b = _fast_config(rows=300, seed=7)
    with pytest.raises(KunbenchError) as exc:
        run(b, root, progress=False)
    msg = str(exc.value)
    assert a.fingerprint() in msg and b.fingerprint() in msg and "--force" in msg and "\n" not in msg
    (root / "train" / "notes.txt").write_text("mine")
    res = run(b, root, force=True, progress=False)
    assert res.manifest_written and load_manifest(root).data["fingerprint"] == b.fingerprint()
    assert (root / "train" / "notes.txt").read_text() == "mine"  # --force removes only dataset files

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(KunbenchError, match="not empty"):
        run(a, other, progress=False)
    run(a, other, force=True, progress=False)
    assert (other / "keep.txt").exists() and (other / "manifest.json").exists()


@pytest.mark.parametrize("kwargs, needle", [
    ({"workers": 0}, "--workers"),
    ({"num_shards": 0}, "--num-shards"),
    ({"num_shards": 2, "shard_index": 2}, "--shard-index"),
    ({"num_shards": 2, "shard_index": -1}, "--shard-index"),
])
def test_bad_run_arguments(tmp_path, kwargs, needle):
    with pytest.raises(KunbenchError, match=needle):
        run(_fast_config(), tmp_path / "d", progress=False, **kwargs)
    assert not (tmp_path / "d").exists()


def test_rows_too_small_for_the_eval_split(tmp_path):
    with pytest.raises(KunbenchError, match="rows=4"):
        run(_fast_config(rows=4), tmp_path / "d", progress=False)
