"""The import spec: which columns of an interaction log are the user, item, time, label and event
type, which interactions become request rows, and how to split and size the result. Read from TOML
(README, "Bring your own data"); every bad key or value is one line naming it.

    [input]
    path = "ratings.csv"           # Parquet or CSV: a file or a directory of them (relative to the spec)
    format = "csv"                 # optional: csv | parquet (default from the suffix)
    delimiter = ","                # optional: one character; a tab for .tsv
    columns = []                   # optional: the column names of a text file without a header row
    user = "user_id"               # column names
    item = "item_id"
    timestamp = "timestamp"        # a number (integer or float, floored to whole seconds), or a timestamp column
    timestamp_unit = "s"           # optional: what a number counts: s | ms | us | ns (default s)
    category = "genre"             # optional: the item's category, per interaction
    label = "rating >= 4"          # a 0/1 column, or COLUMN OP VALUE (== != >= <= > <)
    requests = "rating >= 1"       # optional: which interactions become request rows (default: all)
    [events]
    column = "behavior"            # the event type is this column's value ...
    types = ["buy", "cart", "fav", "pv"]   # ... kept in histories, most important first
    # or rules, first match wins (an interaction matching none is in no history):
    # rules = [{name = "like", when = "rating >= 4"}, {name = "watch", when = "rating < 4"}]
    [output]
    history_max = 256              # newest events kept per type
    eval_fraction = 0.1            # the latest request rows by time
    buckets = 16                   # users are hashed into buckets, processed one at a time
    [items]                        # optional side tables, joined on their key
    path = "items.csv"
    key = "item_id"
    category = "genre"
    categorical = ["year"]
    dense = []
    [users]
    path = "users.csv"
    key = "user_id"
    categorical = ["gender", "occupation"]
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kunbench.errors import KunbenchError, read_document

OPS = ("==", "!=", ">=", "<=", ">", "<")
_CONDITION = re.compile(r"^\s*([^\s=<>!]+)\s*(==|!=|>=|<=|>|<)\s*([^\s=<>!].*?)\s*$")
_OPERATOR = re.compile(r"[=<>!]")


# what a numeric timestamp counts -> units per second
TIMESTAMP_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}

@dataclass(frozen=True)
class Condition:
    """COLUMN OP VALUE; VALUE is a number when it parses as one, else a string (quotes optional)."""
    column: str
    op: str
    value: float | str

    @classmethod
    def parse(cls, text: str, key: str) -> "Condition":
        m = _CONDITION.match(str(text))
        if not m:
            raise KunbenchError(f"{key}: expected COLUMN OP VALUE with OP one of {' '.join(OPS)}, got {text!r}")
        raw = m.group(3).strip().strip("'\"")
        try:
            value: float | str = float(raw)
        except ValueError:
            value = raw
        if isinstance(value, str) and m.group(2) not in ("==", "!="):
            raise KunbenchError(f"{key}: {m.group(2)} needs a number, got {raw!r}")
        return cls(m.group(1), m.group(2), value)

    def evaluate(self, column: np.ndarray) -> np.ndarray:
        v = self.value
        try:
            values = column.astype(str) if isinstance(v, str) else column.astype(np.float64)
        except (TypeError, ValueError):
            raise KunbenchError(f"condition {self}: column {self.column!r} holds values that are not numbers "
                                f"(compare text with == or !=)") from None
        return {"==": values == v, "!=": values != v, ">=": values >= v, "<=": values <= v, ">": values > v,
                "<": values < v}[self.op]

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}" if isinstance(self.value, float) else \
            f"{self.column} {self.op} {self.value}"


@dataclass(frozen=True)
class Source:
    """A file or directory of Parquet or delimited text; `columns` names a header-less text file's."""
    path: Path
    format: str = "parquet"  # parquet | csv
    delimiter: str = ","
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class SideTable:
    source: Source
    key: str
    category: str | None = None  # items only
    categorical: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportSpec:
    source: Source
    user: str
    item: str
    timestamp: str
    label: str  # a 0/1 column or a condition
    event_column: str | None = None
    event_types: tuple[str, ...] = ()
    event_rules: tuple[tuple[str, Condition], ...] = ()
    category: str | None = None
    requests: Condition | None = None
    history_max: int = 256
    eval_fraction: float = 0.1
    buckets: int = 16
    timestamp_unit: str = "s"  # what a numeric timestamp counts (a timestamp column carries its own unit)
    items: SideTable | None = None
    users: SideTable | None = None
    spec_file: str = ""  # for messages
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def label_condition(self) -> Condition | None:
        """The label as a condition, or None for a 0/1 column (a name without operators)."""
        return Condition.parse(self.label, "input.label") if _OPERATOR.search(self.label) else None

    @property
    def types(self) -> tuple[str, ...]:
        return self.event_types or tuple(name for name, _ in self.event_rules)

    @property
    def label_source(self) -> str:
        return f"imported from {self.path.name}: label = {self.label}, observed (no known click probability)"

    def fingerprint(self) -> str:
        """What the output depends on: the spec and the input files' sizes and times."""
        files = sorted(p for p in ([self.path] if self.path.is_file() else self.path.rglob("*")) if p.is_file())
        for side in (self.items, self.users):
            if side is not None:
                files.append(side.source.path)
        stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        from kunbench.importer.build import FORMAT_VERSION

        blob = json.dumps({"spec": self.to_dict(), "files": stamp, "format": FORMAT_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source"]["path"] = str(self.path)
        d["requests"] = str(self.requests) if self.requests else None
        d["event_rules"] = [[n, str(c)] for n, c in self.event_rules]
        for side in ("items", "users"):
            if d[side] is not None:
                d[side]["source"]["path"] = str(d[side]["source"]["path"])
        d.pop("extra")
        if d["timestamp_unit"] == "s":  # the default leaves a spec's fingerprint as it was before the key
            d.pop("timestamp_unit")
        return d


def _str(section: dict, key: str, where: str, required: bool = True) -> str | None:
    v = section.get(key)
    if v is None:
        if required:
            raise KunbenchError(f"{where}.{key} is required")
        return None
    if not isinstance(v, str) or not v.strip():
        raise KunbenchError(f"{where}.{key} must be a non-empty string, got {v!r}")
    return v.strip()


def _names(section: dict, key: str, where: str) -> tuple[str, ...]:
    v = section.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v) or len(set(v)) != len(v):
        raise KunbenchError(f"{where}.{key} must be a list of distinct names, got {v!r}")
    return tuple(v)


def _known(section: dict, keys: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise KunbenchError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")


SOURCE_KEYS = ("path", "format", "delimiter", "columns")


def _source(section: dict, where: str, base: Path) -> Source:
    path = (base / _str(section, "path", where)).resolve()
    if not path.exists():
        raise KunbenchError(f"{where}.path: no such file or directory {path}")
    text = path.suffix.lower() in (".csv", ".tsv", ".txt", ".data", ".inter", ".item", ".user") or (
        path.is_dir() and any(path.glob("*.csv")))
    fmt = section.get("format", "csv" if text else "parquet")
    if fmt not in ("csv", "parquet"):
        raise KunbenchError(f"{where}.format must be csv or parquet, got {fmt!r}")
    delimiter = section.get("delimiter", "\t" if path.suffix.lower() in (".tsv", ".inter", ".item", ".user") else ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise KunbenchError(f"{where}.delimiter must be one character, got {delimiter!r}")
    return Source(path, fmt, delimiter, _names(section, "columns", where))


def _side(section: dict | None, where: str, base: Path) -> SideTable | None:
    if section is None:
        return None
    _known(section, (*SOURCE_KEYS, "key", "category", "categorical", "dense"), where)
    return SideTable(_source(section, where, base), _str(section, "key", where),
                     _str(section, "category", where, required=False),
                     _names(section, "categorical", where), _names(section, "dense", where))


def load_spec(path: str | Path) -> ImportSpec:
    path = Path(path)
    data = read_document(path, tomllib.loads, "TOML import spec")
    _known(data, ("input", "events", "output", "items", "users"), str(path.name))
    base = path.resolve().parent
    inp = data.get("input")
    if not isinstance(inp, dict):
        raise KunbenchError(f"{path.name}: needs an [input] table")
    _known(inp, (*SOURCE_KEYS, "user", "item", "timestamp", "timestamp_unit", "category", "label", "requests"),
           "input")
    source = _source(inp, "input", base)
    ev = data.get("events")
    if not isinstance(ev, dict):
        raise KunbenchError(f"{path.name}: needs an [events] table (column + types, or rules)")
    _known(ev, ("column", "types", "rules"), "events")
    column, types, rules = _str(ev, "column", "events", required=False), _names(ev, "types", "events"), ()
    if ev.get("rules") is not None:
        if column is not None or types:
            raise KunbenchError("events: give either column + types or rules, not both")
        raw = ev["rules"]
        if not isinstance(raw, list) or not raw or not all(isinstance(r, dict) and set(r) == {"name", "when"}
                                                           for r in raw):
            raise KunbenchError("events.rules must be a list of {name = ..., when = \"COLUMN OP VALUE\"}")
        rules = tuple((str(r["name"]), Condition.parse(r["when"], f"events.rules[{i}].when")) for i, r in enumerate(raw))
        if len({n for n, _ in rules}) != len(rules):
            raise KunbenchError("events.rules: names must be distinct")
    elif column is None or not types:
        raise KunbenchError("events: needs column and types (the event types kept, most important first), or rules")
    out = data.get("output", {})
    _known(out, ("history_max", "eval_fraction", "buckets"), "output")
    history_max = out.get("history_max", 256)
    eval_fraction = out.get("eval_fraction", 0.1)
    buckets = out.get("buckets", 16)
    if not isinstance(history_max, int) or isinstance(history_max, bool) or not 1 <= history_max <= 100_000:
        raise KunbenchError(f"output.history_max must be an integer in [1, 100000], got {history_max!r}")
    if not isinstance(eval_fraction, (int, float)) or not (math.isfinite(eval_fraction) and 0 <= eval_fraction < 1):
        raise KunbenchError(f"output.eval_fraction must be in [0, 1), got {eval_fraction!r}")
    if not isinstance(buckets, int) or isinstance(buckets, bool) or not 1 <= buckets <= 1024:
        raise KunbenchError(f"output.buckets must be an integer in [1, 1024], got {buckets!r}")
    requests = inp.get("requests")
    unit = inp.get("timestamp_unit", "s")
    if not isinstance(unit, str) or unit not in TIMESTAMP_UNITS:
        raise KunbenchError(f"input.timestamp_unit must be one of {', '.join(TIMESTAMP_UNITS)}, got {unit!r}")
    spec = ImportSpec(
        source=source, user=_str(inp, "user", "input"), item=_str(inp, "item", "input"),
        timestamp=_str(inp, "timestamp", "input"), label=_str(inp, "label", "input"),
        event_column=column, event_types=types, event_rules=rules,
        category=_str(inp, "category", "input", required=False),
        requests=Condition.parse(requests, "input.requests") if requests is not None else None,
        history_max=history_max, eval_fraction=float(eval_fraction), buckets=buckets, timestamp_unit=unit,
        items=_side(data.get("items"), "items", base), users=_side(data.get("users"), "users", base),
        spec_file=str(path))
    spec.label_condition  # noqa: B018 - a malformed label expression fails here, before any work
    return spec
