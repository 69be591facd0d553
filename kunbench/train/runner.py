"""The whole `kunbench train` path as one library call: build, train one pass, evaluate, record.

`--set` keys go to the backend config, except `train.KEY` which go to `TrainConfig`
(e.g. `kunbench train --backend wukong --set train.embedding_lr=0.1 --set l=3`: three Wukong layers).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kunbench import overrides
from kunbench.data.manifest import Manifest, load_manifest, manifest_fingerprint, require_intact
from kunbench.backends.common import kernels_of
from kunbench.errors import KunbenchError
from kunbench.train.config import TrainConfig
from kunbench.train.distributed import DistContext, init_distributed
from kunbench.train.evaluate import EvalResult, autocast_dtype, evaluate
from kunbench.train.loop import TrainStats, deterministic_cpu, train
from kunbench.train.optim import split_parameters
from kunbench.results import RESULT_SCHEMA_VERSION, write_result

TRAIN_PREFIX = "train."


@dataclass
class TrainRun:
    document: dict[str, Any]
    path: Path | None
    train: TrainStats
    eval: EvalResult
    model: torch.nn.Module
    ctx: DistContext


def split_sets(sets: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backend keys, TrainConfig keys) from one `--set` dictionary."""
    backend, trainer = {}, {}
    for k, v in (sets or {}).items():
        if k.startswith(TRAIN_PREFIX):
            trainer[k[len(TRAIN_PREFIX):]] = v
        else:
            backend[k] = v
    return backend, trainer


def make_train_config(sets: dict[str, Any] | None = None, base: TrainConfig | None = None,
                      **explicit: Any) -> TrainConfig:
    cfg = overrides.apply(base or TrainConfig(), sets or {})
    cfg = overrides.apply(cfg, {k: v for k, v in explicit.items() if v is not None})
    return cfg.validate()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_batches(root: str | Path, split: str, batch_size: int, ctx: DistContext, *,
                 include_p_true: bool = False, num_workers: int = 0, max_lengths: Any = None):
    """This rank's batches of `split`: the loader gives each rank its own row groups."""
    from kunbench.data.loader import ParquetBatches, make_dataloader

    ds = ParquetBatches(root, split, batch_size=batch_size, max_lengths=max_lengths,
                        include_p_true=include_p_true, rank=ctx.rank, world_size=ctx.world_size)
    return make_dataloader(ds, num_workers=num_workers, pin_memory=ctx.device.type == "cuda")


def _progress_factory(enabled: bool, console):
    """A context manager that yields (train_cb_factory, eval_cb_factory) drawing a rich bar."""
    import contextlib

    if not enabled:
        @contextlib.contextmanager
        def null():
            yield (lambda total: None), (lambda total: None)
        return null()

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from kunbench.progress import progress

    @contextlib.contextmanager
    def bars():
        prog = progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} ex/s"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)

        def train_cb(total: int | None):
            task = prog.add_task("train", total=total, loss="-", rate="-")

            def cb(step: int, examples: int, ema: float, rate: float) -> None:
                prog.update(task, completed=step, loss=f"{ema:.4f}", rate=f"{rate:,.0f}")
            return cb

        def eval_cb(total: int | None):
            task = prog.add_task("eval", total=total, loss="-", rate="-")
            state = {"n": 0, "t0": time.perf_counter()}

            def cb(n: int) -> None:
                state["n"] += n
                dt = time.perf_counter() - state["t0"]
                prog.update(task, completed=state["n"], rate=f"{state['n'] / max(dt, 1e-9):,.0f}")
            return cb

        with prog:
            yield train_cb, eval_cb
    return bars()


