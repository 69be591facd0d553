"""Where result documents live: the one writer (validated, atomic, under a name that never
collides) and the readers that `report` and `compare` use."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable

from kunbench.errors import KunbenchError, read_document
from kunbench.results.schema import REQUIRED_KEYS, SUITE_KIND, validate

DEFAULT_RESULTS_DIR = "results"


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
    """Validate `doc`, then write it atomically under out_dir (default ./results) as
    KIND[-SUITE]-BACKENDS-<UTC stamp>-<random>.json; returns the path."""
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise KunbenchError(f"result document lacks {', '.join(missing)}")
    validate(doc, "<new result>")
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_RESULTS_DIR)
    if out.exists() and not out.is_dir():
        raise KunbenchError(f"--out {out} exists and is not a directory")
    kind = f"{SUITE_KIND}-{doc['suite']}" if doc["kind"] == SUITE_KIND else str(doc["kind"])
    for _ in range(100):
        path = out / result_name(kind, str(doc.get("backend") or "run"))
        if not path.exists():
            return atomic_write_json(path, doc)
    raise KunbenchError(f"could not find a free result name in {out}")  # pragma: no cover


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate one result file; errors are one line naming the file."""
    p = Path(path)
    if p.is_dir():
        raise KunbenchError(f"{p} is a directory; pass result files (or use load_many)")
    raw = read_document(p, json.loads, "result JSON")
    validate(raw, str(p))
    raw["_source"] = str(p)
    return raw


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories expand to their *.json files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise KunbenchError(f"{p}: no result files (*.json) in this directory")
            out += found
        else:
            out.append(p)
    return out


def load_many(paths: Iterable[str | Path], skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Result files as given, and every *.json of a given directory. A file found in a directory
    that cannot be read (say, truncated by a killed run) is skipped with its reason appended to
    `skipped`, so one bad file does not hide the rest; a file named explicitly must load."""
    docs: list[dict[str, Any]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            docs.append(load(p))
            continue
        found = expand_paths([p])
        loaded = []
        for f in found:
            try:
                loaded.append(load(f))
            except KunbenchError as exc:
                if skipped is None:
                    raise
                skipped.append(str(exc))
        if not loaded:
            raise KunbenchError(f"{p}: none of its {len(found)} result files could be read")
        docs += loaded
    return docs


