"""`kunbench compare BASE NEW`: match measurements, compute deltas, apply regression thresholds.

Matching: by (suite, backend, variant, name). Each of BASE and NEW may be one result file or
several (a directory); when a key appears in several documents the newest document wins.

Thresholds (`--fail METRIC:THRESHOLD`, repeatable):
    qps:-5%        fail when a matching metric drops by more than 5 %
    ne:+0.1%       fail when it rises by more than 0.1 %
    latency_p99:+10%
    ne:+0.001      an absolute change (no % sign)
    ne:0.1%        no sign: the bad direction is the measurement's own ("better": lower -> a rise is bad)
METRIC is matched against measurement names: exactly, as a glob (`*qps*`), or as the first/last
`_`-separated part of a name (`qps` matches `train_qps` and `infer_qps`).

Noise: a change counts only when it lies outside the measured noise,
|new - base| > k * sqrt(spread_base^2 + spread_new^2) (k = 2 by default; spreads are standard
deviations, see kunbench.results). A regression fails the comparison (exit status 1) only when it is
past the threshold in the bad direction AND outside the noise. Without a spread on either side the
noise is taken as zero and the row says so.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any

from kunbench.errors import KunbenchError
from kunbench.results import environment_summary, finite, key_of, measurements_of

DEFAULT_K = 2.0
_RULE = re.compile(r"^\s*(?P<metric>[^:]+?)\s*:\s*(?P<sign>[+-]?)\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<pct>%?)\s*$")


@dataclass(frozen=True)
class Rule:
    text: str
    pattern: str
    direction: int  # +1: a rise is bad, -1: a drop is bad, 0: from the measurement's `better`
    threshold: float  # > 0, in percent when `percent`, else in the metric's unit
    percent: bool

    def matches(self, name: str) -> bool:
        p = self.pattern
        return (fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f"{p}_*")
                or fnmatch.fnmatchcase(name, f"*_{p}"))

    def bad_direction(self, better: str) -> int:
        if self.direction:
            return self.direction
        return {"lower": +1, "higher": -1}.get(better, 0)


def parse_rule(text: str) -> Rule:
    m = _RULE.match(text)
    if not m:
        raise KunbenchError(f"--fail {text!r}: expected METRIC:THRESHOLD such as qps:-5% or ne:+0.1%")
    threshold = float(m["num"])
    if threshold <= 0:
        raise KunbenchError(f"--fail {text!r}: the threshold must be above zero")
    direction = {"+": 1, "-": -1, "": 0}[m["sign"]]
    return Rule(text.strip(), m["metric"], direction, threshold, bool(m["pct"]))


@dataclass
class Row:
    key: tuple[str, str, str, str]
    unit: str
    better: str
    base: float | None
    new: float | None
    base_spread: float | None
    new_spread: float | None
    k: float
    rule: Rule | None = None
    status: str = ""  # "FAIL", "worse", "better", "within noise", "unchanged", "missing", "new", "n/a"
    note: str = ""

    @property
    def delta(self) -> float | None:
        return self.new - self.base if finite(self.base) and finite(self.new) else None

    @property
    def delta_pct(self) -> float | None:
        d = self.delta
        if d is None or not self.base:
            return None
        return 100.0 * d / abs(self.base)

    @property
    def noise(self) -> float | None:
        """k * combined spread, or None when neither side measured its noise."""
        spreads = [s for s in (self.base_spread, self.new_spread) if finite(s)]
        if not spreads:
            return None
        return self.k * math.sqrt(sum(s * s for s in spreads))

    @property
    def outside_noise(self) -> bool:
        d = self.delta
        if d is None:
            return False
        n = self.noise
        return abs(d) > (n if n is not None else 0.0)


@dataclass
class Comparison:
    rows: list[Row]
    failures: list[Row]
    warnings: list[str] = field(default_factory=list)
    unmatched_rules: list[Rule] = field(default_factory=list)  # gates that matched no common metric

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def _collect(docs: list[dict[str, Any]], side: str, warnings: list[str]) -> tuple[dict, dict]:
    out: dict[tuple, dict] = {}
    origin: dict[tuple, str] = {}
    for doc in sorted(docs, key=lambda d: str(d.get("created", ""))):
        for m in measurements_of(doc):
            k = key_of(m)
            if k in out and origin[k] != doc.get("_source"):
                warnings.append(f"{side}: {'/'.join(k)} appears in several files; using the newest "
                                f"({doc.get('_source')})")
            out[k] = m
            origin[k] = doc.get("_source", "")
    return out, origin


def environment_warnings(base_docs: list[dict], new_docs: list[dict]) -> list[str]:
    def envs(docs):
        return [environment_summary(d.get("environment") or {}) for d in docs]

    warnings: list[str] = []
    b, n = envs(base_docs), envs(new_docs)
    for field_name, label in (("gpu", "GPU"), ("cpu", "CPU"), ("device", "device"), ("world_size", "world size"),
                              ("dtype", "dtype")):
        bv = sorted({str(e.get(field_name)) for e in b})
        nv = sorted({str(e.get(field_name)) for e in n})
        if bv != nv:
            warnings.append(f"different {label}: base {', '.join(bv)} vs new {', '.join(nv)}; "
                            f"the numbers may not be comparable (baselines should come from the same machine)")
    def datasets(docs):
        return sorted({str((d.get("dataset") or {}).get("manifest_fingerprint")) for d in docs
                       if (d.get("dataset") or {}).get("manifest_fingerprint")})

    bd, nd = datasets(base_docs), datasets(new_docs)
    if bd and nd and bd != nd:
        warnings.append(f"different datasets: base {', '.join(bd)} vs new {', '.join(nd)} (manifest fingerprints); "
                        f"quality metrics are not comparable across datasets")
    for side, docs in (("base", base_docs), ("new", new_docs)):
        for d in docs:
            tel = d.get("telemetry") or {}
            host = tel.get("host") or {}
            load = host.get("loadavg_1m_max", host.get("loadavg_1m"))
            cores = host.get("cores_usable") or host.get("cores_logical")
            src = d.get("_source", side)
            if load is not None and cores and load > cores:
                warnings.append(f"{side} {src}: measured on a busy host (load {load:.1f} on {cores} cores); "
                                f"its timings carry drift that its window spreads do not show")
            if (tel.get("gpu") or {}).get("throttled"):
                warnings.append(f"{side} {src}: the GPU throttled during measurement "
                                f"({', '.join((tel.get('gpu') or {}).get('throttle_reasons', []))})")
    cpu_runs = any(str(e.get("device") or "").startswith("cpu") for e in b + n)
    for field_name, label in (("torch", "torch version"), ("cuda", "CUDA version"),
                              ("host_malloc", "host heap setting (CPU timings)")):
        if field_name == "host_malloc" and not cpu_runs:
            continue  # GPU timings do not go through the host heap
        missing = "not recorded" if field_name == "host_malloc" else "None"
        bv = sorted({str(e.get(field_name) or missing) for e in b})
        nv = sorted({str(e.get(field_name) or missing) for e in n})
        if bv != nv:
            warnings.append(f"note: {label} differs: base {', '.join(bv)} vs new {', '.join(nv)}")
    return warnings


def compare(base_docs: list[dict[str, Any]], new_docs: list[dict[str, Any]], rules: list[Rule] | None = None,
            k: float = DEFAULT_K) -> Comparison:
    rules = list(rules or [])
    warnings = environment_warnings(base_docs, new_docs)
    base, _ = _collect(base_docs, "base", warnings)
    new, _ = _collect(new_docs, "new", warnings)
    keys = list(base) + [k_ for k_ in new if k_ not in base]
    rows: list[Row] = []
    failures: list[Row] = []
    used_rules: set[str] = set()
    for key in keys:
        b, n = base.get(key), new.get(key)
        ref = n or b
        row = Row(key, ref.get("unit", ""), ref.get("better", "none"),
                  b.get("value") if b else None, n.get("value") if n else None,
                  b.get("spread") if b else None, n.get("spread") if n else None, k)
        if b is None:
            row.status = "new"
        elif n is None:
            row.status = "missing"
        elif row.delta is None:
            row.status = "n/a"
        else:
            d = row.delta
            if d == 0:
                row.status = "unchanged"
            elif not row.outside_noise:
                row.status = "within noise"
            else:
                good = {"lower": d < 0, "higher": d > 0}.get(row.better)
                row.status = "better" if good is True else "worse" if good is False else "changed"
            if row.noise is None and d != 0:
                row.note = "no noise estimate"
            for rule in rules:
                if not rule.matches(key[3]):
                    continue
                used_rules.add(rule.text)
                bad = rule.bad_direction(row.better)
                if bad == 0:
                    row.note = (row.note + "; " if row.note else "") + f"{rule.text}: no direction for this metric"
                    continue
                row.rule = rule
                if rule.percent:
                    moved = row.delta_pct
                    past = moved is not None and bad * moved > rule.threshold
                else:
                    past = bad * d > rule.threshold
                if past and row.outside_noise:
                    row.status = "FAIL"
                    failures.append(row)
                    break
                if past:
                    row.note = (row.note + "; " if row.note else "") + f"past {rule.text} but within noise"
        rows.append(row)
    unmatched = [rule for rule in rules if rule.text not in used_rules]
    return Comparison(rows, failures, warnings, unmatched)


def fmt_num(v: float | None, unit: str = "") -> str:
    if v is None or not finite(v):
        return "n/a"
    a = abs(v)
    if a == 0:
        s = "0"
    elif a >= 1e5 or a < 1e-3:
        s = f"{v:.4g}"
    elif a >= 100:
        s = f"{v:,.1f}"
    else:
        s = f"{v:.5g}"
    return f"{s} {unit}".strip() if unit else s


def table_rows(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    headers = ["suite", "backend", "variant", "metric", "base", "new", "delta", "delta %", "noise (k*spread)",
               "status", "note"]
    out = []
    for r in cmp.rows:
        pct = r.delta_pct
        out.append([r.key[0], r.key[1], r.key[2], r.key[3], fmt_num(r.base, r.unit), fmt_num(r.new, r.unit),
                    fmt_num(r.delta), "n/a" if pct is None else f"{pct:+.2f}%",
                    "n/a" if r.noise is None else fmt_num(r.noise), r.status, r.note])
    return headers, out
