"""The in-memory synthetic source: same structure as the Parquet loader, deterministic, on device."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from dataset_fixture import write_contract_dataset
from kunbench.data.loader import ParquetBatches
from kunbench.data.synthetic import LengthLaw, SyntheticBatches, columns_from_config, schema_from_config
from kunbench.errors import KunbenchError
from kunbench.ops.jagged import slice_maxima
from kunbench.generators.config import PRESETS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def contract_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract_syn")
    write_contract_dataset(root, rows_per_file=(120, 80), eval_rows_per_file=(50,), seed=11, row_group_rows=32)
    return root


def _structure(b):
    return {
        "cat": (b.context_categorical.dtype, b.context_categorical.shape[1], b.context_categorical.dim()),
        "dense": (b.context_dense.dtype, b.context_dense.shape[1], b.context_dense.dim()),
        "multihot": [(k, j.values.dtype, j.offsets.dtype, j.offsets.shape[0] - b.batch_size) for k, j in b.multihot.items()],
        "seq": [(k, s.item.dtype, s.category.dtype, s.ts.dtype, s.offsets.dtype, s.offsets.shape[0] - b.batch_size)
                for k, s in b.sequences.items()],
        "request_ts": (b.request_ts.dtype, b.request_ts.shape[0] - b.batch_size),
        "labels": (b.labels.dtype, b.labels.shape[0] - b.batch_size),
        "p_true": None if b.p_true is None else b.p_true.dtype,
    }


def _check_consistent(b, schema):
    B = b.batch_size
    for c, col in zip(schema.categorical, b.context_categorical.T):
        assert int(col.min()) >= 0 and int(col.max()) < c.cardinality
    for j in list(b.multihot.values()) + list(b.sequences.values()):
        assert j.offsets.shape == (B + 1,) and int(j.offsets[0]) == 0
        assert bool((j.offsets[1:] >= j.offsets[:-1]).all())
    for e, s in b.sequences.items():
        n = int(s.offsets[-1])
        assert s.item.numel() == s.category.numel() == s.ts.numel() == n
        # the host-side length summaries a model pads by: exact, read before the model runs
        assert b.max_lengths[e] == (int(s.lengths.max()) if B else 0)
        assert b.length_slices[e] == slice_maxima(s.lengths.cpu())
        rows = torch.repeat_interleave(torch.arange(B, device=s.ts.device), s.lengths)
        assert bool((s.ts < b.request_ts[rows]).all())
        same = rows[1:] == rows[:-1]
        assert bool((s.ts[1:][same] >= s.ts[:-1][same]).all())
        cols = schema.sequence_columns[e]
        if n:
            assert int(s.item.max()) < cols["item"].cardinality and int(s.category.max()) < cols["category"].cardinality


@pytest.mark.parametrize("include_p_true", [False, True])
def test_structure_matches_file_loader(contract_dir, include_p_true):
    file_batch = next(iter(ParquetBatches(contract_dir, "train", batch_size=40, include_p_true=include_p_true)))
    src = SyntheticBatches.from_manifest(contract_dir, batch_size=40, pool_size=2, include_p_true=include_p_true)
    syn = next(iter(src))
    assert _structure(syn) == _structure(file_batch)
    assert syn.context_categorical.device == syn.sequences["click"].ts.device == torch.device("cpu")
    _check_consistent(syn, src.schema)
    # length law from the manifest's statistics: within the realized range
    for e, s in syn.sequences.items():
        assert int(s.lengths.max()) <= max(file_batch.sequences[e].lengths.max().item(), 40)


@pytest.mark.parametrize("device", DEVICES)
def test_preset_batches_on_device(device):
    cfg = PRESETS["tiny"]
    src = SyntheticBatches.from_config(cfg, batch_size=64, device=device, seed=1, pool_size=2, steps=5)
    batches = list(src)
    assert len(batches) == 5 and batches[2] is batches[0]  # cycles through the pool
    b = batches[0]
    schema = schema_from_config(cfg)
    assert b.context_categorical.shape == (64, len(schema.categorical))
    assert b.context_dense.shape == (64, len(schema.dense)) and list(b.multihot) == [c.name for c in schema.multihot]
    assert list(b.sequences) == list(cfg.events)
    for t in (b.context_categorical, b.labels, b.request_ts, *(s.ts for s in b.sequences.values())):
        assert t.device.type == device
    _check_consistent(b, schema)
    for e, s in b.sequences.items():
        ev = cfg.events[e]
        assert int(s.lengths.min()) >= ev.min_length and int(s.lengths.max()) <= ev.max_length


def test_config_schema_follows_the_contract():
    cfg = PRESETS["standard"]
    cols = columns_from_config(cfg)
    schema = schema_from_config(cfg)
    names = [c.name for c in cols]
    assert len(names) == len(set(names))
    assert [c.entity for c in schema.categorical[:4]] == ["user", "item", "item_category", "surface"]
    assert len(schema.categorical) + len(schema.dense) + len(schema.multihot) == 300
    assert all(c.cardinality and c.cardinality >= 2 for c in schema.categorical + schema.multihot)
    assert schema.event_types == tuple(cfg.events)
    assert {c.role for c in cols} >= {"request_ts", "label", "oracle"}


def test_deterministic_with_seed():
    cfg = PRESETS["tiny"]
    a = SyntheticBatches.from_config(cfg, batch_size=32, seed=5, pool_size=2).pool
    b = SyntheticBatches.from_config(cfg, batch_size=32, seed=5, pool_size=2).pool
    c = SyntheticBatches.from_config(cfg, batch_size=32, seed=6, pool_size=1).pool
    for x, y in zip(a, b):
        assert torch.equal(x.context_categorical, y.context_categorical) and torch.equal(x.labels, y.labels)
        for e in x.sequences:
            assert torch.equal(x.sequences[e].ts, y.sequences[e].ts)
            assert torch.equal(x.sequences[e].offsets, y.sequences[e].offsets)
    assert not torch.equal(a[0].context_categorical, c[0].context_categorical)
    assert not torch.equal(a[0].context_categorical, a[1].context_categorical)  # pool entries differ


def test_fixed_lengths_caps_and_selection():
    schema = schema_from_config(PRESETS["tiny"])
    src = SyntheticBatches(schema, batch_size=16, lengths={"impression": 7, "click": 0}, max_lengths={"conversion": 3},
                           event_types=["impression", "click", "conversion"], pool_size=1)
    b = src.pool[0]
    assert b.sequences["impression"].lengths.tolist() == [7] * 16
    assert b.sequences["click"].lengths.tolist() == [0] * 16 and b.sequences["click"].item.numel() == 0
    assert int(b.sequences["conversion"].lengths.max()) <= 3
    only = SyntheticBatches(schema, batch_size=4, event_types=["click"], pool_size=1)
    assert list(only.pool[0].sequences) == ["click"]
    with pytest.raises(TypeError):
        len(only)


def test_errors_are_one_liners():
    schema = schema_from_config(PRESETS["tiny"])
    for kwargs, word in (({"batch_size": 0}, "batch_size"), ({"max_lengths": {"purchase": 4}}, "purchase"),
                         ({"lengths": {"purchase": 4}}, "purchase"), ({"event_types": ["x"]}, "'x'"),
                         ({"lengths": -1}, "length"), ({"pool_size": 0}, "pool_size")):
        with pytest.raises(KunbenchError) as exc:
            SyntheticBatches(schema, **kwargs)
        assert "\n" not in str(exc.value) and word in str(exc.value)


@settings(max_examples=25, deadline=None)
@given(median=st.floats(0.5, 500), sigma=st.floats(0, 1.5), lo=st.integers(0, 50), span=st.integers(0, 600),
       seed=st.integers(0, 2**31))
def test_length_law_stays_in_bounds(median, sigma, lo, span, seed):
    law = LengthLaw(median, sigma, lo, lo + span)
    g = torch.Generator().manual_seed(seed)
    n = law.sample(200, g, torch.device("cpu"))
    assert n.dtype == torch.int64 and int(n.min()) >= lo and int(n.max()) <= lo + span


def test_generated_dataset_schema_and_structure(tiny_dataset):
    """Against the real generator (tests/conftest.py `tiny_dataset`): the config-built schema equals
    the manifest's columns, and synthetic batches have the loader's structure."""
    root = tiny_dataset
    from kunbench.data.manifest import load_manifest
    from kunbench.generators.config import config_from_dict

    manifest = load_manifest(root)
    assert columns_from_config(config_from_dict(manifest.data["config"])) == list(manifest.columns)
    file_batch = next(iter(ParquetBatches(root, "train", batch_size=64)))
    src = SyntheticBatches.from_manifest(root, batch_size=64, pool_size=1)
    assert _structure(src.pool[0]) == _structure(file_batch)
    _check_consistent(src.pool[0], manifest.schema)
