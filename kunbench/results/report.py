"""Render result documents as tables: rich on a terminal, Markdown (tabulate) and CSV.

A suite document may carry presentation tables (`tables`: [{"title", "columns": [{"key", "header",
"fmt", "pm"}], "rows": [{key: value}], "notes": [...]}]); they are rendered as they are (with
`value ± spread` where a column names its spread key in "pm"). Documents without tables get a pivot
of their measurements: one row per (suite, backend, variant), one column per metric. CSV is always
the long form: one line per measurement, so nothing is lost.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable

from kunbench.results import finite, measurements_of
from kunbench.results.compare import fmt_num
from kunbench.telemetry import short_summary

FORMATS = ("table", "md", "csv")


# ---- cells -------------------------------------------------------------------------------------
def fmt_cell(value: Any, fmt: str | None = None, spread: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if fmt:
            try:
                s = format(value, fmt)
            except (ValueError, TypeError):
                s = str(value)
        else:
            s = fmt_num(float(value)) if isinstance(value, float) else f"{value:,}"
        if finite(spread):
            try:
                sfmt = fmt.replace("+", "") if fmt else None
                s += " ± " + (format(spread, sfmt) if sfmt else fmt_num(float(spread)))
            except (ValueError, TypeError):
                s += f" ± {spread}"
        return s
    return str(value)


def table_cells(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = table["columns"]
    headers = [c.get("header", c["key"]) for c in cols]
    rows = []
    for r in table["rows"]:
        rows.append([fmt_cell(r.get(c["key"]), c.get("fmt"), r.get(c["pm"]) if c.get("pm") else None)
                     for c in cols])
    return headers, rows


# ---- documents -> tables -------------------------------------------------------------------------
def doc_title(doc: dict[str, Any]) -> str:
    env = doc.get("environment") or {}
    where = env.get("device") or "?"
    gpu = env.get("gpu") or {}
    if gpu.get("available") and str(where).startswith("cuda"):
        where += " (" + ", ".join(d["name"] for d in gpu.get("devices", [])[:1]) + ")"
    elif env.get("cpu"):
        where += f" ({env.get('cpu')}, {env.get('cpu_count')} cores)"
    sha = (env.get("git_sha") or "")[:10]
    kind = doc.get("suite") if doc.get("kind") == "suite" else f"train {doc.get('backend')}"
    world = env.get("world_size")
    return (f"{kind} — {doc.get('created', '?')} — {where}, {env.get('dtype', 'fp32')}"
            + (f", world {world}" if world and world != 1 else "") + (f", git {sha}" if sha else ""))


def pivot(doc: dict[str, Any]) -> dict[str, Any]:
    """A presentation table of a document's measurements (rows: suite/backend/variant; columns: metric)."""
    ms = measurements_of(doc)
    metric_cols: list[tuple[str, str]] = []
    rows: dict[tuple, dict[str, Any]] = {}
    for m in ms:
        mk = (m["name"], m.get("unit") or "")
        if mk not in metric_cols:
            metric_cols.append(mk)
        rk = (m["suite"], m["backend"], m.get("variant") or "")
        row = rows.setdefault(rk, {"suite": rk[0], "backend": rk[1], "variant": rk[2]})
        row[m["name"]] = m.get("value")
        row[m["name"] + "__spread"] = m.get("spread")
    cols = [{"key": "suite", "header": "suite"}, {"key": "backend", "header": "backend"},
            {"key": "variant", "header": "variant"}]
    cols += [{"key": n, "header": f"{n} ({u})" if u else n, "pm": n + "__spread"} for n, u in metric_cols]
    return {"title": doc_title(doc), "columns": cols, "rows": list(rows.values())}


def doc_tables(doc: dict[str, Any]) -> list[dict[str, Any]]:
    tables = [dict(t) for t in (doc.get("tables") or [])]
    if not tables:
        return [pivot(doc)]
    title = doc_title(doc)
    for t in tables:
        t["title"] = f"{t.get('title', doc.get('suite'))} [{title}]"
    return tables


def telemetry_line(doc: dict[str, Any]) -> str:
    return f"telemetry: {short_summary(doc.get('telemetry'))}" if doc.get("telemetry") else ""


# ---- rendering ------------------------------------------------------------------------------------
def rich_table(table: dict[str, Any]):
    from rich.table import Table

    headers, rows = table_cells(table)
    t = Table(title=table.get("title"), show_lines=False, title_justify="left")
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i < table.get("label_columns", 1) else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def wide_console(console=None):
    """The given console on a terminal; a 200-column one when output is piped, so tables stay readable."""
    from rich.console import Console

    if console is not None and console.is_terminal:
        return console
    return Console(width=200, file=getattr(console, "file", None))


def print_tables(console, docs: Iterable[dict[str, Any]]) -> None:
    console = wide_console(console)
    for doc in docs:
        for table in doc_tables(doc):
            console.print(rich_table(table))
            for note in table.get("notes", []):
                console.print(f"  {note}", highlight=False)
        for note in doc.get("notes", []):
            console.print(f"note: {note}", highlight=False)
        line = telemetry_line(doc)
        if line:
            console.print(line, highlight=False)
        if doc.get("_source"):
            console.print(f"source: {doc['_source']}", highlight=False)
        console.print()


def markdown(docs: Iterable[dict[str, Any]]) -> str:
    from tabulate import tabulate

    parts = []
    for doc in docs:
        for table in doc_tables(doc):
            headers, rows = table_cells(table)
            parts.append(f"### {table.get('title')}\n")
            parts.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
            parts.append("")
            parts += [f"- {n}" for n in table.get("notes", [])]
            parts.append("")
        parts += [f"- note: {n}" for n in doc.get("notes", [])]
        line = telemetry_line(doc)
        if line:
            parts.append(f"- {line}")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


CSV_FIELDS = ["source", "created", "suite", "backend", "variant", "metric", "value", "spread", "spread_kind",
              "unit", "better", "n_samples", "device", "gpu", "throttled"]


def csv_text(docs: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for doc in docs:
        env = doc.get("environment") or {}
        gpu = env.get("gpu") or {}
        gpu_name = gpu["devices"][0]["name"] if gpu.get("available") and gpu.get("devices") else ""
        for m in measurements_of(doc):
            tel = (m.get("telemetry") or {}).get("gpu") or {}
            w.writerow([doc.get("_source", ""), doc.get("created", ""), m["suite"], m["backend"], m.get("variant", ""),
                        m["name"], "" if m.get("value") is None else repr(float(m["value"])),
                        "" if m.get("spread") is None else repr(float(m["spread"])), m.get("spread_kind") or "",
                        m.get("unit", ""), m.get("better", ""), len(m.get("samples") or []), env.get("device", ""),
                        gpu_name, "yes" if tel.get("throttled") else ("no" if tel.get("available") else "")])
    return buf.getvalue()


def render(docs: list[dict[str, Any]], fmt: str, console=None) -> str | None:
    """Print (table) or return the text (md, csv)."""
    if fmt == "table":
        print_tables(console, docs)
        return None
    if fmt == "md":
        return markdown(docs)
    if fmt == "csv":
        return csv_text(docs)
    raise ValueError(f"unknown format {fmt!r}")
