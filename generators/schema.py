"""The public column layout: manifest column entries, the Arrow schema, and chunk -> Arrow table.

Column order: request_ts, click, p_true, user_id, ad_id, ad_category, surface, ctx_cat_*,
ctx_dense_*, ctx_multihot_*, then per event type (config order) seq_{e}_item, seq_{e}_category,
seq_{e}_ts. Lists are plain `list<int64>` (int32 offsets), readable by any Parquet reader.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from kunbench.generators.chunk import Chunk
from kunbench.generators.world import World

LIST_INT64 = pa.list_(pa.int64())
_ARROW = {"int64": pa.int64(), "int8": pa.int8(), "float64": pa.float64(), "float32": pa.float32(),
          "list<int64>": LIST_INT64}

# Parquet settings shared by the generator and the benchmark ceiling
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": False,
                                   "write_statistics": ["request_ts"]}


def _width(count: int, minimum: int) -> int:
    return max(minimum, len(str(max(count - 1, 0))))


def column_entries(world: World) -> list[dict[str, Any]]:
    cfg = world.config
    cols: list[dict[str, Any]] = [
        {"name": "request_ts", "role": "request_ts", "dtype": "int64"},
        {"name": "click", "role": "label", "dtype": "int8"},
        {"name": "p_true", "role": "oracle", "dtype": "float64"},
        {"name": "user_id", "role": "context_categorical", "dtype": "int64",
         "cardinality": cfg.num_users, "entity": "user"},
        {"name": "ad_id", "role": "context_categorical", "dtype": "int64",
         "cardinality": cfg.num_items, "entity": "item"},
        {"name": "ad_category", "role": "context_categorical", "dtype": "int64",
         "cardinality": cfg.num_item_categories, "entity": "item_category"},
        {"name": "surface", "role": "context_categorical", "dtype": "int64",
         "cardinality": cfg.num_surfaces, "entity": "surface"},
    ]
    w = _width(cfg.num_categorical, 3)
    for f in range(cfg.num_categorical):
        cols.append({"name": f"ctx_cat_{f:0{w}d}", "role": "context_categorical", "dtype": "int64",
                     "cardinality": int(world.cat_cardinality[f]), "zipf_exponent": cfg.zipf_exponent})
    w = _width(cfg.num_dense, 3)
    for f in range(cfg.num_dense):
        cols.append({"name": f"ctx_dense_{f:0{w}d}", "role": "context_dense", "dtype": "float32"})
    w = _width(cfg.num_multihot, 2)
    for f in range(cfg.num_multihot):
        cols.append({"name": f"ctx_multihot_{f:0{w}d}", "role": "context_multihot", "dtype": "list<int64>",
                     "cardinality": int(world.mh_cardinality[f]), "max_length": cfg.multihot_max_length,
                     "zipf_exponent": cfg.zipf_exponent})
    for e in cfg.events:
        cols.append({"name": f"seq_{e}_item", "role": "sequence", "dtype": "list<int64>",
                     "cardinality": cfg.num_items, "entity": "item", "event_type": e, "part": "item"})
        cols.append({"name": f"seq_{e}_category", "role": "sequence", "dtype": "list<int64>",
                     "cardinality": cfg.num_item_categories, "entity": "item_category",
                     "event_type": e, "part": "category"})
        cols.append({"name": f"seq_{e}_ts", "role": "sequence", "dtype": "list<int64>",
                     "event_type": e, "part": "ts"})
    return cols


def arrow_schema(columns: list[dict[str, Any]]) -> pa.Schema:
    return pa.schema([pa.field(c["name"], _ARROW[c["dtype"]], nullable=False) for c in columns])


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int64()))


def chunk_table(schema: pa.Schema, chunk: Chunk, click: np.ndarray, p_true: np.ndarray) -> pa.Table:
    arrays: list[pa.Array] = [
        pa.array(chunk.request_ts, pa.int64()), pa.array(click, pa.int8()), pa.array(p_true, pa.float64()),
        pa.array(chunk.user, pa.int64()), pa.array(chunk.ad, pa.int64()),
        pa.array(chunk.ad_category, pa.int64()), pa.array(chunk.surface, pa.int64()),
    ]
    arrays += [pa.array(col, pa.int64()) for col in chunk.categorical]
    arrays += [pa.array(col, pa.float32()) for col in chunk.dense]
    arrays += [_list(off, vals) for off, vals in chunk.multihot]
    for ev in chunk.events.values():
        arrays += [_list(ev.offsets, ev.item), _list(ev.offsets, ev.category), _list(ev.offsets, ev.ts)]
    return pa.Table.from_arrays(arrays, schema=schema)
