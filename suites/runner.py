"""Run suites as one library call: a shared distributed context, one result document per suite
(environment stamp, telemetry, measurements), written under --out (default ./results)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch

from kunbench.errors import KunbenchError
from kunbench.results import make_document, write_result
from kunbench.suites.context import RunOptions, SuiteContext
from kunbench.suites.registry import get_suite


@dataclasses.dataclass
class SuiteRun:
    name: str
    document: dict[str, Any]
    path: Path | None
    seconds: float


def _jsonable_config(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def run_suites(opts: RunOptions, *, log: Callable[[str], None] = lambda m: None, console=None,
               on_result: Callable[[SuiteRun], None] | None = None) -> list[SuiteRun]:
    from kunbench.environment import environment_stamp
    from kunbench.train.distributed import init_distributed

    specs = [get_suite(n) for n in opts.suites]  # unknown suite -> one line, before any work
    dist = init_distributed(opts.device)
    runs: list[SuiteRun] = []
    try:
        if dist.enabled:
            not_training = [s.name for s in specs if not s.data_parallel]
            if not_training and dist.is_main:
                log(f"note: under torchrun every rank runs {', '.join(not_training)} on its own device; "
                    f"rank 0 reports (examples/s are summed over ranks where stated)")
        for spec in specs:
            ctx = SuiteContext(opts=opts, suite=spec.name, log=log if dist.is_main else (lambda m: None),
                               console=console, dist=dist, cuda_dtype=spec.cuda_dtype)
            t0 = time.perf_counter()
            out = spec.run(ctx)
            seconds = time.perf_counter() - t0
            env = environment_stamp()
            env.update({"device": str(dist.device), "dtype": ctx.dtype, "world_size": dist.world_size,
                        "torch_threads": torch.get_num_threads()})
            config = {"suite": spec.name, "options": {
                "backends": opts.backends, "preset": opts.preset, "data": str(opts.data) if opts.data else None,
                "device": opts.device, "dtype": opts.dtype, "repeat": opts.repeat, "sets": opts.sets,
                "full": opts.full}, **{k: _jsonable_config(v) for k, v in out.config.items()}}
            doc = make_document(spec.name, out.measurements, backends=out.backends, config=config,
                                dataset=out.dataset, environment=env,
                                timing={"total_s": seconds, "windows": len(ctx.windows)},
                                telemetry=ctx.telemetry_summary(), tables=out.tables,
                                notes=out.notes + ctx.notes + list(opts.notes), extra=out.extra)
            path = write_result(doc, opts.out) if (opts.write and dist.is_main) else None
            dist.barrier()
            run = SuiteRun(spec.name, doc, path, seconds)
            runs.append(run)
            if on_result is not None and dist.is_main:
                on_result(run)
        return runs
    finally:
        dist.shutdown()


def check_options(opts: RunOptions) -> None:
    """Cheap validation before any heavy work: backends, presets, --set keys, device, dtype."""
    from kunbench.backends.registry import get_backend
    from kunbench.suites.context import route_sets
    from kunbench.train.distributed import resolve_device
    from kunbench.train.runner import make_train_config

    resolve_device(opts.device)
    routed = route_sets(opts.sets)
    if opts.dtype == "bf16" and resolve_device(opts.device).type != "cuda":
        raise KunbenchError("--dtype bf16 runs as autocast on CUDA; this run is on CPU (use --dtype fp32)")
    make_train_config(routed.get("train", {}))
    for route, given in routed.items():
        if not route.startswith("suite:"):
            continue
        name = route.removeprefix("suite:")
        allowed = get_suite(name).options
        bad = [k for k in given if allowed is not None and k not in allowed]
        if bad:
            raise KunbenchError(f"unknown option {name}.{bad[0]} (options of {name}: "
                                f"{', '.join(allowed) or 'none'})")
    for b in opts.backends or []:
        spec = get_backend(b)
        if opts.preset and opts.preset not in spec.presets:
            raise KunbenchError(f"backend {b!r} has no preset {opts.preset!r} (choose from {', '.join(spec.presets)})")
        spec.make_config(opts.preset, {**routed.get("all_backends", {}), **routed.get(f"backend:{b}", {})})
    if opts.data is not None and not (Path(opts.data) / "manifest.json").is_file():
        raise KunbenchError(f"--data {opts.data}: no dataset here (no manifest.json)")
    if opts.repeat is not None and opts.repeat < 1:
        raise KunbenchError(f"--repeat must be >= 1, got {opts.repeat}")
