"""Entry point of the synthetic CTR generator: plan shards, run them (in process or on a pool of
spawned workers), show progress, and write the manifest once every shard is present.

    generate(config, out_dir, workers=1, num_shards=1, shard_index=0, force=False, progress=True)
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError
from kunbench.generators.config import GeneratorConfig, config_from_dict
from kunbench.generators.signal import (
    CALIBRATION_ROWS,
    Calibration,
    calibrate,
    calibration_chunk_terms,
    calibration_starts,
)
from kunbench.generators.world import World, build_world
from kunbench.generators.writer import (
    ShardSpec,
    build_manifest,
    cached_calibration,
    finished_sidecar,
    plan_shards,
    directory_lock, prepare_dir,
    remove_stray_temps,
    store_calibration,
    write_manifest,
    write_shard,
)


@dataclass
class GenerateResult:
    path: Path
    shards_total: int
    selected: list[str] = field(default_factory=list)  # shards this run was responsible for
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete and verified
    missing: list[str] = field(default_factory=list)  # other runs' shards not present yet
    manifest_written: bool = False
    seconds: float = 0.0  # whole run
    setup_seconds: float = 0.0  # world + calibration (once per run, independent of rows)
    setup_cpu_seconds: float = 0.0  # the same in this process's CPU time
    shard_seconds: float = 0.0  # generating and writing this run's shards
    rows_written: int = 0
    manifest: dict[str, Any] | None = None


# bytes a row takes on disk, measured on the small (2,374 B/row) and standard (7,435 B/row) presets:
# about 6 per event of every history and 6 per context field after Parquet's compression
BYTES_PER_EVENT = 6.0
BYTES_PER_FIELD = 6.0


def estimated_bytes(config: GeneratorConfig, rows: int) -> float:
    """Disk bytes `rows` rows of this config will take (within a few tens of percent)."""
    events = sum(min(ev.median_length * math.exp(ev.length_sigma ** 2 / 2), ev.max_length)
                 for ev in config.events.values())
    fields = config.num_categorical + config.num_dense + config.num_multihot * config.multihot_max_length / 2
    return rows * (BYTES_PER_EVENT * events + BYTES_PER_FIELD * fields)


def check_free_disk(config: GeneratorConfig, root: Path, rows: int) -> None:
    """Refuse, before any work, a run that cannot fit on the disk it writes to."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    need = estimated_bytes(config, rows)
    if need > free:
        raise KunbenchError(f"{rows:,} rows need about {need / 1e9:,.1f} GB, and {probe} has {free / 1e9:,.1f} GB "
                            f"free; write fewer rows or choose another --out")


def check_run_args(config: GeneratorConfig, workers: int, num_shards: int, shard_index: int) -> None:
    if workers < 1:
        raise KunbenchError(f"--workers must be >= 1, got {workers}")
    if num_shards < 1:
        raise KunbenchError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise KunbenchError(f"--shard-index must be in [0, {num_shards - 1}] for --num-shards "
                            f"{num_shards}, got {shard_index}")
    if config.train_rows < 1:
        raise KunbenchError(f"rows={config.rows} leaves no train rows with eval_fraction="
                            f"{config.eval_fraction}")
    if config.eval_fraction > 0 and config.eval_rows < 1:
        raise KunbenchError(f"rows={config.rows} is too small for eval_fraction={config.eval_fraction} "
                            f"(the eval split would be empty); raise rows or set eval_fraction=0")


