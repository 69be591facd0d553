"""`kunbench import`: an interaction log becomes a dataset in the contract (docs/data.md section 10).

Three streaming passes over the input, so memory holds the ID vocabularies and one bucket of
users, never the whole log:
1. the vocabularies (users, items, categories) and the request rows' timestamps (for the split);
2. every interaction, with dense IDs, into one of `buckets` files by user;
3. one bucket at a time: each request row gets its histories, the user's strictly earlier
   interactions of each event type (newest `history_max` kept), and the rows go to
   `train/` or `eval/` by time (the latest `eval_fraction` of request rows are eval).
IDs are remapped to dense ranges in sorted order of their text (the maps are kept in ids/); the
output is the same bytes whatever the input's file order within a file. A killed import resumes:
pass 1-2 and every finished bucket are kept under `.import/` until the manifest is written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kunbench.data.manifest import sha256_file
from kunbench.errors import KunbenchError
from kunbench.importer.spec import TIMESTAMP_UNITS, ImportSpec, Source

GENERATOR = "kunbench.importer"
FORMAT_VERSION = 2  # what the files hold (2: category 0 = unknown); part of the fingerprint, so a
# resume never mixes an older importer's work files with this one's
WORK = ".import"
READ_ROWS = 1 << 18


@dataclass
class Vocab:
    users: pa.Array
    items: pa.Array
    categories: pa.Array | None  # None: no category anywhere (one category, 0)
    request_ts: np.ndarray  # sorted distinct timestamps of request rows ...
    request_counts: np.ndarray  # ... and how many request rows have each
    ts_min: int
    ts_max: int


# ---- reading -------------------------------------------------------------------------------------
def _dataset(source: Source) -> ds.Dataset:
    fmt: Any = source.format
    if fmt == "csv":
        import pyarrow.csv as pacsv

        read = pacsv.ReadOptions(column_names=list(source.columns) or None, block_size=1 << 24)
        fmt = ds.CsvFileFormat(parse_options=pacsv.ParseOptions(delimiter=source.delimiter), read_options=read)
    try:
        return ds.dataset(str(source.path), format=fmt)
    except (pa.ArrowInvalid, OSError) as exc:
        raise KunbenchError(f"{source.path}: cannot read it as {source.format} ({str(exc).splitlines()[0]})") from None


def _columns(spec: ImportSpec) -> list[str]:
    cols = [spec.user, spec.item, spec.timestamp]
    for c in [spec.category, spec.event_column, spec.requests.column if spec.requests else None]:
        if c:
            cols.append(c)
    cond = spec.label_condition
    cols.append(cond.column if cond else spec.label)
    cols += [c.column for _, c in spec.event_rules]
    return list(dict.fromkeys(cols))


def _batches(spec: ImportSpec):
    data = _dataset(spec.source)
    if not data.files:
        raise KunbenchError(f"input.path: no data files in {spec.path}")
    missing = [c for c in _columns(spec) if c not in data.schema.names]
    if missing:
        raise KunbenchError(f"input {spec.path}: no column {missing[0]!r} (has {', '.join(data.schema.names)})")
    try:
        for batch in data.to_batches(columns=_columns(spec), batch_size=READ_ROWS):
            if batch.num_rows:
                yield batch
    except pa.ArrowInvalid as exc:
        raise KunbenchError(f"input {spec.path}: {str(exc).splitlines()[0]}") from None


def _text(a: pa.Array) -> pa.Array:
    return pc.cast(a, pa.string()) if not pa.types.is_string(a.type) else a


# seconds from 1970 that no log reaches (about 3,170 years): a larger value counts a finer unit
MAX_SECONDS = 10**11


def _seconds(a: pa.Array, name: str, unit: str = "s") -> np.ndarray:
    """Whole seconds, rounded down. A timestamp column carries its unit; a number counts `unit`
    (`input.timestamp_unit`), and one more than 3,000 years from 1970 is refused rather than
    taken as seconds (milliseconds read as seconds put every event thousands of years apart)."""
    if a.null_count:
        raise KunbenchError(f"input.timestamp: column {name!r} has empty values")
    if pa.types.is_timestamp(a.type):  # any unit: whole seconds, rounded down
        return (pc.cast(a, pa.int64()).to_numpy() // TIMESTAMP_UNITS[a.type.unit]).astype(np.int64)
    per_second = TIMESTAMP_UNITS[unit]
    if pa.types.is_floating(a.type):
        values = a.to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():
            raise KunbenchError(f"input.timestamp: column {name!r} holds NaN or infinite values")
        secs = np.floor(values / per_second)
        secs = np.clip(secs, -MAX_SECONDS - 1, MAX_SECONDS + 1).astype(np.int64)  # past the check below: refused
    elif pa.types.is_integer(a.type):
        raw = a.to_numpy()
        if raw.dtype == np.uint64 and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
            raise KunbenchError(f"input.timestamp: column {name!r} holds values beyond int64")
        secs = raw.astype(np.int64) // per_second
    else:
        raise KunbenchError(f"input.timestamp: column {name!r} is {a.type}, not a number or a timestamp")
    if secs.size and max(int(secs.max()), -int(secs.min())) > MAX_SECONDS:
        top = float(max(int(secs.max()), -int(secs.min())))
        raise KunbenchError(f"input.timestamp: column {name!r} reaches {top:.3g} seconds (timestamp_unit = {unit!r}), "
                            f"more than 3,000 years from 1970; if it counts ms, us or ns, set input.timestamp_unit")
    return secs


def _label(spec: ImportSpec, batch: pa.RecordBatch, requests: np.ndarray) -> np.ndarray:
    cond = spec.label_condition
    if cond is not None:
        column = batch.column(cond.column)
        values = column.to_numpy(zero_copy_only=False)
        # an empty value (null, or NaN in a float column) would compare false and silently become a
        # 0 label on a request row
        empty = column.is_null().to_numpy(zero_copy_only=False)
        if values.dtype.kind == "f":
            empty = empty | np.isnan(values)
        if (empty & requests).any():
            raise KunbenchError(f"input.label: column {cond.column!r} is empty on {int((empty & requests).sum())} "
                                f"request row(s); drop them from the log or exclude them with input.requests")
        return cond.evaluate(values).astype(np.int8)
    y = batch.column(spec.label).to_numpy(zero_copy_only=False)
    bad = ~np.isin(y, (0, 1)) & requests  # a row that is no request needs no label
    if bad.any():
        raise KunbenchError(f"input.label: column {spec.label!r} holds {np.asarray(y[bad][:1]).tolist()[0]!r}; a label column must be 0 or 1 "
                            f"(or write a condition, e.g. \"{spec.label} >= 4\")")
    return np.where(requests, y, 0).astype(np.int8)


def _events(spec: ImportSpec, batch: pa.RecordBatch) -> np.ndarray:
    """Event type index per interaction (-1: in no history)."""
    if spec.event_rules:
        code = np.full(batch.num_rows, -1, np.int16)
        for i, (_, cond) in reversed(list(enumerate(spec.event_rules))):  # first match wins
            code[cond.evaluate(batch.column(cond.column).to_numpy(zero_copy_only=False))] = i
        return code
    values = _text(batch.column(spec.event_column))
    return pc.fill_null(pc.index_in(values, value_set=pa.array(spec.event_types)), -1).to_numpy().astype(np.int16)


def _requests(spec: ImportSpec, batch: pa.RecordBatch) -> np.ndarray:
    if spec.requests is None:
        return np.ones(batch.num_rows, bool)
    return spec.requests.evaluate(batch.column(spec.requests.column).to_numpy(zero_copy_only=False))


def _compact(parts: list[pa.Array]) -> list[pa.Array]:
    return [_unique(parts)] if sum(len(x) for x in parts) > 4 * READ_ROWS else parts


def _unique(parts: list[pa.Array]) -> pa.Array:
    u = pa.chunked_array(parts, type=pa.string()).unique() if parts else pa.array([], pa.string())
    u = u.drop_null()
    u = u.filter(pc.not_equal(u, ""))  # an empty text field is a missing value, not a value
    return u.take(pc.sort_indices(u))


# ---- pass 1: vocabularies ------------------------------------------------------------------------
def scan_vocab(spec: ImportSpec, tick: Callable[[int], None]) -> Vocab:
    users, items, cats, ts_vals, ts_counts = [], [], [], [], []
    ts_min, ts_max = None, None
    for batch in _batches(spec):
        for key in ("user", "item"):
            col = batch.column(getattr(spec, key))
            if col.null_count or pc.any(pc.equal(_text(col), "")).as_py():
                raise KunbenchError(f"input.{key}: column {getattr(spec, key)!r} has empty values; every "
                                    f"interaction needs a {key}")
        users.append(_text(batch.column(spec.user)).unique())
        items.append(_text(batch.column(spec.item)).unique())
        if spec.category:
            cats.append(_text(batch.column(spec.category)).unique())
        ts = _seconds(batch.column(spec.timestamp), spec.timestamp, spec.timestamp_unit)
        ts_min = int(ts.min()) if ts_min is None else min(ts_min, int(ts.min()))
        ts_max = int(ts.max()) if ts_max is None else max(ts_max, int(ts.max()))
        v, c = np.unique(ts[_requests(spec, batch)], return_counts=True)
        ts_vals.append(v)
        ts_counts.append(c)
        # keep every partial vocabulary compact, each by its own size
        users, items = (_compact(x) for x in (users, items))
        if sum(len(x) for x in ts_vals) > 4 * READ_ROWS:
            v = np.concatenate(ts_vals)
            uv, inv = np.unique(v, return_inverse=True)
            ts_vals, ts_counts = [uv], [np.bincount(inv, weights=np.concatenate(ts_counts)).astype(np.int64)]
        tick(batch.num_rows)
    if ts_min is None:
        raise KunbenchError(f"input {spec.path}: no interactions")
    if spec.items is not None and spec.items.category and not spec.category:
        side = _read_side(spec.items.source)
        cats.append(_text(side.column(spec.items.category)).unique())
    v = np.concatenate(ts_vals)
    c = np.concatenate(ts_counts)
    uv, inv = np.unique(v, return_inverse=True)
    if not uv.size:
        raise KunbenchError(f"input.requests: no interaction matches {spec.requests}")
    return Vocab(_unique(users), _unique(items), _unique(cats) if cats else None, uv,
                 np.bincount(inv, weights=c).astype(np.int64), ts_min, ts_max)


def eval_threshold(v: Vocab, eval_fraction: float) -> int:
    """The first timestamp of the eval split: the latest request rows, about `eval_fraction` of
    them, never splitting one timestamp; past the last timestamp (no eval rows) for 0."""
    if eval_fraction <= 0:
        return v.ts_max + 1
    from_end = np.cumsum(v.request_counts[::-1])[::-1]  # request rows at or after each timestamp
    target = eval_fraction * from_end[0]
    i = int(np.argmin(np.abs(from_end - target)))
    return int(v.request_ts[max(i, 1)]) if v.request_ts.size > 1 else v.ts_max + 1


# ---- pass 2: interactions by bucket --------------------------------------------------------------
def partition(spec: ImportSpec, vocab: Vocab, work: Path, tick: Callable[[int], None]) -> None:
    schema = pa.schema([("u", pa.int64()), ("item", pa.int64()), ("cat", pa.int64()), ("ts", pa.int64()),
                        ("event", pa.int16()), ("label", pa.int8()), ("request", pa.bool_()), ("order", pa.int64())])
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and spec.buckets + 64 > soft:
        raise KunbenchError(f"output.buckets = {spec.buckets} needs as many open files, and this process may open "
                            f"{soft}; use fewer buckets or raise the limit (ulimit -n)")
    writers = [pq.ParquetWriter(work / f"bucket-{b:05d}.parquet", schema) for b in range(spec.buckets)]
    order = 0
    try:
        for batch in _batches(spec):
            n = batch.num_rows
            u = pc.index_in(_text(batch.column(spec.user)), value_set=vocab.users).to_numpy().astype(np.int64)
            item = pc.index_in(_text(batch.column(spec.item)), value_set=vocab.items).to_numpy().astype(np.int64)
            cat = np.zeros(n, np.int64)  # 0: unknown category; a known one is 1 + its rank
            if spec.category:
                cat = pc.fill_null(pc.index_in(_text(batch.column(spec.category)), value_set=vocab.categories),
                                   -1).to_numpy().astype(np.int64) + 1
            ts = _seconds(batch.column(spec.timestamp), spec.timestamp, spec.timestamp_unit)
            req = _requests(spec, batch)
            cols = [u, item, cat, ts, _events(spec, batch), _label(spec, batch, req), req,
                    np.arange(order, order + n, dtype=np.int64)]
            order += n
            bucket = u % spec.buckets
            for b in np.unique(bucket):
                m = bucket == b
                writers[b].write_table(pa.table([c[m] for c in cols], schema=schema))
            tick(n)
    finally:
        for w in writers:
            w.close()


# ---- side tables ---------------------------------------------------------------------------------
def _read_side(source: Source) -> pa.Table:
    try:
        return _dataset(source).to_table()
    except pa.ArrowInvalid as exc:
        raise KunbenchError(f"side table {source.path}: {str(exc).splitlines()[0]}") from None


@dataclass
class Attributes:
    """Per-entity attribute codes (index = dense user or item ID): categorical 0 = unknown."""
    categorical: dict[str, np.ndarray]
    cardinality: dict[str, int]
    dense: dict[str, np.ndarray]
    category: np.ndarray | None = None  # items: category code per item


def side_attributes(side, ids: pa.Array, categories: pa.Array | None, where: str) -> Attributes:
    out = Attributes({}, {}, {})
    if side is None:
        return out
    table = _read_side(side.source)
    for c in (side.key, side.category, *side.categorical, *side.dense):
        if c and c not in table.column_names:
            raise KunbenchError(f"{where}: {side.source.path.name} has no column {c!r}")
    keys = _text(table.column(side.key).combine_chunks())
    present = keys.drop_null()
    counts = pc.value_counts(present.filter(pc.not_equal(present, "")))  # rows without a key are dropped below
    twice = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(twice):
        raise KunbenchError(f"{where}: {side.source.path.name} lists key {twice[0]['values'].as_py()!r} more than "
                            f"once (one row per {side.key})")
    pos = pc.fill_null(pc.index_in(keys, value_set=ids), -1).to_numpy()
    keep = pos >= 0  # side rows for IDs the log never mentions are dropped
    if len(ids) and not keep.any():
        raise KunbenchError(f"{where}: no {side.key!r} of {side.source.path.name} matches an ID of the log "
                            f"(e.g. {keys[0].as_py() if len(keys) else None!r} vs {ids[0].as_py()!r})")
    pos = pos[keep].astype(np.int64)
    for name in side.categorical:
        values = _text(table.column(name).combine_chunks()).filter(pa.array(keep))
        vocab = _unique([values])
        codes = np.zeros(len(ids), np.int64)
        codes[pos] = pc.fill_null(pc.index_in(values, value_set=vocab), -1).to_numpy() + 1
        out.categorical[name], out.cardinality[name] = codes, len(vocab) + 1
    for name in side.dense:
        try:
            col = pc.cast(table.column(name).combine_chunks(), pa.float64()).filter(pa.array(keep))
        except pa.ArrowInvalid:
            raise KunbenchError(f"{where}.dense: column {name!r} of {side.source.path.name} holds values that are "
                                f"not numbers") from None
        vals = np.zeros(len(ids), np.float32)
        vals[pos] = np.nan_to_num(col.to_numpy(zero_copy_only=False), nan=0.0, posinf=0.0, neginf=0.0)
        out.dense[name] = vals
    if side.category and categories is not None:
        values = _text(table.column(side.category).combine_chunks()).filter(pa.array(keep))
        out.category = np.zeros(len(ids), np.int64)  # 0: an item the table does not give a category
        out.category[pos] = pc.fill_null(pc.index_in(values, value_set=categories), -1).to_numpy() + 1
    return out


# ---- pass 3: rows of one bucket ------------------------------------------------------------------
def histories(key: np.ndarray, user: np.ndarray, q: np.ndarray, user_key: np.ndarray, n_max: int,
              *values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per request (composite key q = user, time), the newest `n_max` events with a key strictly
    below q and of the same user: (offsets, gathered values)."""
    end = np.searchsorted(key, q, side="left")
    start = np.maximum(np.searchsorted(key, user_key, side="left"), end - n_max)
    lengths = end - start
    offsets = np.zeros(len(q) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    return offsets, [v[index] for v in values]


def bucket_rows(spec: ImportSpec, vocab: Vocab, path: Path, users: Attributes, items: Attributes):
    """The request rows of one user bucket, by time then user, in tables of a bounded size (so the
    histories of a bucket are never all in memory at once)."""
    t = pq.read_table(path)
    u, item, cat, ts = (t.column(c).to_numpy() for c in ("u", "item", "cat", "ts"))
    event, label, request, order = (t.column(c).to_numpy() for c in ("event", "label", "request", "order"))
    del t
    if items.category is not None:
        cat = items.category[item]
    # interactions of one user at one second are ordered by what they are, not by where they stood
    # in the input, so a reordered log gives the same bytes
    by = np.lexsort((order, request, label, cat, item, event, ts, u))
    u, item, cat, ts, event, label, request = (a[by] for a in (u, item, cat, ts, event, label, request))
    span = vocab.ts_max - vocab.ts_min + 1
    key = u * span + (ts - vocab.ts_min)
    req = np.flatnonzero(request)
    req = req[np.lexsort((req, u[req], ts[req]))]  # rows by time, then user
    streams = [(name, event == e) for e, name in enumerate(spec.types)]
    streams = [(name, key[m], u[m], item[m], cat[m], ts[m]) for name, m in streams]
    step = max(1, min(1 << 16, (1 << 30) // spec.history_max))  # int32 list offsets, bounded memory
    for lo in range(0, req.size, step):
        r = req[lo:lo + step]
        q, qu = key[r], u[r] * span
        cols: dict[str, Any] = {"request_ts": pa.array(ts[r]), "label": pa.array(label[r]),
                                "user_id": pa.array(u[r]), "item_id": pa.array(item[r]),
                                "item_category": pa.array(cat[r])}
        for side, ids in ((users, u[r]), (items, item[r])):
            for name, codes in side.categorical.items():
                cols[name] = pa.array(codes[ids])
            for name, vals in side.dense.items():
                cols[name] = pa.array(vals[ids])
        for name, k, su, si, sc, st in streams:
            offsets, (h_item, h_cat, h_ts) = histories(k, su, q, qu, spec.history_max, si, sc, st)
            off = pa.array(offsets.astype(np.int32))
            for part, vals in (("item", h_item), ("category", h_cat), ("ts", h_ts)):
                cols[f"seq_{name}_{part}"] = pa.ListArray.from_arrays(off, pa.array(vals.astype(np.int64)))
        yield pa.table(cols)


def columns_spec(spec: ImportSpec, vocab: Vocab, users: Attributes, items: Attributes) -> list[dict[str, Any]]:
    n_cat = 1 + (len(vocab.categories) if vocab.categories is not None else 0)  # 0 = unknown
    cols = [{"name": "request_ts", "role": "request_ts", "dtype": "int64"},
            {"name": "label", "role": "label", "dtype": "int8", "source": spec.label},
            {"name": "user_id", "role": "context_categorical", "dtype": "int64", "cardinality": len(vocab.users),
             "entity": "user"},
            {"name": "item_id", "role": "context_categorical", "dtype": "int64", "cardinality": len(vocab.items),
             "entity": "item"},
            {"name": "item_category", "role": "context_categorical", "dtype": "int64", "cardinality": n_cat,
             "entity": "item_category"}]
    for side in (users, items):
        cols += [{"name": n, "role": "context_categorical", "dtype": "int64", "cardinality": side.cardinality[n]}
                 for n in side.categorical]
        cols += [{"name": n, "role": "context_dense", "dtype": "float32"} for n in side.dense]
    for name in spec.types:
        cols += [{"name": f"seq_{name}_item", "role": "sequence", "dtype": "list<int64>",
                  "cardinality": len(vocab.items), "entity": "item", "event_type": name, "part": "item"},
                 {"name": f"seq_{name}_category", "role": "sequence", "dtype": "list<int64>", "cardinality": n_cat,
                  "entity": "item_category", "event_type": name, "part": "category"},
                 {"name": f"seq_{name}_ts", "role": "sequence", "dtype": "list<int64>", "event_type": name,
                  "part": "ts"}]
    return cols


def write_bucket(root: Path, b: int, tables, threshold: int, types: tuple[str, ...]) -> dict[str, Any]:
    """This bucket's train and eval files (rows before / from `threshold`) and the statistics the
    manifest sums."""
    stats = {split: {"rows": 0, "positives": 0, "ts": None, "file": None,
                     "lengths": {e: np.zeros(1, np.int64) for e in types}} for split in ("train", "eval")}
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for table in tables:
            is_eval = table.column("request_ts").to_numpy() >= threshold
            for split, mask in (("train", ~is_eval), ("eval", is_eval)):
                if not mask.any():
                    continue
                part = table.filter(pa.array(mask))
                if split not in writers:
                    (root / split).mkdir(parents=True, exist_ok=True)
                    writers[split] = pq.ParquetWriter(root / split / f".part-{b:05d}.parquet.tmp", part.schema,
                                                      compression="zstd")
                writers[split].write_table(part, row_group_size=4096)
                st = stats[split]
                req = part.column("request_ts").to_numpy()
                st["rows"] += part.num_rows
                st["positives"] += int(part.column("label").to_numpy().sum())
                lo, hi = int(req.min()), int(req.max())
                st["ts"] = [lo, hi] if st["ts"] is None else [min(st["ts"][0], lo), max(st["ts"][1], hi)]
                for e in types:
                    n = np.bincount(np.diff(part.column(f"seq_{e}_ts").combine_chunks().offsets.to_numpy()))
                    grown = np.zeros(max(n.size, st["lengths"][e].size), np.int64)
                    grown[:n.size] += n
                    grown[:st["lengths"][e].size] += st["lengths"][e]
                    st["lengths"][e] = grown
    finally:
        for w in writers.values():
            w.close()
    for split, st in stats.items():
        st["lengths"] = {e: v.tolist() for e, v in st["lengths"].items()}
        if split in writers:
            rel = f"{split}/part-{b:05d}.parquet"
            (root / split / f".part-{b:05d}.parquet.tmp").replace(root / rel)
            st["file"] = {"path": rel, "rows": st["rows"], "bytes": (root / rel).stat().st_size,
                          "sha256": sha256_file(root / rel)}
    return stats


def split_entry(parts: list[dict[str, Any]], types: tuple[str, ...]) -> dict[str, Any]:
    rows = sum(p["rows"] for p in parts)
    lengths = {}
    for e in types:
        hist = np.zeros(max([1, *(len(p["lengths"][e]) for p in parts)]), np.int64)
        for p in parts:
            counts = np.asarray(p["lengths"][e], dtype=np.int64)  # a split with no rows has none
            hist[:counts.size] += counts
        cum = np.cumsum(hist)
        pct = (lambda q: int(np.searchsorted(cum, q * cum[-1])) if cum[-1] else 0)  # noqa: E731
        lengths[e] = {"mean": float((hist * np.arange(hist.size)).sum() / max(cum[-1], 1)), "min":
                      int(np.flatnonzero(hist)[0]) if cum[-1] else 0, "p50": pct(0.5), "p99": pct(0.99),
                      "max": int(np.flatnonzero(hist)[-1]) if cum[-1] else 0}
    ts = [p["ts"] for p in parts if p["ts"]]
    return {"rows": rows, "files": [p["file"] for p in parts if p["file"]],
            "base_ctr": sum(p["positives"] for p in parts) / rows if rows else None, "lengths": lengths,
            "request_ts": {"min": min(t[0] for t in ts), "max": max(t[1] for t in ts)} if ts else {}}


def write_ids(root: Path, vocab: Vocab) -> None:
    (root / "ids").mkdir(exist_ok=True)
    categories = pa.concat_arrays([pa.array([None], pa.string()), vocab.categories]) \
        if vocab.categories is not None else pa.array([None], pa.string())  # row 0: unknown
    for name, values in (("user", vocab.users), ("item", vocab.items), ("item_category", categories)):
        pq.write_table(pa.table({"id": values}), root / "ids" / f"{name}.parquet")


def clean_work(root: Path) -> None:
    shutil.rmtree(root / WORK, ignore_errors=True)


def save_vocab(work: Path, v: Vocab) -> None:
    for name in ("users", "items", "categories"):
        values = getattr(v, name)
        if values is not None:
            pq.write_table(pa.table({"id": values}), work / f"vocab-{name}.parquet")
    np.savez(work / "vocab-ts.npz", request_ts=v.request_ts, request_counts=v.request_counts,
             bounds=np.array([v.ts_min, v.ts_max], np.int64))


def load_vocab(work: Path) -> Vocab:
    def ids(name: str) -> pa.Array | None:
        p = work / f"vocab-{name}.parquet"
        return pq.read_table(p).column("id").combine_chunks() if p.is_file() else None

    z = np.load(work / "vocab-ts.npz")
    return Vocab(ids("users"), ids("items"), ids("categories"), z["request_ts"], z["request_counts"],
                 int(z["bounds"][0]), int(z["bounds"][1]))


def read_state(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / "state.json").read_text())
    except (OSError, ValueError):
        return {}
