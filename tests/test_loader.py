"""The Parquet loader against contract datasets written by tests/dataset_fixture.py."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings, strategies as st

from dataset_fixture import row_id_of, write_contract_dataset
from kunbench.data.jagged import arrow_list_to_numpy, lengths_to_offsets_np, truncate_recent_index_np
from kunbench.data.loader import ParquetBatches, make_dataloader, measure_loader
from kunbench.errors import KunbenchError
from kunbench.ops.jagged import lengths_to_offsets, segment_ids, slice_maxima, to_padded, truncate_recent

TRAIN_FILES = (300, 0, 250, 90)
EVAL_FILES = (130, 70)


@pytest.fixture(scope="module")
def contract_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    write_contract_dataset(root, rows_per_file=TRAIN_FILES, eval_rows_per_file=EVAL_FILES, seed=3, row_group_rows=64)
    return root


def _rows_by_id(root, split: str) -> dict[int, dict]:
    manifest = json.loads((root / "manifest.json").read_text())
    out = {}
    for f in manifest["splits"][split]["files"]:
        for row in pq.read_table(root / f["path"]).to_pylist():
            out[int(row_id_of(row["request_ts"]))] = row
    return out


def _ids(batch) -> list[int]:
    return row_id_of(batch.request_ts).tolist()


# ---- coverage: every row exactly once ------------------------------------------------------
@pytest.mark.parametrize("shuffle_seed", [None, 7])
def test_every_row_seen_exactly_once_across_workers_and_ranks(contract_dir, shuffle_seed):
    seen = Counter()
    per_rank = []
    for rank in range(2):
        ds = ParquetBatches(contract_dir, "train", batch_size=37, shuffle_seed=shuffle_seed, rank=rank, world_size=2)
        ds.set_epoch(1)
        ids = [i for b in make_dataloader(ds, num_workers=2) for i in _ids(b)]
        per_rank.append(len(ids))
        seen.update(ids)
    n = sum(TRAIN_FILES)
    assert sorted(seen) == list(range(n))
    assert set(seen.values()) == {1}
    assert all(k > 0 for k in per_rank)  # both ranks got work
    assert per_rank == [ds.rows_for(r, 2, num_workers=2) for r in range(2)]


def test_unit_partition_has_no_duplicates_or_losses(contract_dir):
    ds = ParquetBatches(contract_dir, "train", batch_size=8, shuffle_seed=1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for world in (1, 2, 3):
            for workers in (1, 2, 4):
                got = Counter(u for r in range(world) for w in range(workers) for u in ds.units_for(r, world, w, workers))
                assert got == Counter(ds.units)
        order = ds.unit_order()
        assert ds.units_for(1, 2, 1, 2) == order[3::4]  # unit k -> global worker k % total


def test_shuffle_is_deterministic_per_epoch(contract_dir):
    ds = ParquetBatches(contract_dir, "train", batch_size=64, shuffle_seed=5)
    ds.set_epoch(0)
    a = [i for b in ds for i in _ids(b)]
    b_ = [i for b in ds for i in _ids(b)]
    ds.set_epoch(1)
    c = [i for b in ds for i in _ids(b)]
    assert a == b_ and a != c and sorted(a) == sorted(c) == list(range(sum(TRAIN_FILES)))


def test_torch_distributed_rank_is_used(contract_dir, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    ds = ParquetBatches(contract_dir, "train", batch_size=1000)
    got = sorted(i for b in ds for i in _ids(b))
    expect = sorted(i for b in ParquetBatches(contract_dir, "train", batch_size=1000, rank=1, world_size=2)
                    for i in _ids(b))
    assert got == expect and 0 < len(got) < sum(TRAIN_FILES)


# ---- values ----------------------------------------------------------------------------------
def test_values_match_pyarrow_with_truncation(contract_dir):
    max_lengths = {"impression": 3, "click": 0}
    ds = ParquetBatches(contract_dir, "train", batch_size=100, max_lengths=max_lengths)
    rows = _rows_by_id(contract_dir, "train")
    schema = ds.schema
    cat_names = [c.name for c in schema.categorical]
    assert cat_names[:4] == ["user_id", "ad_id", "ad_category", "surface"]
    dense_names = [c.name for c in schema.dense]
    saw_empty = saw_cut = False
    checked = 0
    batches = list(ds)
    assert sum(b.batch_size for b in batches) == len(rows)
    assert [b.batch_size for b in batches][:-1] == [100] * (len(batches) - 1)
    for b in batches:
        assert b.p_true is None
        for et, seq in b.sequences.items():  # host-side length summaries of the cut rows
            assert b.max_lengths[et] == int(seq.lengths.max())
            assert b.length_slices[et] == slice_maxima(seq.lengths)
        assert b.context_categorical.dtype == torch.int64 and b.context_dense.dtype == torch.float32
        assert b.labels.dtype == torch.float32 and b.request_ts.dtype == torch.int64
        for i, rid in enumerate(_ids(b)):
            row = rows[rid]
            assert b.context_categorical[i].tolist() == [row[n] for n in cat_names]
            assert b.context_dense[i].tolist() == pytest.approx([row[n] for n in dense_names])
            assert b.labels[i].item() == row["click"]
            for name, jag in b.multihot.items():
                assert jag.values[jag.offsets[i]:jag.offsets[i + 1]].tolist() == row[name]
            for et, seq in b.sequences.items():
                lo, hi = seq.offsets[i].item(), seq.offsets[i + 1].item()
                n = max_lengths.get(et)
                for part, t in (("item", seq.item), ("category", seq.category), ("ts", seq.ts)):
                    full = row[f"seq_{et}_{part}"]
                    want = full if n is None else (full[max(len(full) - n, 0):] if n else [])
                    assert t[lo:hi].tolist() == want
                    saw_empty |= not full
                    saw_cut |= n is not None and len(full) > n > 0
            checked += 1
    assert checked == len(rows) and saw_empty and saw_cut


def test_sequences_sorted_and_before_request(contract_dir):
    for b in ParquetBatches(contract_dir, "eval", batch_size=64):
        for seq in b.sequences.values():
            assert seq.offsets.dtype == torch.int64 and seq.offsets.shape == (b.batch_size + 1,)
            assert seq.offsets[0] == 0 and seq.offsets[-1] == seq.item.numel() == seq.ts.numel()
            rows = torch.repeat_interleave(torch.arange(b.batch_size), seq.lengths)
            assert bool((seq.ts < b.request_ts[rows]).all())
            same = rows[1:] == rows[:-1]
            assert bool((seq.ts[1:][same] >= seq.ts[:-1][same]).all())


def test_p_true_only_when_asked(contract_dir):
    rows = _rows_by_id(contract_dir, "eval")
    b = next(iter(ParquetBatches(contract_dir, "eval", batch_size=50, include_p_true=True)))
    assert b.p_true.dtype == torch.float64
    assert b.p_true.tolist() == [rows[i]["p_true"] for i in _ids(b)]
    assert next(iter(ParquetBatches(contract_dir, "eval", batch_size=50))).p_true is None


def test_event_type_selection_drop_last_and_num_rows(contract_dir):
    ds = ParquetBatches(contract_dir, "eval", batch_size=64, event_types=["click"], drop_last=True)
    assert ds.num_rows == sum(EVAL_FILES)
    batches = list(ds)
    assert all(b.batch_size == 64 for b in batches) and len(batches) == sum(EVAL_FILES) // 64
    assert list(batches[0].sequences) == ["click"]


def test_worker_batches_equal_in_process_batches(contract_dir):
    """Workers build batches in one shared-memory arena; the values must be the same."""
    ds = ParquetBatches(contract_dir, "eval", batch_size=50, max_lengths={"impression": 4}, include_p_true=True)
    local = list(ds)
    remote = list(make_dataloader(ds, num_workers=1))
    assert len(local) == len(remote) and sum(b.batch_size for b in remote) == sum(EVAL_FILES)
    for x, y in zip(local, remote):
        for a, b in ((x.context_categorical, y.context_categorical), (x.context_dense, y.context_dense),
                     (x.request_ts, y.request_ts), (x.labels, y.labels), (x.p_true, y.p_true)):
            assert a.dtype == b.dtype and torch.equal(a, b)
        for k in x.multihot:
            assert torch.equal(x.multihot[k].values, y.multihot[k].values)
            assert torch.equal(x.multihot[k].offsets, y.multihot[k].offsets)
        for k in x.sequences:
            for f in ("item", "category", "ts", "offsets"):
                assert torch.equal(getattr(x.sequences[k], f), getattr(y.sequences[k], f))


def test_measure_loader_runs(contract_dir):
    res = measure_loader(contract_dir, "train", num_workers=0, batch_size=128)
    assert res["rows"] == sum(TRAIN_FILES) and res["rows_per_s"] > 0


# ---- errors ------------------------------------------------------------------------------------
def _one_line_error(fn, *words):
    with pytest.raises(KunbenchError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_errors_are_one_liners(contract_dir, tmp_path):
    _one_line_error(lambda: ParquetBatches(tmp_path / "nope"), "does not exist")
    _one_line_error(lambda: ParquetBatches(tmp_path), "manifest.json")
    _one_line_error(lambda: ParquetBatches(contract_dir, "test"), "'test'")
    _one_line_error(lambda: ParquetBatches(contract_dir, max_lengths={"purchase": 3}), "'purchase'")
    _one_line_error(lambda: ParquetBatches(contract_dir, event_types=["purchase"]), "'purchase'")
    _one_line_error(lambda: ParquetBatches(contract_dir, max_lengths=-1), "max length")
    for bad in (0, -3, 2.5, True, "8"):
        _one_line_error(lambda: ParquetBatches(contract_dir, batch_size=bad), "batch_size")
    _one_line_error(lambda: ParquetBatches(contract_dir, rank=2, world_size=2), "rank")


def test_missing_or_mismatched_shard_is_named(contract_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(contract_dir, broken)
    target = broken / "train" / "part-00002.parquet"
    table = pq.read_table(target)
    pq.write_table(table.drop(["ctx_dense_001"]), target, compression="zstd")
    _one_line_error(lambda: ParquetBatches(broken, "train"), "part-00002.parquet", "ctx_dense_001")
    ParquetBatches(broken, "eval")  # other split unaffected
    target.unlink()
    _one_line_error(lambda: ParquetBatches(broken, "train"), "part-00002.parquet", "missing")


def test_generated_tiny_dataset_loads(tiny_dataset):
    """The real generator's output (tests/conftest.py `tiny_dataset`) through the loader."""
    root = tiny_dataset
    for split in ("train", "eval"):
        ds = ParquetBatches(root, split, batch_size=128, max_lengths=16, include_p_true=True)
        ids = Counter()
        for b in make_dataloader(ds, num_workers=2):
            assert b.context_categorical.shape[1] == len(ds.schema.categorical)
            assert b.context_dense.shape[1] == len(ds.schema.dense)
            assert b.p_true is not None and bool(((b.p_true > 0) & (b.p_true < 1)).all())
            for seq in b.sequences.values():
                assert seq.lengths.numel() == b.batch_size and int(seq.lengths.max()) <= 16
                rows = torch.repeat_interleave(torch.arange(b.batch_size), seq.lengths)
                assert bool((seq.ts < b.request_ts[rows]).all())
            ids.update((b.request_ts.tolist()))
        assert sum(ids.values()) == ds.num_rows == ds.manifest.split_rows(split)
    # values of the first row group equal pyarrow's, most recent 16 events kept
    ds = ParquetBatches(root, "train", batch_size=50, max_lengths=16)
    rows = pq.ParquetFile(ds.paths[0]).read_row_group(0).to_pylist()[:50]
    b = next(iter(ds))
    cat_names = [c.name for c in ds.schema.categorical]
    for i, row in enumerate(rows):
        assert b.request_ts[i].item() == row["request_ts"] and b.labels[i].item() == row["click"]
        assert b.context_categorical[i].tolist() == [row[n] for n in cat_names]
        for et, seq in b.sequences.items():
            lo, hi = seq.offsets[i].item(), seq.offsets[i + 1].item()
            assert seq.ts[lo:hi].tolist() == row[f"seq_{et}_ts"][-16:]
            assert seq.item[lo:hi].tolist() == row[f"seq_{et}_item"][-16:]


