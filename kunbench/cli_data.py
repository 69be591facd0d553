"""`kunbench generate`, `inspect` and `probe`: write a synthetic CTR dataset, summarize, verify and probe one."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from kunbench.cli_common import console, err_console, friendly_errors
from kunbench.errors import KunbenchError

PRESET_NAMES = ("tiny", "small", "standard", "paper")


@click.command("generate")
@click.option("--preset", default="tiny", show_default=True,
              help="Size preset: tiny, small, standard or paper.")
@click.option("--rows", type=int, default=None, help="Total rows (train + eval); default from the preset.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset directory to write (created; resumed if it holds this dataset).")
@click.option("--seed", type=int, default=None, help="World and row seed (default 0).")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--num-shards", type=int, default=1, show_default=True,
              help="Split the work across K independent runs (e.g. machines) ...")
@click.option("--shard-index", type=int, default=0, show_default=True,
              help="... and write the shards j with j %% K == I.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file of config overrides.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set signal.cross=0 --set events.click.median_length=40.")
@click.option("--force", is_flag=True, help="Replace a different dataset already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def generate(preset, rows, out, seed, workers, num_shards, shard_index, config_file, sets, force, quiet):
    """Write a synthetic CTR dataset: zstd Parquet shards for train and eval plus manifest.json."""
    from kunbench import overrides
    from kunbench.generators.config import build_config
    from kunbench.generators.ctr import run

    if rows is not None and rows < 1:
        raise KunbenchError(f"--rows must be >= 1, got {rows}")
    if seed is not None and seed < 0:
        raise KunbenchError(f"--seed must be >= 0, got {seed}")
    config = build_config(preset, str(config_file) if config_file else None,
                          overrides.parse_assignments(sets), rows=rows, seed=seed)
    result = run(config, out, workers=workers, num_shards=num_shards, shard_index=shard_index,
                 force=force, progress=not quiet)
    rate = result.rows_written / result.seconds if result.seconds > 0 else 0.0
    console.print(f"{out}: wrote {len(result.written)} shard(s), {result.rows_written:,} rows in "
                  f"{result.seconds:.1f}s ({rate:,.0f} rows/s); {len(result.skipped)} already complete",
                  highlight=False, soft_wrap=True)
    if result.manifest_written:
        tr = result.manifest["splits"]["train"]
        ev = result.manifest["splits"]["eval"]
        console.print(f"manifest written: train {tr['rows']:,} rows, eval {ev['rows']:,} rows, "
                      f"base CTR {_fmt(tr['base_ctr'])}, oracle NE train {_fmt(tr['oracle_ne'])} "
                      f"eval {_fmt(ev['oracle_ne'])}", highlight=False, soft_wrap=True)
    else:
        done = result.shards_total - len(result.missing)
        console.print(f"wrote shards {_names(result.selected)} ({done} of {result.shards_total} present); "
                      f"manifest written when all are present — rerun without --shard-index on the "
                      f"merged dir", highlight=False, soft_wrap=True)


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)})"


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


@click.command("inspect")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True,
              help="Check every shard's presence, size, sha256 and row count, and the data against the manifest "
                   "(ID ranges, labels, history timestamps, list alignment).")
@friendly_errors
def inspect_cmd(directory, verify):
    """Summarize a dataset: rows, columns by role, sequence lengths, base CTR, oracle NE, files."""
    from kunbench.data.manifest import load_manifest

    m = load_manifest(directory)
    d = m.data
    version = f" (output v{m.output_version})" if m.output_version is not None else ""
    console.print(f"[bold]{directory}[/]  schema v{d['schema_version']}  generator {d.get('generator')}{version}  "
                  f"seed {d.get('seed')}  fingerprint {d.get('fingerprint')}  "
                  f"preset {d.get('config', {}).get('preset')}", highlight=False, soft_wrap=True)

    t = Table(title="splits")
    for c in ("split", "rows", "files", "MiB", "base CTR", "mean p_true", "oracle NE", "request_ts"):
        t.add_column(c, justify="right" if c not in ("split", "request_ts") else "left")
    for name, s in m.splits.items():
        mib = sum(f.get("bytes") or 0 for f in s["files"]) / 2**20
        ts = s.get("request_ts") or {}
        t.add_row(name, f"{s.get('rows', 0):,}", str(len(s["files"])), f"{mib:.1f}", _fmt(s.get("base_ctr")),
                  _fmt(s.get("mean_p_true")), _fmt(s.get("oracle_ne")), f"{ts.get('min')} .. {ts.get('max')}")
    console.print(t)

    t = Table(title="columns by role")
    for c in ("role", "count", "cardinality", "examples"):
        t.add_column(c)
    by_role: dict[str, list] = {}
    for c in m.columns:
        by_role.setdefault(c.role, []).append(c)
    for role, cols in by_role.items():
        cards = [c.cardinality for c in cols if c.cardinality]
        card = f"{min(cards):,} .. {max(cards):,}" if cards else ""
        names = ", ".join(c.name for c in cols[:4]) + (", ..." if len(cols) > 4 else "")
        t.add_row(role, str(len(cols)), card, names)
    console.print(t)

    t = Table(title="sequence lengths per event type")
    for c in ("split", "event type", "mean", "min", "p50", "p99", "max"):
        t.add_column(c, justify="left" if c in ("split", "event type") else "right")
    for name, s in m.splits.items():
        for et, st in (s.get("lengths") or {}).items():
            if st:
                t.add_row(name, et, _fmt(st.get("mean"), 1),
                          *("n/a" if st.get(k) is None else f"{st[k]:g}" for k in ("min", "p50", "p99", "max")))
    console.print(t)

    world = d.get("world") or {}
    if world:
        scales = ", ".join(f"{k} {v:.3g}" for k, v in world.get("term_scale", {}).items())
        console.print(f"world: bias {world.get('bias', float('nan')):.4f}; term scales: {scales}",
                      highlight=False, soft_wrap=True)

    files = [(split, f) for split, s in m.splits.items() for f in s["files"]]
    if not verify:
        console.print(f"{len(files)} files (use --verify to check checksums)", highlight=False, soft_wrap=True)
        return
    from kunbench.data.contract import verify_contract
    from kunbench.data.manifest import verify_files

    problems = verify_files(m) + verify_contract(m)
    if problems:
        for p in problems:
            err_console.print(f"[bold red]{p}[/]", highlight=False, soft_wrap=True)
        err_console.print(f"[bold red]verify failed:[/] {len(problems)} problems in {len(files)} files and their "
                          f"manifest", highlight=False, soft_wrap=True)
        sys.exit(1)
    console.print(f"[green]verified[/] {len(files)} files: sizes, sha256 and row counts match the manifest, and "
                  f"the data keeps its contract (ID ranges, labels, history order, list alignment)",
                  highlight=False, soft_wrap=True)


@click.command("probe")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--pool-k", type=int, default=64, show_default=True,
              help="K of the pooled view: mean of the last K events per type (Wukong's history_k).")
@click.option("--merge-t", type=int, default=256, show_default=True,
              help="T of the merged view: newest T events of all streams merged by time (InterFormer's seq_max_len).")
@click.option("--max-rows", type=int, default=None, help="Read at most this many rows per split (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@friendly_errors
def probe_cmd(directory, pool_k, merge_t, max_rows, as_json):
    """Where the signal lives: the best gap closed each view of a row allows (exact logistic readout)."""
    import dataclasses
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kunbench.progress import progress

    from kunbench.data.manifest import load_manifest, require_intact
    from kunbench.generators.probe import probe

    m = load_manifest(directory)
    require_intact(m)  # a damaged shard gives one line here, not a traceback mid-probe
    if not {"train", "eval"} <= set(m.splits) or not m.split_rows("train") or not m.split_rows("eval"):
        raise KunbenchError(f"{directory}: the probe fits on train rows and scores eval rows; this dataset has "
                            + ", ".join(f"{k} {m.split_rows(k)}" for k in ("train", "eval") if k in m.splits))
    cap = max_rows if max_rows is not None else 1 << 62
    total = sum(min(m.split_rows(s), cap) for s in ("train", "eval") if s in m.splits)
    prog_cm = (Progress(disable=True) if as_json else
               progress(TextColumn("probe"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, unit="rows", transient=True))
    with prog_cm as prog:
        task = prog.add_task("rows", total=total)
        result = probe(directory, pool_k=pool_k, merge_t=merge_t, max_rows=cap,
                       progress=lambda n: prog.advance(task, n))
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
        return
    t = Table(title=f"signal probe: {result.train_rows:,} train rows fit, {result.eval_rows:,} eval rows scored; "
                    f"oracle expected NE {result.oracle_expected_ne:.5f}")
    for c in ("view", "features", "expected NE", "ceiling (exp. gap closed)"):
        t.add_column(c, justify="left" if c == "view" else "right")
    for v in result.views:
        t.add_row(v.view, str(v.features), f"{v.expected_ne:.5f}", f"{v.expected_gap_closed:.3f}")
    console.print(t)
    console.print(f"p_true recomputed from the observed columns: max |error| {result.max_abs_p_error:.2e}",
                  highlight=False, soft_wrap=True)
