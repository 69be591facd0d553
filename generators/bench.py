"""Generator throughput against an I/O ceiling, peak memory vs rows, and worker scaling.

    python -m kunbench.generators.bench --preset standard --rows 2000 [--rss] [--scaling]

* generator: `kunbench.generators.ctr.run` with 1 worker; rows/s end to end and for the shard
  phase alone (end to end also pays the world build and the calibration sample, once per run).
* ceiling: the same columns with the same list lengths, values drawn uniformly with numpy, written
  with the same ParquetWriter settings into the same shards and row groups.
* --rss: peak RSS of a `kunbench generate` subprocess at `rows` and 10 x `rows`.
* --scaling: shard-phase rows/s with 1 and 2 workers (`--scaling-rows`, default 10 x rows).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kunbench.generators.config import GeneratorConfig, build_config
from kunbench.generators.ctr import run
from kunbench.generators.schema import arrow_schema
from kunbench.generators.writer import RowGroupWriter, plan_shards


def _list_lengths(dataset: Path, columns: list[dict]) -> dict[str, list[np.ndarray]]:
    """Per list column (one per event type + multi-hot fields), the row lengths per row group."""
    names = [c["name"] for c in columns if c["dtype"] == "list<int64>" and c.get("part") in (None, "ts")]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    files = sorted((dataset / "train").glob("part-*.parquet")) + sorted((dataset / "eval").glob("part-*.parquet"))
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=names)
            for n in names:
                off = t.column(n).combine_chunks().offsets.to_numpy()
                out[n].append(np.diff(off).astype(np.int32))
    return out


def ceiling(cfg: GeneratorConfig, columns: list[dict], lengths: dict[str, list[np.ndarray]],
            out: Path) -> float:
    """Seconds to draw uniform values for every column and write them like the generator does."""
    schema = arrow_schema(columns)
    rng = np.random.default_rng(12345)
    span = int(cfg.history_span_days * 86400)
    g = 0  # running row-group index (same order as _list_lengths)
    t0 = time.perf_counter()
    for spec in plan_shards(cfg):
        path = out / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = RowGroupWriter(path, schema)  # the generator's writer, background encoding included
        try:
            for s in range(spec.start, spec.start + spec.rows, cfg.row_group_rows):
                n = min(cfg.row_group_rows, spec.start + spec.rows - s)
                arrays: list[pa.Array] = []
                offsets: dict[str, pa.Array] = {}
                for c in columns:
                    dt = c["dtype"]
                    if dt == "int64":
                        hi = c.get("cardinality") or (1 << 31)
                        arrays.append(pa.array(rng.integers(0, hi, n)))
                    elif dt == "int8":
                        arrays.append(pa.array(rng.integers(0, 2, n, dtype=np.int8)))
                    elif dt == "float64":
                        arrays.append(pa.array(rng.random(n)))
                    elif dt == "float32":
                        arrays.append(pa.array(rng.random(n, dtype=np.float32)))
                    else:
                        key = f"seq_{c['event_type']}_ts" if c["role"] == "sequence" else c["name"]
                        if key not in offsets:
                            off = np.zeros(n + 1, dtype=np.int32)
                            np.cumsum(lengths[key][g], out=off[1:])
                            offsets[key] = pa.array(off)
                        total = offsets[key][-1].as_py()
                        hi = c.get("cardinality") or span
                        arrays.append(pa.ListArray.from_arrays(offsets[key], pa.array(rng.integers(0, hi, total))))
                writer.write(pa.Table.from_arrays(arrays, schema=schema))
                g += 1
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return time.perf_counter() - t0


def throughput(preset: str, rows: int, sets: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = build_config(preset, sets=sets, rows=rows)
    tmp = Path(tempfile.mkdtemp(prefix="kunbench-bench-"))
    try:
        c0 = time.process_time()
        res = run(cfg, tmp / "gen", workers=1, progress=False)
        gen_cpu = time.process_time() - c0
        columns = res.manifest["columns"]
        lengths = _list_lengths(tmp / "gen", columns)
        c0 = time.process_time()
        ceil_s = ceiling(cfg, columns, lengths, tmp / "ceiling")
        ceil_cpu = time.process_time() - c0
        gen_bytes = sum(f["bytes"] for s in res.manifest["splits"].values() for f in s["files"])
        ceil_bytes = sum(p.stat().st_size for p in (tmp / "ceiling").rglob("*.parquet"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "preset": preset, "rows": rows,
        "generator_rows_per_s": rows / res.seconds,
        "generator_shard_rows_per_s": rows / res.shard_seconds,
        "setup_seconds": res.setup_seconds,
        "ceiling_rows_per_s": rows / ceil_s,
        "generator_mib": gen_bytes / 2**20, "ceiling_mib": ceil_bytes / 2**20,
    }
    # CPU seconds: robust to other processes competing for the cores
    out["generator_cpu_rows_per_s"] = rows / gen_cpu
    out["generator_cpu_setup_s"] = res.setup_cpu_seconds
    out["generator_shard_cpu_rows_per_s"] = rows / (gen_cpu - res.setup_cpu_seconds)
    out["ceiling_cpu_rows_per_s"] = rows / ceil_cpu
    out["cpu_ratio_end_to_end"] = out["generator_cpu_rows_per_s"] / out["ceiling_cpu_rows_per_s"]
    out["cpu_ratio_shard_phase"] = out["generator_shard_cpu_rows_per_s"] / out["ceiling_cpu_rows_per_s"]
    out["ratio_end_to_end"] = out["generator_rows_per_s"] / out["ceiling_rows_per_s"]
    out["ratio_shard_phase"] = out["generator_shard_rows_per_s"] / out["ceiling_rows_per_s"]
    return out


_RSS_SNIPPET = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def peak_rss_mib(preset: str, rows: int, workers: int = 1) -> float:
    """Peak RSS (MiB) of a `kunbench generate` subprocess writing `rows` rows."""
    tmp = Path(tempfile.mkdtemp(prefix="kunbench-rss-"))
    try:
        # the `kunbench generate` click command itself, run standalone
        cmd = [sys.executable, "-c", _RSS_SNIPPET, sys.executable, "-c",
               "from kunbench.cli_data import generate; generate()", "--preset", preset, "--rows", str(rows), "--out", str(tmp / "d"), "--quiet",
               "--workers", str(workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"kunbench generate failed: {proc.stderr.strip()[-2000:]}")
        return int(proc.stdout.strip().splitlines()[-1]) / 1024.0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def scaling(preset: str, rows: int) -> dict[str, float]:
    """Shard-phase and end-to-end rows/s with 1 and 2 workers (wall clock), plus a CPU-time view
    that other processes on the machine cannot distort: `cpu_speedup` = 1-worker CPU / max(parent
    CPU, child CPU), how evenly two workers split the work. It is a wall-clock speedup only when
    each process runs on one core; each one also encodes on a background thread
    (`writer.RowGroupWriter`), so with spare cores the 1-worker run already overlaps some work."""
    cfg = build_config(preset, rows=rows)
    out: dict[str, float] = {}
    for workers in (1, 2):
        tmp = Path(tempfile.mkdtemp(prefix="kunbench-scale-"))
        try:
            c0, k0 = time.process_time(), _children_cpu()
            res = run(cfg, tmp / "d", workers=workers, progress=False)
            parent, children = time.process_time() - c0, _children_cpu() - k0
            out[f"workers_{workers}_rows_per_s"] = rows / res.shard_seconds
            out[f"workers_{workers}_end_to_end_rows_per_s"] = rows / res.seconds
            out[f"workers_{workers}_parent_cpu_s"] = parent
            out[f"workers_{workers}_children_cpu_s"] = children
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["speedup"] = out["workers_2_rows_per_s"] / out["workers_1_rows_per_s"]
    out["speedup_end_to_end"] = out["workers_2_end_to_end_rows_per_s"] / out["workers_1_end_to_end_rows_per_s"]
    one = out["workers_1_parent_cpu_s"]
    out["cpu_speedup"] = one / max(out["workers_2_parent_cpu_s"], out["workers_2_children_cpu_s"])
    out["load_average_1m"] = __import__("os").getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kunbench.generators.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--rss", action="store_true", help="peak RSS at rows and 10 x rows")
    ap.add_argument("--scaling", action="store_true", help="1 vs 2 workers")
    ap.add_argument("--scaling-rows", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    report: dict[str, Any] = {"throughput": throughput(args.preset, args.rows)}
    if args.rss:
        report["rss_mib"] = {str(r): peak_rss_mib(args.preset, r) for r in (args.rows, 10 * args.rows)}
    if args.scaling:
        report["scaling"] = scaling(args.preset, args.scaling_rows or 10 * args.rows)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    t = report["throughput"]
    print(f"preset {t['preset']}, {t['rows']} rows, 1 worker")
    print(f"  generator  {t['generator_rows_per_s']:10,.0f} rows/s end to end "
          f"(setup {t['setup_seconds']:.2f}s: world + calibration), "
          f"{t['generator_shard_rows_per_s']:,.0f} rows/s shard phase, {t['generator_mib']:.1f} MiB")
    print(f"  ceiling    {t['ceiling_rows_per_s']:10,.0f} rows/s (uniform numpy draws + same Parquet "
          f"writes), {t['ceiling_mib']:.1f} MiB")
    print(f"  ratio      {t['ratio_end_to_end']:.2f} end to end, {t['ratio_shard_phase']:.2f} shard phase "
          f"(goal >= 0.5)")
    print(f"  CPU time   generator {t['generator_cpu_rows_per_s']:,.0f} rows/s end to end, "
          f"{t['generator_shard_cpu_rows_per_s']:,.0f} shard phase (setup {t['generator_cpu_setup_s']:.2f} s); "
          f"ceiling {t['ceiling_cpu_rows_per_s']:,.0f} rows/s; ratio {t['cpu_ratio_end_to_end']:.2f} end to end, "
          f"{t['cpu_ratio_shard_phase']:.2f} shard phase")
    if "rss_mib" in report:
        print("  peak RSS   " + ", ".join(f"{r} rows: {v:.0f} MiB" for r, v in report["rss_mib"].items()))
    if "scaling" in report:
        s = report["scaling"]
        print(f"  workers    1: {s['workers_1_rows_per_s']:,.0f} rows/s, 2: {s['workers_2_rows_per_s']:,.0f} "
              f"rows/s (shard phase) -> {s['speedup']:.2f}x; end to end {s['speedup_end_to_end']:.2f}x "
              f"(wall clock, load average {s['load_average_1m']:.1f}); CPU work split {s['cpu_speedup']:.2f}x "
              f"(1 worker {s['workers_1_parent_cpu_s']:.1f} CPU s; 2 workers: parent {s['workers_2_parent_cpu_s']:.1f}, "
              f"child {s['workers_2_children_cpu_s']:.1f} CPU s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
