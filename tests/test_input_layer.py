"""Shared input layer and jagged helpers (docs/models.md section 0)."""

from __future__ import annotations

import torch

from backend_utils import make_batch, make_schema
from kunbench.backends import jagged
from kunbench.backends.input_layer import HASH_PRIME, InputLayer, hash_ids, plan_segments
from kunbench.data.batch import EventSequence
from kunbench.ops.jagged import jagged_to_padded, padded_to_jagged


def test_hash_is_deterministic_in_range_and_pinned():
    x = torch.tensor([0, 1, 2, 12345, 2**40 - 1, 2**62, -1, -(2**40)], dtype=torch.int64)
    h = hash_ids(x)
    assert h.dtype == torch.int64
    assert bool(((h >= 0) & (h < HASH_PRIME)).all())
    assert torch.equal(h, hash_ids(x.clone()))
    # pinned values: any change to the hash silently reshuffles every trained table
    assert hash_ids(torch.tensor([0, 1, 12345])).tolist() == [
        (12_345 * 1_664_525) % HASH_PRIME,
        ((1_103_515_245 + 12_345) % HASH_PRIME) * 1_664_525 % HASH_PRIME,
        ((12345 * 1_103_515_245 + 12_345) % HASH_PRIME) * 1_664_525 % HASH_PRIME,
    ]
    # spreads consecutive ids over a small table reasonably evenly
    buckets = hash_ids(torch.arange(100_000)).remainder(1000).bincount(minlength=1000)
    assert int(buckets.max()) < 3 * 100 and int(buckets.min()) > 0


def test_segments_share_item_and_category_tables_and_cap_rows():
    schema = make_schema(n_cat=4)
    seg = plan_segments(schema, max_rows_per_field=1000)
    # ad_id and the sequence items share one segment; ad_category and sequence categories too
    keys = list(seg)
    assert "item" in keys and "category" in keys
    assert not any(k.startswith("context_categorical:ad") for k in keys)
    assert seg["item"].rows == 500 and not seg["item"].hashed  # fits: direct
    assert seg["entity:user"].rows == 1000 and seg["entity:user"].hashed  # 10^7 ids hashed into the cap
    assert seg["context_categorical:c0"].rows == 7  # cardinality 7
    offsets = sorted((s.offset, s.rows) for s in seg.values())
    for (o1, r1), (o2, _) in zip(offsets, offsets[1:]):
        assert o1 + r1 == o2  # contiguous, non-overlapping


def test_ad_and_history_item_share_rows():
    schema = make_schema(n_cat=2)
    layer = InputLayer(schema, d=8, max_rows_per_field=64, seq_max_len=16)
    batch = make_batch(schema, 4, seed=1, min_len=1)
    ad = schema.categorical_index("item")
    adc = schema.categorical_index("item_category")
    batch.context_categorical[:, ad] = 77
    batch.context_categorical[:, adc] = 5
    clicks = batch.sequences["click"]
    clicks.item[:] = 77
    clicks.category[:] = 5
    out = layer(batch)
    w = layer.table.weight
    item_row = layer.rows_for(layer.segments["item"], torch.tensor(77))
    cat_row = layer.rows_for(layer.segments["category"], torch.tensor(5))
    assert torch.allclose(out.context[:, ad], w[item_row].expand(4, -1))
    assert torch.allclose(out.context[:, adc], w[cat_row].expand(4, -1))
    seq = out.sequences[list(schema.event_types).index("click")]
    expect = (w[item_row] + w[cat_row]).expand_as(seq.tokens)
    assert torch.allclose(seq.tokens[seq.mask], expect[seq.mask])


def test_jagged_to_padded_keeps_most_recent():
    values = torch.arange(10)
    offsets = torch.tensor([0, 3, 3, 10])  # rows of length 3, 0, 7
    padded, kept, mask = jagged_to_padded(values, offsets, max_len=4, pad_value=-1)
    assert kept.tolist() == [3, 0, 4]
    assert padded.tolist() == [[0, 1, 2, -1], [-1, -1, -1, -1], [6, 7, 8, 9]]
    assert mask.tolist() == [[True] * 3 + [False], [False] * 4, [True] * 4]
    padded, kept, mask = jagged_to_padded(values, offsets, pad_to=9)
    assert padded.shape == (3, 9) and kept.tolist() == [3, 0, 7]
    vals, off = padded_to_jagged(padded, mask)
    assert torch.equal(vals, values) and torch.equal(off, offsets)
    empty, kept, mask = jagged_to_padded(torch.zeros(0, 4), torch.zeros(3, dtype=torch.int64))
    assert empty.shape == (2, 0, 4) and kept.tolist() == [0, 0]


