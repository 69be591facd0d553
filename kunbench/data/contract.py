"""The dataset contract, checked against the data (`kunbench inspect --verify`): a manifest can
say anything, so every value it promises is read back. What is checked (README, "Bring your own
data"):

- the manifest: every file entry has path, rows, bytes and sha256; every ID column (categorical,
  multi-hot, sequence item and category) has a positive cardinality;
- every column the manifest names is in every file, without nulls;
- IDs lie in [0, cardinality): a model's tables have exactly that many rows, so a larger ID would be
  folded silently into another one;
- labels are 0 or 1; the oracle, if any, is a probability in [0, 1]; dense values are finite;
- a history's timestamps are sorted (oldest first) and none is after its row's request_ts;
- the item, category and ts lists of one event type have the same length in every row;
- every file has exactly the manifest's columns, with the manifest's dtypes, and the eval rows
  are the latest (no eval request before a train request). Files listed twice and split row
  totals are checked with the checksums (`manifest.verify_files`).

Files are read one row group at a time, so memory stays flat whatever the dataset's size. Each
problem is one line naming the file, the column and the first bad row (counted from 0 in the file).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from kunbench.data.manifest import Column, Manifest

ID_ROLES = ("context_categorical", "context_multihot")
DTYPES = {"int8": "int8", "int32": "int32", "int64": "int64", "float32": "float", "float64": "double",
          "list<int64>": "list<element: int64>"}  # manifest dtype -> how Arrow prints it
FILE_KEYS = ("path", "rows", "bytes", "sha256")


def manifest_problems(m: Manifest) -> list[str]:
    """What the manifest itself lacks: file entries' fields, ID columns' cardinalities."""
    out = []
    for split, s in m.splits.items():
        if not isinstance(s.get("rows"), int):
            out.append(f"manifest: split {split!r} lacks an integer 'rows'")
        for i, f in enumerate(s["files"]):
            missing = [k for k in FILE_KEYS if k not in f]
            if missing:
                out.append(f"manifest: {split} file {f.get('path', i)!r} lacks {', '.join(missing)}")
    for role in ("request_ts", "label"):
        n = sum(c.role == role for c in m.columns)
        if n != 1:
            out.append(f"manifest: needs exactly one {role!r} column, has {n}")
    for c in m.columns:
        if c.dtype not in DTYPES:
            out.append(f"manifest: column {c.name!r} has dtype {c.dtype!r} (one of {', '.join(DTYPES)})")
        if _is_id(c) and not (isinstance(c.cardinality, int) and c.cardinality > 0):
            out.append(f"manifest: column {c.name!r} ({c.role}) needs a positive integer cardinality, "
                       f"has {c.cardinality!r}")
    return out


def _is_id(c: Column) -> bool:
    return c.role in ID_ROLES or (c.role == "sequence" and c.part in ("item", "category"))


def verify_contract(m: Manifest, max_problems: int = 50) -> list[str]:
    """Every broken promise of the manifest, one line each (at most `max_problems`)."""
    problems = manifest_problems(m)
    times: dict[str, list[int]] = {}  # split -> [first, last] request_ts seen
    for split, s in m.splits.items():
        for f in s["files"]:
            path = m.root / f.get("path", "")
            if "path" in f and path.is_file():
                problems += _file_problems(m, path, f["path"], times.setdefault(split, []))
            if len(problems) >= max_problems:
                return problems[:max_problems] + ["... (more problems not listed)"]
    train, evals = times.get("train"), times.get("eval")
    if train and evals and evals[0] < train[1]:
        problems.append(f"split: eval rows are not the latest (an eval request at {evals[0]} precedes a train "
                        f"request at {train[1]}), so evaluation would look back in time")
    return problems


def _normalised(t) -> str:
    """How Arrow prints a type, without what does not change the values read: large vs plain lists,
    the list field's name and its nullability (Spark writes `list<element: int64 not null>`)."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<element: {t.value_type}>"
    return str(t)


def schema_problems(m: Manifest, schema, rel: str) -> list[str]:
    """A file's columns against the manifest's: missing, unlisted, or of another dtype."""
    present = set(schema.names)
    absent = [c.name for c in m.columns if c.name not in present]
    if absent:
        return [f"{rel}: columns {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''} are missing"]
    out = []
    unlisted = sorted(present - {c.name for c in m.columns})
    if unlisted:
        out.append(f"{rel}: columns {', '.join(unlisted[:5])} are not in the manifest")
    for c in m.columns:
        arrow = _normalised(schema.field(c.name).type)
        if c.dtype in DTYPES and arrow != DTYPES[c.dtype]:
            out.append(f"{rel}: column {c.name!r} is {arrow}, the manifest says {c.dtype}")
    return out