# ---- worker processes ----------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _die_with_parent(parent_pid: int) -> None:
    """Linux: a worker gets SIGTERM when the generate process that started it dies (SIGKILL
    included), instead of lingering blocked on a pipe. A parent that died before this ran is
    caught by the pid check."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 - not Linux, or no prctl: the pid check below still runs
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(config_dict: dict, root: str, fingerprint: str, progress_q, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    cfg = config_from_dict(config_dict)
    _STATE.update(world=build_world(cfg), root=Path(root), fingerprint=fingerprint, queue=progress_q)


def _worker_calibration(part: tuple[int, int]) -> dict:
    return calibration_chunk_terms(_STATE["world"], *part)


def _worker_shard(spec: ShardSpec, calib_dict: dict) -> dict:
    q = _STATE["queue"]
    return write_shard(_STATE["world"], Calibration.from_dict(calib_dict), spec, _STATE["root"],
                       _STATE["fingerprint"], on_chunk=(lambda n: q.put(n)) if q is not None else None)


def _progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from kunbench.progress import progress
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")

    return progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("rows"), RowsPerSecond(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), unit="rows", transient=False)


def _shared_map(items: list, local_fn, remote_fn, pool, n_children: int, poll, on_remote=None) -> list:
    """Results of fn(item) for all items, in order, shared between this process and the pool.

    Children are kept fed with one item each; this process works through the rest itself (so
    it is busy while the children start up), calling `poll` between items and `on_remote(item)`
    when a child's item is done.
    """
    results: dict[int, Any] = {}
    todo = list(enumerate(items))
    pending: dict = {}
    try:
        while todo or pending:
            while todo and len(pending) < n_children:
                i, item = todo.pop(0)
                pending[pool.submit(remote_fn, item)] = i
            if todo:
                i, item = todo.pop(0)
                results[i] = local_fn(item)
            else:
                wait(list(pending), timeout=0.1, return_when=FIRST_COMPLETED)
            for fut in [f for f in pending if f.done()]:
                i = pending.pop(fut)
                results[i] = fut.result()
                if on_remote is not None:
                    on_remote(items[i])
            poll()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    return [results[i] for i in range(len(items))]


class _Runner:
    """Calibration (unless cached) and the shards to write: in this process, helped by
    `workers - 1` spawned child processes when workers > 1."""

    def __init__(self, world: World, calib: Calibration | None, root: Path, fingerprint: str,
                 workers: int, progress: bool):
        self.world, self.calib, self.root, self.fingerprint = world, calib, root, fingerprint
        self.workers, self.progress = workers, progress
        self.calibration_seconds = 0.0
        self.calibration_cpu_seconds = 0.0

    def _calibrate(self, bar, mapper) -> None:
        if self.calib is not None:
            return
        t0, c0 = time.perf_counter(), time.process_time()
        parts_spec = calibration_starts()
        task = bar.add_task("calibrating", total=CALIBRATION_ROWS) if bar is not None else None
        parts = mapper(parts_spec, (lambda n: bar.advance(task, n)) if bar is not None else (lambda n: None))
        self.calib = calibrate(self.world, parts=parts)
        self.calibration_seconds = time.perf_counter() - t0
        self.calibration_cpu_seconds = time.process_time() - c0

    def _local_calibration(self, parts, advance):
        """Chunks on two threads (numpy releases the GIL; each chunk's rows come from its own
        seed), gathered in order: the same terms as one thread computes, about twice as fast."""
        out = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="kunbench-calibration") as pool:
            for p, terms in zip(parts, pool.map(lambda part: calibration_chunk_terms(self.world, *part), parts)):
                out.append(terms)
                advance(p[1])
        return out

    def run(self, todo: list[ShardSpec]) -> dict[int, dict]:
        total_rows = sum(s.rows for s in todo)
        n_children = min(self.workers, len(todo)) - 1
        with _progress_bar(self.progress and (total_rows > 0 or self.calib is None)) as bar:
            if n_children <= 0:
                self._calibrate(bar, self._local_calibration)
                task = bar.add_task("generating", total=total_rows) if bar is not None else None
                advance = (lambda n: bar.advance(task, n)) if bar is not None else None
                return {spec.index: write_shard(self.world, self.calib, spec, self.root, self.fingerprint,
                                                on_chunk=advance) for spec in todo}
            ctx = mp.get_context("spawn")
            q = ctx.Queue() if bar is not None else None
            try:
                return self._run_pool(bar, ctx, q, todo, total_rows, n_children)
            except BrokenProcessPool as exc:
                raise KunbenchError(
                    f"a worker process died ({exc}); if you called the generator from an interactive "
                    f"session or stdin, run it from a script file or with workers=1") from None

    def _run_pool(self, bar, ctx, q, todo, total_rows, n_children) -> dict[int, dict]:
        with ProcessPoolExecutor(max_workers=n_children, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.world.config.to_dict(), str(self.root), self.fingerprint,
                                           q, os.getpid())) as pool:
            def calib_mapper(parts, advance):
                return _shared_map(parts, lambda p: (calibration_chunk_terms(self.world, *p), advance(p[1]))[0],
                                   _worker_calibration, pool, n_children, lambda: None,
                                   on_remote=lambda p: advance(p[1]))

            self._calibrate(bar, calib_mapper)
            task = bar.add_task("generating", total=total_rows) if bar is not None else None
            advance = (lambda n: bar.advance(task, n)) if bar is not None else (lambda n: None)
            poll = lambda: _drain(q, advance)  # noqa: E731
            calib_dict = self.calib.to_dict()

            def local(spec):
                return write_shard(self.world, self.calib, spec, self.root, self.fingerprint,
                                   on_chunk=lambda n: (advance(n), poll()))

            sidecars = _shared_map(todo, local, functools.partial(_worker_shard, calib_dict=calib_dict),
                                   pool, n_children, poll)
            poll()
        return {spec.index: side for spec, side in zip(todo, sidecars)}


def _drain(q, advance) -> None:
    if q is None:
        return
    while True:
        try:
            n = q.get_nowait()
        except queue_mod.Empty:
            return
        advance(n)


# ---- entry point ---------------------------------------------------------------------------
def run(config: GeneratorConfig, out_dir: str | Path, workers: int = 1, num_shards: int = 1,
        shard_index: int = 0, force: bool = False, progress: bool = True) -> GenerateResult:
    t0 = time.perf_counter()
    config = config.validate()
    check_run_args(config, workers, num_shards, shard_index)
    root = Path(out_dir)
    fingerprint = config.fingerprint()
    specs = plan_shards(config)
    selected = [s for s in specs if s.index % num_shards == shard_index]
    check_free_disk(config, root, sum(s.rows for s in selected))
    with directory_lock(root):
        return _run_locked(config, root, fingerprint, specs, selected, workers, force, progress, t0)


def _run_locked(config: GeneratorConfig, root: Path, fingerprint: str, specs: list[ShardSpec],
                selected: list[ShardSpec], workers: int, force: bool, progress: bool, t0: float) -> GenerateResult:
    prepare_dir(root, fingerprint, force)

    t_setup, c_setup = time.perf_counter(), time.process_time()
    world = build_world(config)
    world_seconds = time.perf_counter() - t_setup
    world_cpu = time.process_time() - c_setup
    result = GenerateResult(root, len(specs), selected=[s.name for s in selected])

    remove_stray_temps(root, selected)
    sidecars: dict[int, dict] = {}
    todo: list[ShardSpec] = []
    for spec in selected:
        side = finished_sidecar(root, spec, fingerprint, verify=True)
        if side is None:
            todo.append(spec)
        else:
            sidecars[spec.index] = side
            result.skipped.append(spec.name)
    runner = _Runner(world, cached_calibration(root, fingerprint), root, fingerprint, workers, progress)
    t_shards = time.perf_counter()
    sidecars.update(runner.run(todo))
    if runner.calib is None:  # nothing to write and nothing cached
        runner._calibrate(None, lambda parts: (calibration_chunk_terms(world, *p) for p in parts))
    calib = runner.calib
    store_calibration(root, fingerprint, calib)
    result.setup_seconds = world_seconds + runner.calibration_seconds
    result.setup_cpu_seconds = world_cpu + runner.calibration_cpu_seconds
    result.shard_seconds = time.perf_counter() - t_shards - runner.calibration_seconds
    result.written = [s.name for s in todo]
    result.rows_written = sum(s.rows for s in todo)

    for spec in specs:  # shards of other runs (e.g. copied in from other machines)
        if spec.index not in sidecars:
            side = finished_sidecar(root, spec, fingerprint, verify=True)
            if side is None:
                result.missing.append(spec.name)
            else:
                sidecars[spec.index] = side
    if not result.missing:
        manifest = build_manifest(world, calib, fingerprint, specs, sidecars)
        write_manifest(root, manifest)
        result.manifest_written = True
        result.manifest = manifest
    result.seconds = time.perf_counter() - t0
    return result


def generate(config: GeneratorConfig, out_dir: str | Path, workers: int = 1, num_shards: int = 1,
             shard_index: int = 0, force: bool = False, progress: bool = True) -> Path:
    """Generate (or resume) the dataset `config` describes into `out_dir`; returns the directory."""
    return run(config, out_dir, workers, num_shards, shard_index, force, progress).path
