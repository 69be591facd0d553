"""`kunbench import` and `export`: bring your own interaction log in, or take a dataset out as one."""

from __future__ import annotations

from pathlib import Path

import click

from kunbench.cli_common import console, friendly_errors


@click.command("import")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset directory to write (created; resumed if a killed import of this spec left it).")
@click.option("--force", is_flag=True, help="Replace a different dataset already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def import_cmd(spec_file, out, force, quiet):
    """Turn an interaction log (Parquet or CSV, one row per interaction) into a kunbench dataset,
    as SPEC_FILE (TOML) describes: request rows with their users' earlier interactions as histories."""
    from kunbench.importer.run import run_import
    from kunbench.importer.spec import load_spec

    spec = load_spec(spec_file)
    result = run_import(spec, out, force=force, progress=not quiet, console=console)
    m = result.manifest
    tr, ev = m["splits"]["train"], m["splits"]["eval"]
    if result.skipped:
        console.print(f"{out}: already holds this import (nothing to do)", highlight=False, soft_wrap=True)
    cards = {c["name"]: c.get("cardinality") for c in m["columns"]}
    console.print(f"{out}: train {tr['rows']:,} rows, eval {ev['rows']:,} rows (from ts {m['eval_from_ts']}), "
                  f"base CTR train {tr['base_ctr']:.4f}; {cards['user_id']:,} users, {cards['item_id']:,} items, "
                  f"{cards['item_category']:,} categories; event types {', '.join(m['event_types'])}"
                  + (f"; {result.seconds:.1f} s" if not result.skipped else ""), highlight=False, soft_wrap=True)
    empty = [e for e in m["event_types"]
             if not any((m["splits"][split]["lengths"].get(e) or {}).get("max") for split in ("train", "eval"))]
    if empty:
        console.print(f"[yellow]warning:[/] no history holds an event of type {', '.join(empty)}: check "
                      f"\\[events] in {spec_file}", highlight=False, soft_wrap=True)
    if len(m["event_types"]) > 1 and not set(m["event_types"]) <= {"impression", "click", "conversion"}:
        console.print(f"Kunlun's per-stream settings for these event types: --set kunlun.stream_importance="
                      f"{','.join(m['event_types'])}", highlight=False, soft_wrap=True)


@click.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for interactions.parquet, items.parquet and import.toml (must be empty).")
@friendly_errors
def export_cmd(directory, out):
    """Write a dataset back as a flat interaction log plus an item table, and the import spec that
    reads it again."""
    from kunbench.importer.export import export_dataset

    counts = export_dataset(directory, out)
    console.print(f"{out}: {counts['requests']:,} requests and {counts['events']:,} history events in "
                  f"interactions.parquet, {counts['items']:,} items in items.parquet; "
                  f"kunbench import {out / 'import.toml'} --out DIR reads it back", highlight=False, soft_wrap=True)