def run_training(backend: str, data: str | Path | None = None, *, preset: str | None = None,
                 sets: dict[str, Any] | None = None, train_cfg: TrainConfig | None = None,
                 device: str = "auto", out_dir: str | Path | None = None, show_progress: bool = False,
                 write: bool = True, console=None, log: Callable[[str], None] | None = None,
                 ctx: DistContext | None = None, spec=None, eval_max_batches: int | None = None,
                 keep_eval_rows: bool = False) -> TrainRun:
    """Build, train one pass, evaluate and (with `write`) record one result document.
    `keep_eval_rows` keeps every eval row's prediction in `TrainRun.eval.rows` for paired
    comparisons (the suites)."""
    from kunbench.backends.registry import get_backend

    t_total = time.perf_counter()
    backend_sets, trainer_sets = split_sets(sets)
    cfg = make_train_config(trainer_sets, base=train_cfg)
    ctx = ctx or init_distributed(device)
    try:
        if cfg.dtype == "bf16" and ctx.device.type != "cuda":
            raise KunbenchError("--dtype bf16 runs as autocast on CUDA; this run is on CPU (use --dtype fp32)")
        spec = spec or get_backend(backend)
        model_cfg = spec.make_config(preset, backend_sets)
        if (ctx.enabled and ctx.device.type == "cuda" and getattr(model_cfg, "sparse_embeddings", False)
                and "sparse_embeddings" not in backend_sets):
            # DDP cannot all-reduce sparse gradients over nccl: use dense table gradients there
            model_cfg = dataclasses.replace(model_cfg, sparse_embeddings=False)
            if log is not None and ctx.is_main:
                log("multi-GPU DDP: sparse_embeddings=false (nccl has no sparse all-reduce)")
        if data is None:
            from kunbench.cache import default_dataset

            if ctx.is_main:
                data = default_dataset(log=log)
            ctx.barrier()
            if not ctx.is_main:
                data = default_dataset()
        data = Path(data)
        manifest: Manifest = load_manifest(data)
        for split in ("train", "eval"):
            if split not in manifest.splits:
                raise KunbenchError(f"dataset {data} has no {split!r} split")
        if manifest.split_rows("eval") == 0 and log is not None and ctx.is_main:
            log(f"warning: {data} has no eval rows, so NE, AUC and gap closed below are n/a")
        if cfg.verify_data:  # a damaged shard must never train silently (sha256 is cheap next to a pass)
            require_intact(manifest, "skip this check with --no-verify (train) or --set train.verify_data=false")
        schema = manifest.schema
        notes = spec.notes(model_cfg, schema)
        for note in notes if log is not None and ctx.is_main else []:
            log(f"note: {note}")

        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        model = spec.build(model_cfg, schema).to(ctx.device)
        build_s = time.perf_counter() - t0
        groups = split_parameters(model)
        max_lengths = spec.max_lengths(model_cfg, schema)

        per_step = cfg.batch_size * ctx.world_size
        total_steps = math.ceil(manifest.split_rows("train") / per_step)
        if cfg.steps is not None:
            total_steps = min(total_steps, cfg.steps)
        with _progress_factory(show_progress and ctx.is_main, console) as (train_cb, eval_cb):
            batches = open_batches(data, "train", cfg.batch_size, ctx, num_workers=cfg.num_workers,
                                   max_lengths=max_lengths)
            stats = train(model, batches, cfg, ctx, progress=train_cb(total_steps), total_steps=total_steps)
            eval_batches = open_batches(data, "eval", cfg.eval_batch_size, ctx, include_p_true=True,
                                        num_workers=cfg.num_workers, max_lengths=max_lengths)
            with deterministic_cpu(cfg.deterministic, ctx.device):
                result = evaluate(model, eval_batches, ctx, dtype=cfg.dtype,
                                  flops_fn=lambda b: spec.flops_per_example(model_cfg, schema, b),
                                  max_batches=eval_max_batches, progress=eval_cb(manifest.split_rows("eval")),
                                  keep_rows=keep_eval_rows)

        manifest_oracle = manifest.splits["eval"].get("oracle_ne")
        metrics = {
            **result.to_dict(),
            "oracle_ne_manifest": manifest_oracle,
            "params": groups.embedding_count + groups.dense_count,
            "embedding_params": groups.embedding_count,
            "dense_params": groups.dense_count,
            "train_examples_per_s": stats.examples_per_s,
            "eval_examples_per_s": result.examples_per_s,
            "train": stats.to_dict(),
        }
        from kunbench.environment import environment_stamp

        env = environment_stamp()
        env.update({"device": str(ctx.device), "dtype": cfg.dtype, "world_size": ctx.world_size,
                    "torch_threads": torch.get_num_threads()})
        doc = {
            "schema_version": RESULT_SCHEMA_VERSION,
            "kind": "train",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "backend": spec.name,
            "preset": preset or spec.default_preset,
            "config": dataclasses.asdict(model_cfg),
            "train_config": dataclasses.asdict(cfg),
            "dataset": {
                "path": str(data.resolve()),
                "manifest_fingerprint": manifest_fingerprint(data),
                "generator_fingerprint": manifest.data.get("fingerprint"),
                "preset": (manifest.data.get("config") or {}).get("preset"),
                "train_rows": manifest.split_rows("train"),
                "eval_rows": manifest.split_rows("eval"),
                "eval_oracle_ne": manifest_oracle,
                "label_source": manifest.label_source,
            },
            "metrics": metrics,
            "kernels": kernels_of(model, ctx.device, autocast_dtype(ctx.device, cfg.dtype)),
            "notes": notes,
            "environment": env,
            "timing": {"build_s": build_s, "train_s": stats.seconds, "eval_s": result.seconds,
                       "total_s": time.perf_counter() - t_total},
        }
        path = write_result(doc, out_dir) if (write and ctx.is_main) else None
        ctx.barrier()
        return TrainRun(doc, path, stats, result, model, ctx)
    finally:
        ctx.shutdown()
