"""PNG plots from stored results (matplotlib, Agg backend: no display needed).

- scaling documents: NE against forward FLOPs/example (log x) per backend, with the fitted
  NE(C) = NE_0 - eta ln(C / C_0) line and eta in the legend;
- ablation documents: bars of delta NE %, delta FLOPs % and delta QPS % per ablation row;
- qps documents: inference and training examples/s against batch size per backend.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise KunbenchError("--plot needs matplotlib (pip install 'matplotlib>=3.7')") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _stem(doc: dict[str, Any], what: str) -> str:
    src = Path(doc.get("_source", "")).stem or doc.get("created", "run")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{what}-{src}")


def plot_scaling(doc: dict[str, Any], out_dir: Path) -> Path | None:
    data = (doc.get("extra") or {}).get("scaling")
    if not data:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # plot the NE the fit was made on (expected NE when the data has p_true), so line and points agree
    ons = {(entry.get("fit") or {}).get("on") or "ne" for entry in data.values()}
    for backend, entry in data.items():
        key = (entry.get("fit") or {}).get("on") or "ne"
        pts = [p for p in entry.get("points", []) if p.get("flops") and p.get(key) is not None]
        if not pts:
            continue
        xs = [p["flops"] for p in pts]
        ys = [p[key] for p in pts]
        errs = [p.get(f"{key}_spread") or 0.0 for p in pts]
        line = ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, label=backend)
        fit = entry.get("fit") or {}
        if fit.get("eta") is not None:
            lo, hi = min(xs), max(xs)
            grid = [lo * (hi / lo) ** (i / 50) for i in range(51)] if hi > lo else [lo]
            c0 = fit["c0"]
            ax.plot(grid, [fit["ne0"] - fit["eta"] * math.log(c / c0) for c in grid], "-",
                    color=line[0].get_color(), alpha=0.7,
                    label=f"{backend} fit: eta={fit['eta']:.4f}" + (f", R²={fit['r2']:.2f}" if fit.get("r2") is not None
                                                                     else ""))
    ax.set_xscale("log")
    ax.set_xlabel("forward FLOPs / example")
    ax.set_ylabel(("eval expected NE" if ons == {"expected_ne"} else "eval NE") + " (lower is better)")
    _finish_log_axes(ax, "NE vs compute: NE(C) = NE_0 - eta ln(C/C_0)")
    return _save(fig, out_dir / f"{_stem(doc, 'scaling')}.png")


def plot_ablation(doc: dict[str, Any], out_dir: Path) -> Path | None:
    rows = (doc.get("extra") or {}).get("ablation_rows")
    if not rows:
        return None
    plt = _plt()
    labels = [r["row"] for r in rows]
    # expected NE (p_true as soft labels) when the rows carry it; older documents have sampled NE only
    has_expected = any(r.get("delta_expected_ne_pct") is not None for r in rows)
    ne_key = "delta_expected_ne_pct" if has_expected else "delta_ne_pct"
    ne_title = "Δ expected NE %" if ne_key == "delta_expected_ne_pct" else "ΔNE %"
    series = [(ne_key, ne_title), ("delta_flops_pct", "ΔFLOPs %"), ("delta_qps_train_pct", "Δ train QPS %")]
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 0.35 * len(labels) + 1.8), sharey=True)
    for ax, (key, title) in zip(axes, series):
        vals = [r.get(key) if r.get(key) is not None else 0.0 for r in rows]
        colors = ["#999999" if r.get(key) is None else ("#c0392b" if v > 0 else "#2e86c1") for r, v in zip(rows, vals)]
        if key != ne_key:  # more FLOPs is not "bad" by itself; keep one neutral colour
            colors = ["#999999" if r.get(key) is None else "#5d6d7e" for r in rows]
        err = None
        if key == ne_key:
            err = [r.get(f"{ne_key}_spread") or 0.0 for r in rows]
        ax.barh(range(len(labels)), vals, color=colors, xerr=err, capsize=2 if err else 0)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(title)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Kunlun ablations vs full Kunlun (ΔNE > 0 is worse)")
    return _save(fig, out_dir / f"{_stem(doc, 'ablation')}.png")


def plot_qps(doc: dict[str, Any], out_dir: Path) -> Path | None:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for m in doc.get("metrics", []):
        if m.get("suite") != "qps" or m["name"] not in ("infer_qps", "train_qps") or m.get("value") is None:
            continue
        bs = m.get("batch_size")
        if bs is None:
            continue
        series.setdefault((m["backend"], m["name"]), []).append((int(bs), float(m["value"])))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (backend, name), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if name == "infer_qps" else "s--",
                label=f"{backend} {name.replace('_qps', '')}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("examples / s")
    _finish_log_axes(ax, "Throughput vs batch size")
    return _save(fig, out_dir / f"{_stem(doc, 'qps')}.png")


def _finish_log_axes(ax, title: str) -> None:
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def plot_documents(docs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KunbenchError(f"--plot {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in docs:
        for fn in (plot_scaling, plot_ablation, plot_qps):
            p = fn(doc, out)
            if p is not None:
                paths.append(p)
    return paths
