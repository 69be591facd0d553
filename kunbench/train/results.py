"""Result documents (measurement.md): one schema-versioned JSON per run, written atomically
(temp file in the same directory, fsync, os.replace) under a name that never collides."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError

RESULT_SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = "results"
REQUIRED_KEYS = ("schema_version", "kind", "created", "backend", "config", "dataset", "metrics",
                 "environment", "timing")


def _jsonable(obj: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN); tuples lists; paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def result_name(kind: str, label: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:60] or "run"
    return f"{kind}-{safe}-{stamp}-{uuid.uuid4().hex[:8]}.json"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting it later would race with other threads' files


def preflight_out_dir(out_dir: str | Path | None, flag: str = "--out") -> Path:
    """Check, before any work, that results can be written under `out_dir` (created if missing):
    a long run must not find out at its end that its results have nowhere to go."""
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_RESULTS_DIR)
    if out.exists() and not out.is_dir():
        raise KunbenchError(f"{flag} {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kunbench-write-check.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KunbenchError(f"{flag} {out}: cannot write there ({exc.strerror or exc})") from None
    return out


def atomic_write_json(path: str | Path, doc: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_jsonable(doc), fh, indent=2, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)  # mkstemp makes it 0600: a shared results directory stays readable
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_result(doc: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write `doc` under out_dir (default ./results) with a fresh unique name; returns the path."""
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise KunbenchError(f"result document lacks {', '.join(missing)}")
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_RESULTS_DIR)
    if out.exists() and not out.is_dir():
        raise KunbenchError(f"--out {out} exists and is not a directory")
    for _ in range(100):
        path = out / result_name(doc["kind"], str(doc.get("backend") or "run"))
        if not path.exists():
            return atomic_write_json(path, doc)
    raise KunbenchError(f"could not find a free result name in {out}")  # pragma: no cover


def read_result(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KunbenchError(f"{path} is not a readable result JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != RESULT_SCHEMA_VERSION:
        raise KunbenchError(f"{path}: unsupported result schema_version "
                            f"{doc.get('schema_version') if isinstance(doc, dict) else None!r}")
    return doc


def manifest_fingerprint(root: str | Path) -> str:
    """sha256 (16 hex) of the dataset's manifest.json bytes: it holds the config, seed and checksums."""
    h = hashlib.sha256(Path(root, "manifest.json").read_bytes())
    return h.hexdigest()[:16]
