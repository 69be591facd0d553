"""`kunbench export DIR --out OUT`: a dataset written back as a flat interaction log, so other tools
(and `kunbench import`, the round trip) can read it.

interactions.parquet has one row per event: `user`, `item`, `category`, `ts`, `event`, `label`.
Each request row of the dataset is its own user (`<split>-<row>`), with its history events
(event = the event type, label 0) and the request itself (event = "request", item = the ad,
label = the click), because a generated row's histories are drawn for that row alone. items.parquet
maps every item to its category; import.toml is the spec that imports the log again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kunbench.data.jagged import arrow_list_to_numpy
from kunbench.data.manifest import load_manifest, require_intact
from kunbench.errors import KunbenchError

SCHEMA = pa.schema([("user", pa.string()), ("item", pa.int64()), ("category", pa.int64()), ("ts", pa.int64()),
                    ("event", pa.string()), ("label", pa.int8())])


def _entity_column(m, entity: str) -> str:
    for c in m.schema.categorical:
        if c.entity == entity:
            return c.name
    raise KunbenchError(f"export: the dataset has no context column for entity {entity!r}")


def export_dataset(root: str | Path, out: str | Path) -> dict[str, int]:
    m = load_manifest(root)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KunbenchError(f"--out {out} is not an empty directory")
    roles = {role: [c.name for c in m.columns if c.role == role] for role in ("label", "request_ts")}
    for role, names in roles.items():
        if len(names) != 1:
            raise KunbenchError(f"export: the manifest needs exactly one {role!r} column, has {len(names)}")
    (label,), (request_ts,) = roles["label"], roles["request_ts"]
    ad, ad_cat = _entity_column(m, "item"), _entity_column(m, "item_category")
    require_intact(m)  # a damaged shard must not become a plausible-looking log
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write(m, out, label, request_ts, ad, ad_cat)
    except BaseException:
        for name in ("interactions.parquet", "items.parquet", "import.toml"):
            (out / name).unlink(missing_ok=True)  # nothing half-written is left to look like an export
        raise


def _write(m, out: Path, label: str, request_ts: str, ad: str, ad_cat: str) -> dict[str, int]:
    item_cat: dict[int, int] = {}
    counts = {"requests": 0, "events": 0}
    longest = 1
    with pq.ParquetWriter(out / "interactions.parquet", SCHEMA) as writer:
        for split in m.splits:
            row = 0
            for path in m.files(split):
                pf = pq.ParquetFile(path)
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g)
                    n = t.num_rows
                    users = np.array([f"{split}-{row + i:09d}" for i in range(n)], dtype=object)
                    row += n
                    pieces = []
                    for et in m.schema.event_types:
                        cols = m.schema.sequence_columns[et]
                        item, off = arrow_list_to_numpy(t.column(cols["item"].name))
                        cat, _ = arrow_list_to_numpy(t.column(cols["category"].name))
                        ts, _ = arrow_list_to_numpy(t.column(cols["ts"].name))
                        lengths = np.diff(off)
                        longest = max(longest, int(lengths.max(initial=0)))
                        pieces.append((np.repeat(users, lengths), item, cat, ts, et, np.zeros(item.size, np.int8)))
                    pieces.append((users, t.column(ad).to_numpy(), t.column(ad_cat).to_numpy(),
                                   t.column(request_ts).to_numpy(), "request", t.column(label).to_numpy()))
                    for u, item, cat, ts, event, y in pieces:
                        item_cat.update(zip(item.tolist(), cat.tolist()))
                        writer.write_table(pa.table([pa.array(u, pa.string()), pa.array(item, pa.int64()),
                                                     pa.array(cat, pa.int64()), pa.array(ts, pa.int64()),
                                                     pa.array([event] * len(u), pa.string()),
                                                     pa.array(y, pa.int8())], schema=SCHEMA))
                        counts["events" if event != "request" else "requests"] += len(u)
    items = sorted(item_cat.items())
    pq.write_table(pa.table({"item": [i for i, _ in items], "category": [c for _, c in items]}),
                   out / "items.parquet")
    types = ", ".join(f'"{e}"' for e in m.schema.event_types)
    eval_rows = m.split_rows("eval") if "eval" in m.splits else 0
    total = sum(m.split_rows(s) for s in m.splits)
    (out / "import.toml").write_text(
        "# kunbench import import.toml --out DIR: this log back into a dataset\n"
        "[input]\npath = \"interactions.parquet\"\nuser = \"user\"\nitem = \"item\"\ntimestamp = \"ts\"\n"
        "category = \"category\"\nlabel = \"label\"\nrequests = \"event == request\"\n"
        f"[events]\ncolumn = \"event\"\ntypes = [{types}]\n"
        f"[output]\nhistory_max = {longest}\neval_fraction = {eval_rows / total if total else 0.0:.6g}\n"
        "buckets = 4\n")
    counts["items"] = len(items)
    return counts