# ---- jagged helpers (property tests) -----------------------------------------------------------
lists = st.lists(st.lists(st.integers(-1000, 1000), max_size=12), max_size=10)


def _jag(rows):
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    values = np.array([x for r in rows for x in r], dtype=np.int64)
    return values, lengths_to_offsets_np(lengths)


@settings(max_examples=60, deadline=None)
@given(rows=lists, n=st.integers(0, 14))
def test_truncate_recent_keeps_the_newest(rows, n):
    values, offsets = _jag(rows)
    index, o = truncate_recent_index_np(offsets, n)
    v = values if index is None else values[index]
    got = [v[o[i]:o[i + 1]].tolist() for i in range(len(rows))]
    assert got == [r[max(len(r) - n, 0):] for r in rows]
    tv, to = truncate_recent(torch.from_numpy(values), torch.from_numpy(offsets), n)
    assert tv.tolist() == v.tolist() and to.tolist() == o.tolist()


@settings(max_examples=40, deadline=None)
@given(rows=lists)
def test_offsets_and_segment_ids_in_numpy_and_torch_agree(rows):
    values, offsets = _jag(rows)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    assert lengths_to_offsets(lengths).tolist() == offsets.tolist()
    rows_of = [i for i, r in enumerate(rows) for _ in r]  # empty rows own no value
    off = torch.from_numpy(offsets)
    assert segment_ids(off).tolist() == rows_of and segment_ids(off, len(values)).tolist() == rows_of


