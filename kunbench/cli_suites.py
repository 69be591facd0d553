"""`kunbench run`, `kunbench compare` and `kunbench report`."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from kunbench.cli_common import console, err_console, friendly_errors
from kunbench.errors import KunbenchError


def _log(msg: str) -> None:
    err_console.print(msg, highlight=False, soft_wrap=True)


# ---- compare -------------------------------------------------------------------------------------
@click.command("compare")
@click.argument("base", nargs=1, type=click.Path())
@click.argument("new", nargs=1, type=click.Path())
@click.option("--fail", "fail_rules", multiple=True, metavar="METRIC:THRESHOLD",
              help="Regression threshold, e.g. qps:-5% or ne:+0.1% (repeatable). Exit 1 when a matching "
                   "metric moves past it in the bad direction and outside the measured noise.")
@click.option("--noise-k", type=click.FloatRange(min=0, max=1e6), default=2.0, show_default=True,
              help="A change counts when |delta| > k * sqrt(spread_base^2 + spread_new^2).")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list metrics present in only one of the runs.")
@friendly_errors
def compare_cmd(base, new, fail_rules, noise_k, fmt, show_all):
    """Delta table between two result files (or directories of them); exit 1 on a regression.

    Measurements match by suite, backend, variant and metric name."""
    from kunbench.results import load_many
    from kunbench.results.compare import compare, parse_rule, table_rows

    if not math.isfinite(noise_k):
        raise KunbenchError(f"--noise-k must be a finite number >= 0, got {noise_k}")
    rules = [parse_rule(r) for r in fail_rules]
    skipped: list[str] = []
    cmp = compare(load_many([base], skipped), load_many([new], skipped), rules, k=noise_k)
    for msg in skipped:
        err_console.print(f"[yellow]warning:[/] skipped {msg}", highlight=False, soft_wrap=True)
    if cmp.unmatched_rules:  # a gate that checks nothing must not pass silently (a typo in CI)
        names = sorted({r.key[3] for r in cmp.rows if r.status not in ("new", "missing")})
        shown = ", ".join(names[:25]) + (f", ... ({len(names)} in all)" if len(names) > 25 else "")
        raise KunbenchError(f"--fail {cmp.unmatched_rules[0].text}: no metric present in both runs matches "
                            f"{cmp.unmatched_rules[0].pattern!r} (metrics: {shown or 'none'})")
    for w in cmp.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    headers, rows = table_rows(cmp)
    keep = [i for i, r in enumerate(cmp.rows) if show_all or r.status not in ("new", "missing")]
    rows = [rows[i] for i in keep]
    if not rows:
        raise KunbenchError(f"{base} and {new} have no measurement in common (match: suite/backend/variant/metric)")
    if fmt == "table":
        from rich.table import Table

        t = Table(title=f"kunbench compare: {base} -> {new}", title_justify="left")
        for i, h in enumerate(headers):
            t.add_column(h, justify="right" if 4 <= i <= 8 else "left", overflow="fold")
        styles = {"FAIL": "bold red", "worse": "red", "better": "green"}
        for i, r in zip(keep, rows):
            t.add_row(*r, style=styles.get(cmp.rows[i].status))
        from kunbench.results.report import wide_console

        wide_console(console).print(t)
    else:
        from tabulate import tabulate

        if fmt == "md":
            click.echo(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        else:
            import csv

            w = csv.writer(sys.stdout, lineterminator="\n")
            w.writerow(headers)
            w.writerows(rows)
    if cmp.failures:
        for r in cmp.failures:
            pct = r.delta_pct
            err_console.print(f"[bold red]regression:[/] {'/'.join(r.key)} {r.base:.6g} -> {r.new:.6g}"
                              + (f" ({pct:+.2f}%)" if pct is not None else "") + f" past {r.rule.text}"
                              + (f", outside noise ±{r.noise:.3g}" if r.noise is not None else ", no noise estimate"),
                              highlight=False, soft_wrap=True)
        sys.exit(1)
    if rules:
        err_console.print(f"no regression past {', '.join(r.text for r in rules)} "
                          f"(k={noise_k:g} noise bands)", highlight=False)


# ---- report --------------------------------------------------------------------------------------
@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True,
              help="table: rich tables; md: Markdown (tabulate); csv: one line per measurement.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Write PNG plots (scaling curve, ablation bars, QPS vs batch) into this directory.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write md/csv here.")
@friendly_errors
def report_cmd(results, fmt, plot_dir, output):
    """Tables (and plots) from stored result files or directories of them."""
    from kunbench.results import load_many
    from kunbench.results.report import render

    if output and fmt == "table":
        raise KunbenchError("--output writes md or csv; add --format md or --format csv")
    skipped: list[str] = []
    docs = load_many(results, skipped)
    for msg in skipped:
        _log(f"warning: skipped {msg}")
    text = render(docs, fmt, console=console)
    if text is not None:
        if output:
            out = Path(output)
            if not out.parent.is_dir():
                raise KunbenchError(f"--output {output}: directory {out.parent} does not exist")
            try:
                out.write_text(text)
            except OSError as exc:
                raise KunbenchError(f"--output {output}: cannot write it ({exc.strerror or exc})") from None
            _log(f"wrote {output}")
        else:
            click.echo(text, nl=False)
    if plot_dir:
        from kunbench.results.plots import plot_documents

        paths = plot_documents(docs, plot_dir)
        if not paths:
            _log(f"no plottable results (scaling, ablation or qps suites) among {len(docs)} file(s)")
        for p in paths:
            _log(f"plot: {p}")


# ---- run -----------------------------------------------------------------------------------------
RUN_KEYS = ("suite", "suites", "backend", "backends", "preset", "data", "device", "dtype", "repeat", "out", "full",
            "threads")


def _config_file(path: str | None) -> tuple[dict, dict]:
    """(run options, flattened --set items) from a TOML file: top-level run keys (suite, backends,
    preset, data, device, dtype, repeat, out, full) and tables of --set keys ([train], [qps], [kunlun]...)."""
    from kunbench import overrides

    if not path:
        return {}, {}
    data = overrides.load_toml(path)
    opts = {k: data.pop(k) for k in list(data) if k in RUN_KEYS}
    return opts, overrides.flatten(data)


def _names(value) -> list[str] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(x).strip() for x in items if str(x).strip()]
    return names or None


@click.command("run")
@click.option("--suite", "-s", "suite", default=None, metavar="NAME[,NAME]",
              help="Suites to run: ne, qps, mfu, scaling, ablation, claims, kernels (or a plugin's).")
@click.option("--backend", "-b", "backends", default=None, metavar="A[,B]",
              help="Backends to measure (default: every registered one the suite uses).")
@click.option("--preset", "-p", default=None, help="Backend size preset (default: tiny, or the backend's with --full).")
@click.option("--data", "-d", type=click.Path(file_okay=False), default=None,
              help="Dataset directory (default: generated once into the cache: a 72k-row tiny dataset, "
                   "168k rows for scaling, or the small preset with --full).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the best present).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default=None, help="bf16 = autocast on CUDA.")
@click.option("--repeat", "-r", type=click.IntRange(min=1), default=None,
              help="Repeats: seeds for ne/ablation noise, measured windows for qps/mfu.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file: run options and [section] tables of --set keys.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="train.KEY, data.KEY, SUITE.KEY, BACKEND.KEY, or a key for every backend's config.")
@click.option("--out", "out_dir", type=click.Path(), default=None, help="Result directory (default ./results).")
@click.option("--full", is_flag=True, default=None,
              help="The bigger run: small dataset preset, backends' default presets, full training pass.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice, usually one per core).")
@click.option("--no-write", is_flag=True, help="Print the tables but write no result file.")
@click.option("--progress", is_flag=True, help="Show training progress bars.")
@click.option("--compile", "compile_", is_flag=True, default=None,
              help="torch.compile the trained and measured steps (compile time is reported apart).")
@friendly_errors
def run_cmd(suite, backends, preset, data, device, dtype, repeat, config_file, sets, out_dir, full, threads,
            no_write, progress, compile_):
    """Run benchmark suites; print their tables and write one result JSON per suite.

    With no options, `kunbench run --suite ablation` runs the reduced default (a small dataset
    generated once and cached, tiny model presets, the best device present); add --full for the
    bigger configuration. Under torchrun, suites that train use DDP and rank 0 reports."""
    import time as _time

    from kunbench import host_allocator, overrides
    from kunbench.results.report import print_tables
    from kunbench.suites.context import RunOptions
    from kunbench.suites.registry import parse_suite_list
    from kunbench.suites.runner import check_options, run_suites
    from kunbench.train.distributed import resolve_device

    host_allocator.configure()  # freed memory stays in the heap: CPU timings without page faults

    import os

    t0 = _time.perf_counter()
    cpu0 = sum(os.times()[:4])
    file_opts, file_sets = _config_file(config_file)
    all_sets = {**file_sets, **overrides.parse_assignments(sets)}
    suite = suite or file_opts.get("suite") or file_opts.get("suites")
    if isinstance(suite, (list, tuple)):
        suite = ",".join(map(str, suite))
    opts = RunOptions(
        suites=parse_suite_list(suite),
        backends=_names(backends) or _names(file_opts.get("backends") or file_opts.get("backend")),
        preset=preset or file_opts.get("preset"),
        data=Path(data) if data else (Path(file_opts["data"]) if file_opts.get("data") else None),
        device=device or file_opts.get("device") or "auto",
        dtype=dtype or file_opts.get("dtype"),
        repeat=repeat if repeat is not None else file_opts.get("repeat"),
        sets=all_sets,
        out=Path(out_dir) if out_dir else (Path(file_opts["out"]) if file_opts.get("out") else None),
        full=bool(full if full is not None else file_opts.get("full", False)),
        write=not no_write,
        show_progress=progress,
        compile=bool(compile_ if compile_ is not None else file_opts.get("compile", False)),
    )
    check_options(opts)
    if opts.write:
        from kunbench.results import preflight_out_dir

        preflight_out_dir(opts.out)
    threads = threads or file_opts.get("threads")
    from kunbench.train.distributed import env_world

    main_rank = env_world()[1] == 0
    busy = _busy_warning(quiet=not main_rank)
    import torch

    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    elif busy and not opts.full and resolve_device(opts.device).type == "cpu" and torch.get_num_threads() > 1:
        # oversubscribed cores make multi-threaded torch ops wait on descheduled threads: on a busy
        # host the reduced run goes several times faster on one thread
        torch.set_num_threads(1)
        msg = (f"host busy: this reduced CPU run uses 1 torch thread instead of {os.cpu_count()} "
               f"(--threads N to choose)")
        if main_rank:
            _log(msg)
        opts.notes.append(msg)

    def show(run) -> None:
        print_tables(console, [run.document])
        where = f"result: {run.path}" if run.path else "result not written (--no-write)"
        console.print(f"{run.name}: {run.seconds:.1f} s; {where}", highlight=False, soft_wrap=True)

    try:
        runs = run_suites(opts, log=_log, console=err_console, on_result=show)
        click.get_current_context().meta["kunbench.runs"] = runs  # for commands that invoke this one
    finally:
        torch.set_num_threads(threads_before)  # callers in the same process (tests) keep their setting
    if main_rank:
        _log(f"total wall time {_time.perf_counter() - t0:.1f} s (CPU time {sum(os.times()[:4]) - cpu0:.1f} s)")


@click.command("selfcheck")
@click.option("--backend", "-b", "backends", default=None, metavar="A[,B]", help="Backends (default: all).")
@click.option("--preset", "-p", default=None, help="Backend size preset (default: each backend's own).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the best present).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Backend runs: bf16 autocast (the default on CUDA) or fp32 (the default on a CPU).")
@click.option("--repeat", "-r", type=click.IntRange(min=1), default=None,
              help="Rounds of measured windows per backend (default 3).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="selfcheck.batch_size, selfcheck.window_s, selfcheck.baseline, selfcheck.compile, "
                   "selfcheck.kernels, selfcheck.budget_s.")
@click.option("--out", "out_dir", type=click.Path(), default=None, help="Result directory (default ./results).")
@click.option("--no-write", is_flag=True, help="Print the tables but write no result file.")
@click.pass_context
@friendly_errors
def selfcheck_cmd(click_ctx, backends, preset, device, threads, dtype, repeat, sets, out_dir, no_write):
    """Check this machine in one run (<= 10 minutes on 2 CPU cores, <= 8 on one H100/H200): GDPA
    kernels against the reference, a kernel speed grid, QPS / MFU / ops per step of every backend and
    a torch.compile run. Writes one result, lists what it could not check, and exits 1 when a kernel
    check failed."""
    click_ctx.invoke(run_cmd, suite="selfcheck", backends=backends, preset=preset, device=device, threads=threads,
                     dtype=dtype, repeat=repeat, sets=sets, out_dir=out_dir, no_write=no_write)
    for run in click_ctx.meta.get("kunbench.runs", []):
        if run.document.get("extra", {}).get("failed"):
            raise SystemExit(1)


def _busy_warning(quiet: bool = False) -> bool:
    """Say so when other processes already load the CPU: timings will be slower and noisier."""
    import os

    from kunbench.telemetry import load_average

    load = load_average()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if load is not None and load >= cores:
        if not quiet:
            _log(f"warning: the host is busy (1-minute load {load:.1f} on {cores} cores): timings will be slower "
                 f"and noisier than on an idle machine")
        return True
    return False
