"""Reading a dataset directory's manifest.json: the public contract between generator and users.

`DatasetSchema` is the part models need (fields, cardinalities, event types); `Manifest` adds
files, checksums and per-split statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError

MANIFEST_NAME = "manifest.json"
SUPPORTED_SCHEMA_VERSIONS = (1,)
ROLES = ("request_ts", "label", "oracle", "context_categorical", "context_dense", "context_multihot",
         "sequence")


@dataclass(frozen=True)
class Column:
    name: str
    role: str
    dtype: str
    cardinality: int | None = None  # categorical, multi-hot, sequence item/category
    entity: str | None = None  # shared ID spaces: "user", "item", "item_category", "surface"
    event_type: str | None = None  # sequence columns
    part: str | None = None  # sequence columns: item | category | ts
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Column":
        known = {"name", "role", "dtype", "cardinality", "entity", "event_type", "part"}
        missing = {"name", "role", "dtype"} - d.keys()
        if missing:
            raise KunbenchError(f"manifest column entry {d!r} lacks {', '.join(sorted(missing))}")
        if d["role"] not in ROLES:
            raise KunbenchError(f"manifest column {d['name']!r} has unknown role {d['role']!r}")
        card = d.get("cardinality")
        if card is not None and (not isinstance(card, int) or isinstance(card, bool) or card < 1):
            raise KunbenchError(f"manifest column {d['name']!r}: cardinality must be a positive integer, got {card!r}")
        return cls(**{k: d.get(k) for k in known}, extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class DatasetSchema:
    """What a model must know about a dataset's columns to build its input layer."""

    categorical: tuple[Column, ...]
    dense: tuple[Column, ...]
    multihot: tuple[Column, ...]
    event_types: tuple[str, ...]
    sequence_columns: dict[str, dict[str, Column]]  # event type -> part -> column

    @classmethod
    def from_columns(cls, columns: list[Column]) -> "DatasetSchema":
        seq: dict[str, dict[str, Column]] = {}
        for c in columns:
            if c.role == "sequence":
                seq.setdefault(c.event_type, {})[c.part] = c
        for et, parts in seq.items():
            if set(parts) != {"item", "category", "ts"}:
                raise KunbenchError(f"event type {et!r} needs item, category and ts columns, has {sorted(parts)}")
        return cls(
            categorical=tuple(c for c in columns if c.role == "context_categorical"),
            dense=tuple(c for c in columns if c.role == "context_dense"),
            multihot=tuple(c for c in columns if c.role == "context_multihot"),
            event_types=tuple(seq),
            sequence_columns=seq,
        )

    def categorical_index(self, entity: str) -> int:
        """Position in `Batch.context_categorical` of the field holding an entity (e.g. the ad)."""
        for i, c in enumerate(self.categorical):
            if c.entity == entity:
                return i
        raise KunbenchError(f"dataset has no categorical column with entity {entity!r}")

    @property
    def item_cardinality(self) -> int:
        return max(c.cardinality for cols in self.sequence_columns.values() for c in [cols["item"]])

    @property
    def category_cardinality(self) -> int:
        return max(c.cardinality for cols in self.sequence_columns.values() for c in [cols["category"]])


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]
    columns: tuple[Column, ...]
    schema: DatasetSchema

    @property
    def splits(self) -> dict[str, Any]:
        return self.data["splits"]

    def files(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise KunbenchError(f"dataset {self.root} has no split {split!r} (has {', '.join(self.splits)})")
        return [self.root / f["path"] for f in self.splits[split]["files"]]

    def split_rows(self, split: str) -> int:
        return int(self.splits[split]["rows"])

    @property
    def has_oracle(self) -> bool:
        return any(c.role == "oracle" for c in self.columns)

    @property
    def generated(self) -> bool:
        return self.data.get("generator") == "kunbench.generators.ctr"

    @property
    def label_source(self) -> str:
        """Where the labels came from, in words: the manifest's own `label_source`, else what the
        generator did; never a claim that a generator made data it did not make."""
        if self.data.get("label_source"):
            return str(self.data["label_source"])
        if self.generated:
            return "kunbench.generators.ctr: clicks drawn from the known probability p_true"
        return f"not stated (made by {self.data.get('generator') or 'an unnamed tool'})"

    @property
    def oracle_source(self) -> str | None:
        """What the oracle column is, or None without one."""
        if not self.has_oracle:
            return None
        return "the generator's p_true" if self.generated else "the dataset's oracle column"

    @property
    def output_version(self) -> int | None:
        """The generator's output version (which signal terms exist), None for data it did not make.
        Manifests written before the field existed are version 2 (terms 1-7)."""
        if not self.generated:
            return None
        return int(self.data.get("output_version", 2))


def load_manifest(root: str | Path) -> Manifest:
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise KunbenchError(f"{root} is not a kunbench dataset (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KunbenchError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema_version") not in SUPPORTED_SCHEMA_VERSIONS:
        version = data.get("schema_version") if isinstance(data, dict) else None
        raise KunbenchError(f"{path}: unsupported schema_version {version!r} "
                            f"(this kunbench reads {SUPPORTED_SCHEMA_VERSIONS})")
    for key in ("columns", "splits"):
        if key not in data:
            raise KunbenchError(f"{path} lacks {key!r}")
    if not isinstance(data["columns"], list) or not all(isinstance(c, dict) for c in data["columns"]):
        raise KunbenchError(f"{path}: 'columns' must be a list of column objects")
    if not isinstance(data["splits"], dict) or not all(
            isinstance(v, dict) and isinstance(v.get("files"), list) for v in data["splits"].values()):
        raise KunbenchError(f"{path}: 'splits' must map split names to objects with a 'files' list")
    for split, entry in data["splits"].items():
        for f in entry["files"]:
            _check_file_entry(path, split, f)
    columns = tuple(Column.from_dict(c) for c in data["columns"])
    return Manifest(root, data, columns, DatasetSchema.from_columns(list(columns)))


def _check_file_entry(manifest_path: Path, split: str, f: Any) -> None:
    """A file entry names a file inside the dataset directory, with integer counts: a manifest
    must not send a reader elsewhere on the disk, nor into arithmetic on strings."""
    where = f"{manifest_path}: {split} file {f.get('path') if isinstance(f, dict) else f!r}"
    if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"]:
        raise KunbenchError(f"{where}: each file entry needs a 'path' string")
    rel = Path(f["path"])
    if rel.is_absolute() or ".." in rel.parts:
        raise KunbenchError(f"{where}: paths must stay inside the dataset directory")
    for key in ("rows", "bytes"):
        v = f.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise KunbenchError(f"{where}: '{key}' must be a non-negative integer, got {v!r}")
    if f.get("sha256") is not None and not isinstance(f["sha256"], str):
        raise KunbenchError(f"{where}: 'sha256' must be a string, got {f['sha256']!r}")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_files(m: "Manifest") -> list[str]:
    """One line per missing or damaged file of the manifest; empty when everything matches."""
    import pyarrow.parquet as pq

    problems = []
    cfg = m.data.get("config") if isinstance(m.data.get("config"), dict) else {}
    if "rows" in cfg:  # a generated dataset: its config says which splits and how many rows it has
        listed = sum(int(s_.get("rows", 0)) for s_ in m.splits.values())
        if listed != int(cfg["rows"]):
            problems.append(f"manifest lists {listed} rows in its splits, its config made {int(cfg['rows'])}")
        if float(cfg.get("eval_fraction", 0)) > 0 and "eval" not in m.splits:
            problems.append("manifest lists no eval split, though its config has eval_fraction "
                            f"{cfg.get('eval_fraction')}")
    seen: dict[str, str] = {}
    for split, s in m.splits.items():
        for f in s["files"]:
            key = str(Path(f.get("path", "")))
            if key in seen:
                problems.append(f"manifest: {key} is listed twice ({seen[key]} and {split}): its rows would be "
                                f"read twice" + (", in training and in evaluation" if seen[key] != split else ""))
            seen[key] = split
    for split, s in m.splits.items():
        listed = sum(int(f.get("rows") or 0) for f in s["files"])
        if isinstance(s.get("rows"), int) and s["rows"] != listed:
            problems.append(f"manifest: split {split!r} says {s['rows']} rows, its files list {listed}")
        for i, f in enumerate(s["files"]):
            if "path" not in f:
                problems.append(f"manifest: {split} file #{i} has no path")
                continue
            path = m.root / f["path"]
            if not path.is_file():
                problems.append(f"missing: {f['path']}")
                continue
            size = path.stat().st_size
            lacks = [k for k in ("bytes", "sha256", "rows") if k not in f]
            if lacks:
                problems.append(f"unchecked: {f['path']} (the manifest lists no {', '.join(lacks)})")
                continue
            if size != f["bytes"]:
                problems.append(f"damaged: {f['path']} (size {size} bytes, manifest says {f['bytes']})")
                continue
            if sha256_file(path) != f["sha256"]:
                problems.append(f"damaged: {f['path']} (sha256 mismatch)")
                continue
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged file
                problems.append(f"damaged: {f['path']} (unreadable: {exc})")
                continue
            if rows != f["rows"]:
                problems.append(f"damaged: {f['path']} ({rows} rows, manifest says {f['rows']})")
    return problems


def require_intact(m: "Manifest", skip_hint: str = "") -> None:
    """Raise one line naming the first missing or damaged shard (sizes, sha256, row counts);
    `skip_hint` names the caller's way to skip the check, if it has one."""
    problems = verify_files(m)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise KunbenchError(f"dataset {m.root} is damaged: {problems[0]}{more}; regenerate it"
                            + (f", or {skip_hint}" if skip_hint else ""))


def manifest_fingerprint(root: str | Path) -> str:
    """sha256 (16 hex) of the dataset's manifest.json bytes: it holds the config, seed and checksums,
    so two results with the same fingerprint trained and evaluated on the same rows."""
    return hashlib.sha256(Path(root, "manifest.json").read_bytes()).hexdigest()[:16]
