"""Write small datasets in exactly the public on-disk format, independent of the generator.

`write_contract_dataset` follows the dataset contract (manifest.json + zstd Parquet shards per
split, list<int64> sequence columns sorted oldest -> newest) with random values. Every row carries
a recoverable id: request_ts = BASE_TS + TS_STEP * row_id, unique and increasing over train then
eval (eval is the latest slice, as in real datasets). It is a contract test for the loader that
does not depend on the generator, and can write standard-shaped data for loader benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kunbench.data.manifest import sha256_file

BASE_TS = 1_767_225_600
TS_STEP = 7
HISTORY_SPAN = 30 * 86_400
ENTITIES = (("user_id", "user", 50_000), ("ad_id", "item", 20_000), ("ad_category", "item_category", 100),
            ("surface", "surface", 6))
NUM_ITEMS, NUM_CATEGORIES = 20_000, 100

# (lo, hi) = uniform lengths in [lo, hi]; (median, sigma, min, max) = clipped lognormal
DEFAULT_LENGTHS = {"impression": (0, 40), "click": (0, 20), "conversion": (0, 6)}
STANDARD_LENGTHS = {"impression": (500, 0.55, 100, 2048), "click": (250, 0.5, 50, 1024),
                    "conversion": (120, 0.5, 20, 512)}


def row_id_of(request_ts):
    """Inverse of the request_ts encoding (works on ints, numpy arrays and torch tensors)."""
    return (request_ts - BASE_TS) // TS_STEP


def _draw_lengths(rng: np.random.Generator, n: int, law: tuple) -> np.ndarray:
    if len(law) == 2:
        lo, hi = law
        return rng.integers(lo, hi + 1, size=n)
    median, sigma, lo, hi = law
    return np.clip(np.round(median * np.exp(sigma * rng.standard_normal(n))), lo, hi).astype(np.int64)


def _list_array(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))


def _columns_spec(num_categorical: int, num_dense: int, num_multihot: int, event_types: Sequence[str],
                  cardinalities: list[int], multihot_card: list[int]) -> list[dict]:
    cols = [{"name": "request_ts", "role": "request_ts", "dtype": "int64"},
            {"name": "click", "role": "label", "dtype": "int8"},
            {"name": "p_true", "role": "oracle", "dtype": "float64"}]
    for name, entity, card in ENTITIES:
        cols.append({"name": name, "role": "context_categorical", "dtype": "int64", "cardinality": card,
                     "entity": entity})
    for i in range(num_categorical):
        cols.append({"name": f"ctx_cat_{i:03d}", "role": "context_categorical", "dtype": "int64",
                     "cardinality": cardinalities[i]})
    for i in range(num_dense):
        cols.append({"name": f"ctx_dense_{i:03d}", "role": "context_dense", "dtype": "float32"})
    for i in range(num_multihot):
        cols.append({"name": f"ctx_multihot_{i:02d}", "role": "context_multihot", "dtype": "list<int64>",
                     "cardinality": multihot_card[i]})
    for e in event_types:
        cols.append({"name": f"seq_{e}_item", "role": "sequence", "dtype": "list<int64>", "cardinality": NUM_ITEMS,
                     "entity": "item", "event_type": e, "part": "item"})
        cols.append({"name": f"seq_{e}_category", "role": "sequence", "dtype": "list<int64>",
                     "cardinality": NUM_CATEGORIES, "entity": "item_category", "event_type": e,
                     "part": "category"})
        cols.append({"name": f"seq_{e}_ts", "role": "sequence", "dtype": "list<int64>", "event_type": e,
                     "part": "ts"})
    return cols


def _make_table(rng: np.random.Generator, row_ids: np.ndarray, spec: list[dict], lengths: dict[str, tuple],
                multihot_max: int) -> pa.Table:
    n = len(row_ids)
    request_ts = BASE_TS + TS_STEP * row_ids.astype(np.int64)
    p_true = rng.uniform(0.001, 0.2, size=n)
    data: dict[str, pa.Array] = {}
    seq_lengths: dict[str, np.ndarray] = {}
    for col in spec:
        name, role = col["name"], col["role"]
        if role == "request_ts":
            data[name] = pa.array(request_ts, pa.int64())
        elif role == "label":
            data[name] = pa.array((rng.random(n) < p_true).astype(np.int8), pa.int8())
        elif role == "oracle":
            data[name] = pa.array(p_true, pa.float64())
        elif role == "context_categorical":
            data[name] = pa.array(rng.integers(0, col["cardinality"], size=n), pa.int64())
        elif role == "context_dense":
            data[name] = pa.array(rng.standard_normal(n).astype(np.float32), pa.float32())
        elif role == "context_multihot":
            lens = rng.integers(0, multihot_max + 1, size=n)
            data[name] = _list_array(rng.integers(0, col["cardinality"], size=int(lens.sum())), lens)
        elif role == "sequence":
            e, part = col["event_type"], col["part"]
            if e not in seq_lengths:
                seq_lengths[e] = _draw_lengths(rng, n, lengths[e])
            lens = seq_lengths[e]
            total = int(lens.sum())
            if part == "item":
                vals = rng.integers(0, col["cardinality"], size=total)
            elif part == "category":
                vals = rng.integers(0, col["cardinality"], size=total)
            else:  # ts: strictly before request_ts, sorted oldest -> newest within each row
                rows = np.repeat(np.arange(n, dtype=np.int64), lens)
                ago = rng.integers(1, HISTORY_SPAN, size=total)
                key = rows * HISTORY_SPAN + (HISTORY_SPAN - ago)  # ascending key = descending age
                key.sort()
                ago = HISTORY_SPAN - (key - rows * HISTORY_SPAN)
                vals = request_ts[rows] - ago
            data[name] = _list_array(vals, lens)
    return pa.table(data)


def write_contract_dataset(root, rows_per_file: Sequence[int] = (300, 0, 250), eval_rows_per_file: Sequence[int] = (200,),
                           seed: int = 0, event_types: Sequence[str] = ("impression", "click", "conversion"),
                           num_categorical: int = 5, num_dense: int = 3, num_multihot: int = 2,
                           lengths: dict[str, tuple] | None = None, row_group_rows: int = 64,
                           multihot_max: int = 5, compression: str = "zstd", oracle: bool = True) -> dict:
    """Write a dataset to `root`; returns the manifest dict. Empty files (0 rows) are allowed.
    `oracle=False` writes what a real log has: no p_true column and no oracle NE."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    lengths = {**DEFAULT_LENGTHS, **(lengths or {})}
    for e in event_types:
        lengths.setdefault(e, (0, 10))
    cards = [int(c) for c in np.exp(rng.uniform(np.log(10), np.log(1e6), size=num_categorical))]
    mh_cards = [int(c) for c in rng.integers(20, 5000, size=num_multihot)]
    spec = _columns_spec(num_categorical, num_dense, num_multihot, event_types, cards, mh_cards)
    splits: dict[str, dict] = {}
    next_id = 0
    for split, per_file in (("train", rows_per_file), ("eval", eval_rows_per_file)):
        (root / split).mkdir(parents=True, exist_ok=True)
        files, clicks, ne_num, lens_all = [], 0, 0.0, {e: [] for e in event_types}
        for i, n in enumerate(per_file):
            ids = np.arange(next_id, next_id + n, dtype=np.int64)
            next_id += n
            table = _make_table(rng, ids, spec, lengths, multihot_max)
            rel = f"{split}/part-{i:05d}.parquet"
            pq.write_table(table, root / rel, row_group_size=row_group_rows, compression=compression)
            files.append({"path": rel, "rows": n, "bytes": (root / rel).stat().st_size,
                          "sha256": sha256_file(root / rel)})
            y = table["click"].to_numpy().astype(np.float64)
            p = table["p_true"].to_numpy()
            clicks += int(y.sum())
            ne_num += float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())
            for e in event_types:
                lens_all[e].append(np.diff(np.asarray(table[f"seq_{e}_ts"].combine_chunks().offsets)))
        rows = int(sum(per_file))
        ctr = clicks / rows if rows else 0.0
        base_ent = -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr)) if 0 < ctr < 1 else float("nan")
        stats = {}
        for e in event_types:
            ls = np.concatenate(lens_all[e]) if lens_all[e] else np.zeros(0, np.int64)
            stats[e] = {"mean": float(ls.mean()) if ls.size else 0.0,
                        "p50": float(np.percentile(ls, 50)) if ls.size else 0.0,
                        "p99": float(np.percentile(ls, 99)) if ls.size else 0.0,
                        "max": int(ls.max()) if ls.size else 0}
        splits[split] = {"rows": rows, "files": files, "base_ctr": ctr,
                         "oracle_ne": (ne_num / rows) / base_ent if rows else float("nan"),
                         "lengths": stats}
    manifest = {"schema_version": 1, "generator": "tests.dataset_fixture", "seed": seed,
                "config": {"row_group_rows": row_group_rows}, "columns": spec,
                "event_types": list(event_types), "splits": splits}
    if not oracle:
        _drop_oracle(root, manifest, row_group_rows, compression)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _drop_oracle(root: Path, manifest: dict, row_group_rows: int, compression: str) -> None:
    manifest["columns"] = [c for c in manifest["columns"] if c["role"] != "oracle"]
    manifest["label_source"] = "a test log: observed clicks, no known click probability"
    for split in manifest["splits"].values():
        split.pop("oracle_ne")
        for f in split["files"]:
            path = root / f["path"]
            table = pq.read_table(path).drop_columns(["p_true"])
            pq.write_table(table, path, row_group_size=row_group_rows, compression=compression)
            f.update(bytes=path.stat().st_size, sha256=sha256_file(path))