def _file_problems(m: Manifest, path, rel: str, span: list[int]) -> list[str]:
    import pyarrow.parquet as pq

    import pyarrow as pa

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (OSError, pa.ArrowException) as exc:
        return [f"{rel}: unreadable ({str(exc).splitlines()[0]})"]
    out = schema_problems(m, schema, rel)
    if out:
        return out
    seen: set[tuple[str, str]] = set()  # one line per (column, kind of problem) and file
    start = 0
    try:
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=[c.name for c in m.columns])
            request = [c.name for c in m.columns if c.role == "request_ts"]
            if len(request) == 1 and table.num_rows and not table.column(request[0]).null_count:
                ts = table.column(request[0]).to_numpy()
                lo, hi = int(ts.min()), int(ts.max())
                span[:] = [lo, hi] if not span else [min(span[0], lo), max(span[1], hi)]
            for column, kind, row in _group_problems(m, table):
                if (column, kind) not in seen:
                    seen.add((column, kind))
                    out.append(f"{rel}: column {column!r}: {kind} (first at row {start + row})")
            start += table.num_rows
    except (OSError, pa.ArrowException) as exc:
        out.append(f"{rel}: row group {g} unreadable ({str(exc).splitlines()[0]})")
    return out


def _group_problems(m: Manifest, table) -> Iterator[tuple[str, str, int]]:
    from kunbench.data.jagged import arrow_list_to_numpy

    def first(bad: np.ndarray) -> int | None:
        hit = np.flatnonzero(bad)
        return int(hit[0]) if hit.size else None

    def row_of(offsets: np.ndarray, value_index: int) -> int:
        return int(np.searchsorted(offsets, value_index, side="right") - 1)

    flat: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in m.columns:
        col = table.column(c.name)
        if col.null_count:
            yield c.name, "null values", first(np.asarray(col.is_null()))
            continue
        if c.role == "sequence" or c.role == "context_multihot":
            values, offsets = arrow_list_to_numpy(col)
            flat[c.name] = (values, offsets)
            if _is_id(c) and isinstance(c.cardinality, int) and values.size:
                bad = first((values < 0) | (values >= c.cardinality))
                if bad is not None:
                    yield (c.name, f"ID {values[bad]} outside [0, {c.cardinality}) (the manifest's cardinality)",
                           row_of(offsets, bad))
            continue
        values = col.to_numpy()
        if _is_id(c) and isinstance(c.cardinality, int):
            bad = first((values < 0) | (values >= c.cardinality))
            if bad is not None:
                yield c.name, f"ID {values[bad]} outside [0, {c.cardinality}) (the manifest's cardinality)", bad
        elif c.role == "label":
            bad = first((values != 0) & (values != 1))
            if bad is not None:
                yield c.name, f"label {values[bad]} is not 0 or 1", bad
        elif c.role == "oracle":
            bad = first(~((values >= 0) & (values <= 1)))
            if bad is not None:
                yield c.name, f"oracle {values[bad]} is not a probability in [0, 1]", bad
        elif c.role == "context_dense":
            bad = first(~np.isfinite(values.astype(np.float64)))
            if bad is not None:
                yield c.name, f"dense value {values[bad]} is not finite", bad
    request = [c for c in m.columns if c.role == "request_ts"]
    request_ts = table.column(request[0].name).to_numpy() if len(request) == 1 else None
    for et, parts in m.schema.sequence_columns.items():
        cols = {p: parts[p].name for p in ("item", "category", "ts")}
        if not all(n in flat for n in cols.values()):
            continue  # a null column, already reported
        ts, offsets = flat[cols["ts"]]
        for p in ("item", "category"):
            other = flat[cols[p]][1]
            if not np.array_equal(other, offsets):
                yield cols[p], f"list lengths differ from {cols['ts']!r}", first(other != offsets)
        lengths = np.diff(offsets)
        if request_ts is not None and ts.size:
            bad = first(ts > np.repeat(request_ts, lengths))
            if bad is not None:
                yield cols["ts"], "a history event is after its row's request_ts", row_of(offsets, bad)
        if ts.size > 1:
            falls = np.diff(ts) < 0
            falls[offsets[1:-1][(offsets[1:-1] > 0) & (offsets[1:-1] < ts.size)] - 1] = False  # row boundaries
            bad = first(falls)
            if bad is not None:
                yield cols["ts"], "timestamps within a history are not sorted oldest first", row_of(offsets, bad)
