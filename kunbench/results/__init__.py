"""Suite result documents: schema, measurements with their spread, loading and validation.

A suite run writes one JSON document (through kunbench.train.results: atomic write, unique name,
schema-versioned) of kind "suite":

    {"schema_version": 1, "kind": "suite", "suite": "qps", "created": ISO-8601,
     "backend": "interformer,wukong",          # label: the backends measured
     "config": {...run options and each backend's resolved config...},
     "dataset": {...} | null, "environment": {...environment stamp, device, dtype, world_size...},
     "timing": {"total_s": ...}, "telemetry": {...merged window summary...},
     "metrics": [MEASUREMENT, ...], "tables": [TABLE, ...], "notes": [...], "extra": {...}}

A MEASUREMENT is identified by (suite, backend, variant, name):

    {"suite": "qps", "backend": "wukong", "variant": "bs=512", "name": "train_qps",
     "value": 1234.5, "spread": 12.3, "spread_kind": "std over 3 windows", "unit": "ex/s",
     "better": "higher", "samples": [...], "telemetry": {...} | null}

`spread` is the measured noise of `value` in the same unit (a standard deviation: over repeated
windows, over seeds, or of a bootstrap over eval rows; `spread_kind` says which); null when the
run had no way to estimate it. `kunbench compare` treats differences within a few spreads as noise.

`kunbench train` documents (kind "train") are read too: their scalar metrics become measurements of
suite "train" with no spread.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

from kunbench.errors import KunbenchError
from kunbench.train.results import (DEFAULT_RESULTS_DIR, RESULT_SCHEMA_VERSION, atomic_write_json, read_result,
                                    result_name)

SUITE_KIND = "suite"
BETTER = ("lower", "higher", "none")
MEASUREMENT_KEYS = ("suite", "backend", "variant", "name", "value", "unit", "better")

# scalar metrics of a `kunbench train` document, their unit and direction
TRAIN_METRICS = {
    "ne": ("", "lower"), "auc": ("", "higher"), "logloss": ("", "lower"), "calibration": ("", "none"),
    "gap_closed": ("", "higher"), "oracle_ne": ("", "none"), "flops_per_example": ("FLOP", "none"),
    "params": ("", "none"), "train_examples_per_s": ("ex/s", "higher"),
    "eval_examples_per_s": ("ex/s", "higher"),
}


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def stdev(samples: Iterable[float]) -> float | None:
    vals = [float(v) for v in samples if finite(v)]
    return statistics.stdev(vals) if len(vals) >= 2 else None


def measurement(suite: str, backend: str, variant: str, name: str, value: float | None, *, unit: str = "",
                better: str = "none", samples: list[float] | None = None, spread: float | None = None,
                spread_kind: str | None = None, telemetry: dict | None = None, **extra: Any) -> dict[str, Any]:
    """One measurement dict; with samples and no explicit spread, spread = their standard deviation."""
    if better not in BETTER:
        raise ValueError(f"better must be one of {BETTER}, got {better!r}")
    if spread is None and samples is not None and len(samples) >= 2:
        spread = stdev(samples)
        spread_kind = spread_kind or f"std over {len(samples)} samples"
    m = {"suite": suite, "backend": backend, "variant": variant or "", "name": name,
         "value": float(value) if finite(value) else None, "spread": spread if finite(spread) else None,
         "spread_kind": spread_kind, "unit": unit, "better": better,
         "samples": [float(s) for s in samples] if samples is not None else None}
    if telemetry is not None:
        m["telemetry"] = telemetry
    m.update(extra)
    return m


def make_document(suite: str, measurements: list[dict], *, backends: Iterable[str], config: dict,
                  dataset: dict | None, environment: dict, timing: dict, telemetry: dict | None = None,
                  tables: list[dict] | None = None, notes: list[str] | None = None,
                  extra: dict | None = None) -> dict[str, Any]:
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "kind": SUITE_KIND,
        "suite": suite,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": ",".join(backends) or suite,
        "config": config,
        "dataset": dataset,
        "metrics": measurements,
        "environment": environment,
        "timing": timing,
        "telemetry": telemetry,
        "tables": tables or [],
        "notes": notes or [],
        "extra": extra or {},
    }


def write_document(doc: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Validate, then write atomically (kunbench.train.results) under out_dir (default ./results)
    as suite-<name>-<backends>-<UTC stamp>-<random>.json."""
    validate(doc, "<new result>")
    out = Path(out_dir) if out_dir is not None else Path(DEFAULT_RESULTS_DIR)
    if out.exists() and not out.is_dir():
        raise KunbenchError(f"--out {out} exists and is not a directory")
    for _ in range(100):
        path = out / result_name(f"{SUITE_KIND}-{doc['suite']}", str(doc.get("backend") or "run"))
        if not path.exists():
            return atomic_write_json(path, doc)
    raise KunbenchError(f"could not find a free result name in {out}")  # pragma: no cover


