"""`kunbench train` and `kunbench list`."""

from __future__ import annotations

import math
from pathlib import Path
from importlib.metadata import entry_points

import click
from rich.table import Table

from kunbench.cli_common import console, err_console, friendly_errors
from kunbench.errors import KunbenchError


def _fmt(value, spec: str = ".5f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def summary_table(doc: dict) -> Table:
    m = doc["metrics"]
    t = Table(title=f"kunbench train: {doc['backend']} ({doc['preset']}) on {doc['dataset']['path']}",
              show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    oracle_note = ""
    if m.get("oracle_ne") is not None and m.get("oracle_ne_manifest") is not None:
        oracle_note = f"  (manifest {m['oracle_ne_manifest']:.5f})"
    rows = [
        ("NE", _fmt(m.get("ne"))),
        ("oracle NE", _fmt(m.get("oracle_ne")) + oracle_note),
        ("gap closed", _fmt(m.get("gap_closed"), ".3f")),
        ("expected NE / oracle (labels = p_true)",
         f"{_fmt(m.get('expected_ne'))} / {_fmt(m.get('expected_oracle_ne'))}"),
        ("expected gap closed", _fmt(m.get("expected_gap_closed"), ".3f")),
        ("AUC", _fmt(m.get("auc"))),
        ("oracle AUC", _fmt(m.get("oracle_auc"))),
        ("log loss", _fmt(m.get("logloss"))),
        ("calibration (mean pred / base rate)", _fmt(m.get("calibration"), ".4f")),
        ("base rate", _fmt(m.get("base_rate"), ".4f")),
        ("params (embedding + dense)", f"{m['params']:,} ({m['embedding_params']:,} + {m['dense_params']:,})"),
        ("forward FLOPs / example", _fmt(m.get("flops_per_example"), ",.0f")),
        ("train examples/s", _fmt(m.get("train_examples_per_s"), ",.0f")),
        ("eval examples/s", _fmt(m.get("eval_examples_per_s"), ",.0f")),
        ("train steps / examples", f"{m['train']['steps']:,} / {m['train']['examples']:,}"),
        *([("compile (steps that compiled)", f"{m['train']['compile_s']:.1f} s ({m['train']['compile_steps']})")]
          if doc.get("train_config", {}).get("compile") else []),
        ("eval examples", f"{m['examples']:,}"),
        ("device / dtype / world", f"{doc['environment']['device']} / {doc['environment']['dtype']} / "
                                   f"{doc['environment']['world_size']}"),
        ("time (train + eval, total)", f"{doc['timing']['train_s']:.1f} s + {doc['timing']['eval_s']:.1f} s, "
                                       f"{doc['timing']['total_s']:.1f} s"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


@click.command("train")
@click.option("--backend", "-b", required=True, help="Backend name (see `kunbench list`).")
@click.option("--data", "-d", type=click.Path(file_okay=False), default=None,
              help="Dataset directory; default: the `small` preset, generated once into the cache.")
@click.option("--preset", "-p", default=None, help="Backend size preset (default: the backend's).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a backend config key; `train.KEY=VALUE` overrides the training loop.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default=None,
              help="bf16 = autocast on CUDA (default fp32).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after N batches (default: one pass).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Per-rank train batch size (default 256).")
@click.option("--lr", type=float, default=None, help="Dense learning rate, AdamW (default 1e-3).")
@click.option("--embedding-lr", type=float, default=None, help="Embedding learning rate, row-wise Adagrad (default 0.1).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed (default 0).")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Loader worker processes per rank.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op CPU threads (default: torch's choice).")
@click.option("--out", "out_dir", type=click.Path(), default=None, help="Result directory (default ./results).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the training step (compile time is reported apart from examples/s).")
@click.option("--no-verify", is_flag=True,
              help="Skip the check of every shard's size and sha256 before training (for huge datasets).")
@friendly_errors
def train_cmd(backend, data, preset, sets, device, dtype, steps, batch_size, lr, embedding_lr, seed, workers,
              threads, out_dir, no_progress, compile_, no_verify):
    """Train a backend for one pass over the train split and evaluate it on the eval split.

    Under torchrun (WORLD_SIZE > 1) every rank reads its own share of the data; rank 0 prints
    and writes the result JSON."""
    from kunbench import host_allocator, overrides
    from kunbench.backends.registry import get_backend
    from kunbench.train.distributed import resolve_device
    from kunbench.train.runner import make_train_config, run_training, split_sets

    host_allocator.configure()  # freed memory stays in the heap: CPU timings without page faults

    # `kunlun.d=64` (the form `kunbench run` takes) means `d=64` when the backend is kunlun
    parsed = {k.removeprefix(f"{backend}."): v for k, v in overrides.parse_assignments(sets).items()}
    spec = get_backend(backend)  # unknown backend -> one line, before any heavy work
    backend_sets, trainer_sets = split_sets(parsed)
    spec.make_config(preset, backend_sets)  # bad preset / key -> one line
    resolve_device(device)
    cfg = make_train_config(trainer_sets, steps=steps, batch_size=batch_size, lr=lr, embedding_lr=embedding_lr,
                            seed=seed, dtype=dtype, num_workers=workers, compile=True if compile_ else None,
                            verify_data=False if no_verify else None)
    if data is not None and not Path(data).is_dir():
        raise KunbenchError(f"--data {data}: no such dataset directory")
    from kunbench.results import preflight_out_dir

    preflight_out_dir(out_dir)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    run = run_training(backend, data, preset=preset, sets=backend_sets,
                       train_cfg=cfg, device=device, out_dir=out_dir, show_progress=not no_progress,
                       console=console, log=lambda msg: err_console.print(msg, highlight=False), spec=spec)
    if run.ctx.is_main:
        console.print(summary_table(run.document))
        console.print(f"result: {run.path}", highlight=False)


def _entry_point_names(group: str) -> list[tuple[str, str]]:
    return sorted((ep.name, ep.value) for ep in entry_points(group=group))


@click.command("list")
@friendly_errors
def list_cmd():
    """List backends, data generators and suites."""
    from kunbench.backends.registry import BUILTIN_MODULES, available_backends, get_backend

    table = Table(title="kunbench components")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("details")
    builtin = BUILTIN_MODULES
    for name in available_backends():
        try:
            spec = get_backend(name)
            details = f"{spec.description} (presets: {', '.join(spec.presets)}; default {spec.default_preset})"
        except Exception as exc:  # one broken backend must not hide the others
            details = f"[red]unavailable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}[/]"
        origin = "built-in" if name in builtin else "plugin"
        table.add_row("backend", name, f"{details} [{origin}]")
    for name, value in _entry_point_names("kunbench.generators"):
        table.add_row("generator", name, value)
    suites = _entry_point_names("kunbench.suites")
    for name, value in suites:
        table.add_row("suite", name, value)
    if not suites:
        table.add_row("suite", "-", "none installed yet")
    console.print(table)
