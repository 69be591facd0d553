"""The result document: its schema, its measurements and their validation (docs/measurement.md).

Every run writes one JSON document, schema-versioned. A suite run (kind "suite"):

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

A `kunbench train` run writes kind "train" (metrics is an object of scalars); readers turn its
scalar metrics into measurements of suite "train" with no spread.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Iterable

from kunbench.errors import KunbenchError
from kunbench.stats import std

RESULT_SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "kind", "created", "backend", "config", "dataset", "metrics",
                 "environment", "timing")
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


def measurement(suite: str, backend: str, variant: str, name: str, value: float | None, *, unit: str = "",
                better: str = "none", samples: list[float] | None = None, spread: float | None = None,
                spread_kind: str | None = None, telemetry: dict | None = None, **extra: Any) -> dict[str, Any]:
    """One measurement dict; with samples and no explicit spread, spread = their standard deviation."""
    if better not in BETTER:
        raise ValueError(f"better must be one of {BETTER}, got {better!r}")
    if spread is None and samples is not None and len(samples) >= 2:
        spread = std(samples)
        spread_kind = spread_kind or f"std over {len(samples)} samples"
    m = {"suite": suite, "backend": backend, "variant": variant or "", "name": name,
         "value": float(value) if finite(value) else None, "spread": spread if finite(spread) else None,
         "spread_kind": spread_kind, "unit": unit, "better": better,
         "samples": [float(s) if finite(s) else None for s in samples] if samples is not None else None}
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
            "git_sha": env.get("git_sha"), "hostname": env.get("hostname"), "host_malloc": env.get("host_malloc")}