def validate(doc: Any, source: str) -> dict[str, Any]:
    """Raise a one-line KunbenchError naming `source` unless `doc` is a readable kunbench result."""
    if not isinstance(doc, dict):
        raise KunbenchError(f"{source}: not a kunbench result (top level is {type(doc).__name__}, not an object)")
    if "schema_version" not in doc:
        raise KunbenchError(f"{source}: not a kunbench result (no schema_version)")
    if doc.get("schema_version") != RESULT_SCHEMA_VERSION:
        raise KunbenchError(f"{source}: unsupported result schema_version {doc.get('schema_version')!r} "
                            f"(this kunbench reads {RESULT_SCHEMA_VERSION})")
    kind = doc.get("kind")
    if kind == SUITE_KIND:
        metrics = doc.get("metrics")
        if not isinstance(metrics, list):
            raise KunbenchError(f"{source}: malformed suite result ('metrics' is not a list)")
        for i, m in enumerate(metrics):
            if not isinstance(m, dict):
                raise KunbenchError(f"{source}: malformed suite result (metrics[{i}] is not an object)")
            missing = [k for k in MEASUREMENT_KEYS if k not in m]
            if missing:
                raise KunbenchError(f"{source}: malformed suite result (metrics[{i}] lacks {', '.join(missing)})")
            if m["value"] is not None and not finite(m["value"]):
                raise KunbenchError(f"{source}: malformed suite result (metrics[{i}].value is {m['value']!r})")
            if m.get("spread") is not None and not finite(m["spread"]):
                raise KunbenchError(f"{source}: malformed suite result (metrics[{i}].spread is {m['spread']!r})")
            if m["better"] not in BETTER:
                raise KunbenchError(f"{source}: malformed suite result (metrics[{i}].better is {m['better']!r})")
        if not isinstance(doc.get("environment"), dict):
            raise KunbenchError(f"{source}: malformed suite result (no environment stamp)")
    elif kind == "train":
        if not isinstance(doc.get("metrics"), dict) or not isinstance(doc.get("environment"), dict):
            raise KunbenchError(f"{source}: malformed train result (metrics/environment missing)")
    else:
        raise KunbenchError(f"{source}: unknown result kind {kind!r} (expected 'suite' or 'train')")
    return doc


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate one result file; errors are one line naming the file."""
    p = Path(path)
    if p.is_dir():
        raise KunbenchError(f"{p} is a directory; pass result files (or use load_many)")
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise KunbenchError(f"{p}: no such result file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KunbenchError(f"{p}: not a readable result JSON ({exc})") from None
    validate(raw, str(p))
    doc = read_result(p)  # the shared reader (schema check) keeps one definition of a result file
    doc["_source"] = str(p)
    return doc


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


def measurements_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The measurements of a document (a train document's scalar metrics become measurements)."""
    if doc.get("kind") == SUITE_KIND:
        return list(doc["metrics"])
    out = []
    for name, (unit, better) in TRAIN_METRICS.items():
        v = doc["metrics"].get(name)
        if finite(v):
            out.append(measurement("train", str(doc.get("backend")), str(doc.get("preset") or ""), name, v,
                                   unit=unit, better=better))
    return out


def key_of(m: dict[str, Any]) -> tuple[str, str, str, str]:
    return (str(m["suite"]), str(m["backend"]), str(m.get("variant") or ""), str(m["name"]))


def environment_summary(env: dict[str, Any]) -> dict[str, Any]:
    """The fields of an environment stamp that decide whether two runs are comparable."""
    gpu = env.get("gpu") or {}
    names = [d.get("name") for d in gpu.get("devices", [])] if gpu.get("available") else []
    return {"device": env.get("device"), "gpu": ", ".join(n for n in names if n) or None,
            "cpu": env.get("cpu"), "cpu_count": env.get("cpu_count"), "torch": env.get("torch"),
            "cuda": env.get("cuda"), "dtype": env.get("dtype"), "world_size": env.get("world_size"),
            "git_sha": env.get("git_sha"), "hostname": env.get("hostname")}