def test_recent_index():
    idx, valid = jagged.recent_index(torch.tensor([5, 1, 0]), 2, start=3)
    assert idx.tolist() == [[6, 7], [0, 3], [0, 0]]
    assert valid.tolist() == [[True, True], [False, True], [False, False]]


def test_merge_padded_matches_python_sort():
    # the merge InterFormer's input layer runs: each stream cut to its newest 10, merged by time
    # (ties: stream order, then order in the stream), the newest 10 of the merge kept
    schema = make_schema()
    batch = make_batch(schema, 6, seed=3)
    streams = [batch.sequences[et] for et in schema.event_types]
    m = jagged.merge_padded([jagged.pad_stream(s, 10) for s in streams], 10, width=10)
    total = sum(s.lengths.clamp(max=10) for s in streams)
    assert m.kept.tolist() == total.clamp(max=10).tolist()
    for r in range(6):
        events = []
        for e, s in enumerate(streams):
            lo, hi = int(s.offsets[r]), int(s.offsets[r + 1])
            for i in range(max(lo, hi - 10), hi):
                events.append((int(s.ts[i]), e, i - lo, int(s.item[i])))
        want = sorted(events)[-10:]
        n = int(m.kept[r])
        assert n == len(want) and m.mask[r].tolist() == [True] * n + [False] * (10 - n)
        assert m.ts[r, :n].tolist() == [w[0] for w in want]
        assert m.event_type[r, :n].tolist() == [w[1] for w in want]
        assert m.item[r, :n].tolist() == [w[3] for w in want]


def test_multihot_sum_pooled_and_dense_tokens():
    schema = make_schema(n_cat=2, n_dense=5, n_multihot=2)
    layer = InputLayer(schema, d=8, max_rows_per_field=1000, n_dense_tokens=2, seq_max_len=8)
    batch = make_batch(schema, 5, seed=2)
    out = layer(batch)
    n_cat = len(schema.categorical)
    assert out.context.shape == (5, n_cat + 2 + 2, 8)
    w = layer.table.weight
    for f, col in enumerate(schema.multihot):
        jag = batch.multihot[col.name]
        seg = layer.segments[f"context_multihot:{col.name}"]
        for r in range(5):
            ids = jag.values[jag.offsets[r]:jag.offsets[r + 1]]
            want = w[layer.rows_for(seg, ids)].sum(0) if ids.numel() else torch.zeros(8)
            assert torch.allclose(out.context[r, n_cat + f], want, atol=1e-6)
    # dense groups: columns 0..2 -> token 0, 3..4 (+ zero pad) -> token 1
    x = batch.context_dense.clone()
    x[:, 3:] = 1000.0
    out2 = layer(type(batch)(**{**batch.__dict__, "context_dense": x}))
    assert torch.equal(out2.context[:, n_cat + 2], out.context[:, n_cat + 2])
    assert not torch.allclose(out2.context[:, n_cat + 3], out.context[:, n_cat + 3])


def test_sparse_embedding_gradients_and_parameter_split():
    from kunbench.backends.wukong import PRESETS, build

    schema = make_schema()
    model = build(PRESETS["tiny"], schema)
    assert PRESETS["tiny"].sparse_embeddings
    emb = model.embedding_parameters()
    dense = model.dense_parameters()
    assert len(emb) == 1 and emb[0] is model.input_layer.table.weight
    assert {id(p) for p in emb}.isdisjoint({id(p) for p in dense})
    assert len(emb) + len(dense) == len(list(model.parameters()))
    model(make_batch(schema, 4)).sum().backward()
    assert emb[0].grad.is_sparse
    assert all(p.grad is None or not p.grad.is_sparse for p in dense)


def test_empty_histories_are_fine():
    schema = make_schema()
    layer = InputLayer(schema, d=8, max_rows_per_field=100, seq_max_len=5, merge="time")
    batch = make_batch(schema, 3, lengths={et: [0, 0, 0] for et in schema.event_types})
    out = layer(batch)
    assert out.sequences[0].tokens.shape == (3, 0, 8)
    assert isinstance(batch.sequences["click"], EventSequence)


def test_merge_padded_of_all_empty_streams():
    # every stream empty in the whole batch while the merged width is positive (extra padding, or a
    # compiled bound): nothing to gather, an all-padding result
    schema = make_schema()
    batch = make_batch(schema, 3, seed=1, lengths={et: [0, 0, 0] for et in schema.event_types})
    m = jagged.merge_padded([jagged.pad_stream(batch.sequences[et], 4) for et in schema.event_types], 4, width=4)
    assert m.mask.shape == (3, 4) and not m.mask.any() and m.kept.tolist() == [0, 0, 0]