@settings(max_examples=40, deadline=None)
@given(rows=lists, n=st.integers(1, 14), split=st.integers(0, 10))
def test_padded_and_arrow_views(rows, n, split):
    values, offsets = _jag(rows)
    pad, mask = to_padded(torch.from_numpy(values), torch.from_numpy(offsets), max_len=n)
    for i, r in enumerate(rows):
        keep = r[max(len(r) - n, 0):]
        assert pad[i][mask[i]].tolist() == keep
        assert mask[i].tolist() == [False] * (pad.shape[1] - len(keep)) + [True] * len(keep)
    k = min(split, len(rows))
    arr = pa.array(rows, pa.list_(pa.int64())).slice(k)
    av, ao = arrow_list_to_numpy(arr)
    assert [av[ao[i]:ao[i + 1]].tolist() for i in range(len(ao) - 1)] == rows[k:]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 500), max_size=40), slices=st.integers(1, 9))
def test_slice_maxima_are_each_equal_count_slices_longest_row(lengths, slices):
    got = slice_maxima(torch.tensor(lengths, dtype=torch.int64), slices)
    assert got.rows == len(lengths)
    got = got.maxima
    b = len(lengths)
    assert len(got) == min(slices, b)
    ordered = sorted(lengths)
    s = len(got)
    for i, w in enumerate(got):
        part = ordered[i * b // s:(i + 1) * b // s]
        assert part and w == max(part)
    assert not got or got[-1] == max(lengths)
