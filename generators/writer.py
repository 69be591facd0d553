"""Shards on disk: the shard plan, atomic shard + sidecar writes, resume checks, the dataset
marker, and the manifest assembled from the shards' sidecars.

Layout:
  DIR/.kunbench-dataset.json        marker: which dataset (config fingerprint) this dir holds
  DIR/train/part-00000.parquet ...  shards (temp name `.part-00000.parquet.tmp` while writing)
  DIR/eval/part-00000.parquet ...
  DIR/.shards/train-00000.json ...  sidecar per finished shard: size, sha256, sufficient stats
  DIR/manifest.json                 written last, once every shard is present
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

import kunbench
from kunbench.data.manifest import MANIFEST_NAME, sha256_file
from kunbench.errors import KunbenchError
from kunbench.generators.chunk import build_chunk, chunk_rng, request_times
from kunbench.generators.config import OUTPUT_VERSION, SCHEMA_VERSION, GeneratorConfig
from kunbench.generators.schema import PARQUET_OPTIONS, arrow_schema, chunk_table, column_entries
from kunbench.generators.signal import Calibration, combine, raw_terms, sigmoid
from kunbench.generators.world import World
from kunbench.metrics import LogLossSums

MARKER_NAME = ".kunbench-dataset.json"
SIDECAR_DIR = ".shards"
SPLITS = ("train", "eval")
GENERATOR_NAME = "kunbench.generators.ctr"


@dataclass(frozen=True)
class ShardSpec:
    index: int  # position in the global shard list (train shards, then eval shards)
    split: str
    split_index: int
    start: int  # first global row
    rows: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.split_index:05d}"

    @property
    def path(self) -> str:
        return f"{self.split}/part-{self.split_index:05d}.parquet"

    @property
    def temp_path(self) -> str:
        """Hidden beside the shard it becomes (os.replace within one directory is atomic)."""
        directory, file = self.path.split("/")
        return f"{directory}/.{file}.tmp"

    @property
    def sidecar(self) -> str:
        return f"{SIDECAR_DIR}/{self.name}.json"


def plan_shards(cfg: GeneratorConfig) -> list[ShardSpec]:
    """Train shards cover [0, train_rows), eval shards [train_rows, rows), rows_per_shard each."""
    specs: list[ShardSpec] = []
    bounds = {"train": (0, cfg.train_rows), "eval": (cfg.train_rows, cfg.rows)}
    for split in SPLITS:
        lo, hi = bounds[split]
        for k, start in enumerate(range(lo, hi, cfg.rows_per_shard)):
            specs.append(ShardSpec(len(specs), split, k, start, min(cfg.rows_per_shard, hi - start)))
    return specs


# ---- atomic writes -------------------------------------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- the dataset directory -----------------------------------------------------------------
def _existing_fingerprint(root: Path) -> str | None:
    for name in (MARKER_NAME, MANIFEST_NAME):
        data = _read_json(root / name)
        if isinstance(data, dict) and isinstance(data.get("fingerprint"), str):
            return data["fingerprint"]
    return None


def remove_dataset_files(root: Path) -> None:
    """Remove only what a kunbench dataset consists of, generated or imported (`kunbench import`
    keeps ids/ and .import/); anything else in `root` stays."""
    for name in (MANIFEST_NAME, MARKER_NAME):
        (root / name).unlink(missing_ok=True)
    for name in (SIDECAR_DIR, "ids", ".import"):
        shutil.rmtree(root / name, ignore_errors=True)
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.is_file() and (p.name.startswith("part-") or p.name.startswith(".part-")):
                p.unlink()
        if not any(d.iterdir()):
            d.rmdir()


@contextlib.contextmanager
def directory_lock(root: Path, what: str = "generate"):
    """Hold an exclusive lock on `root` for one generate run; a second run into the same directory
    stops at once with one line (two writers would rename each other's shards and record wrong
    checksums). The lock is an flock on the directory itself: no file is left behind, and it dies
    with its process, so a killed run never leaves it held."""
    if root.exists() and not root.is_dir():
        raise KunbenchError(f"--out {root} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY)
    except OSError as exc:
        raise KunbenchError(f"--out {root}: cannot write there ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KunbenchError(f"{root} is being written by another kunbench {what} run; wait for it to "
                                f"finish or choose another --out") from None
        yield
    finally:
        os.close(fd)


def prepare_dir(root: Path, fingerprint: str, force: bool) -> None:
    """Create `root` for this dataset, resume it, or refuse a directory holding something else."""
    if root.exists() and not root.is_dir():
        raise KunbenchError(f"--out {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        existing = _existing_fingerprint(root)
        if existing != fingerprint:
            if not force:
                if existing is None:
                    raise KunbenchError(
                        f"{root} is not empty and holds no kunbench dataset; choose a new --out "
                        f"(or pass --force to write this dataset {fingerprint} into it)")
                raise KunbenchError(
                    f"{root} holds a different dataset (fingerprint {existing}; this config is "
                    f"{fingerprint}); choose another --out or pass --force to replace it")
            remove_dataset_files(root)
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (root / split).mkdir(exist_ok=True)
    (root / SIDECAR_DIR).mkdir(exist_ok=True)
    marker = root / MARKER_NAME
    if _existing_fingerprint(root) != fingerprint or not marker.is_file():
        write_json_atomic(marker, {"fingerprint": fingerprint, "generator": GENERATOR_NAME,
                                   "schema_version": SCHEMA_VERSION})


def cached_calibration(root: Path, fingerprint: str) -> Calibration | None:
    """The calibration an earlier run of this dataset stored in the marker (exact: JSON floats
    round-trip), so resumed and merge runs skip the calibration sample."""
    data = _read_json(root / MARKER_NAME)
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint or "calibration" not in data:
        return None
    try:
        return Calibration.from_dict(data["calibration"])
    except (KeyError, TypeError, ValueError):
        return None


def store_calibration(root: Path, fingerprint: str, calib: Calibration) -> None:
    data = _read_json(root / MARKER_NAME)
    if isinstance(data, dict) and data.get("fingerprint") == fingerprint and "calibration" in data:
        return
    write_json_atomic(root / MARKER_NAME, {"fingerprint": fingerprint, "generator": GENERATOR_NAME,
                                           "schema_version": SCHEMA_VERSION, "calibration": calib.to_dict()})


def remove_stray_temps(root: Path, specs: list[ShardSpec]) -> None:
    """Temp files an interrupted run left for these shards (never other runs' shards)."""
    for spec in specs:
        (root / spec.temp_path).unlink(missing_ok=True)
        side = root / spec.sidecar
        for p in side.parent.glob(f".{side.name}.tmp-*"):
            p.unlink(missing_ok=True)


# ---- one shard -----------------------------------------------------------------------------
class ShardStats:
    """Additive per-shard statistics; the manifest's split figures are sums of these."""

    def __init__(self, event_names: tuple[str, ...]):
        self.loss = LogLossSums()
        self.p_true_sum = 0.0
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.lengths: dict[str, np.ndarray] = {e: np.zeros(0, dtype=np.int64) for e in event_names}

    def add(self, click: np.ndarray, p_true: np.ndarray, request_ts: np.ndarray,
            lengths: dict[str, np.ndarray]) -> None:
        self.loss.add(click, p_true)
        self.p_true_sum += float(p_true.sum())
        lo, hi = int(request_ts.min()), int(request_ts.max())
        self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)
        for e, ln in lengths.items():
            counts = np.bincount(ln)
            cur = self.lengths[e]
            if counts.size > cur.size:
                counts[: cur.size] += cur
                self.lengths[e] = counts
            else:
                cur[: counts.size] += counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.loss.count, "positives": self.loss.positives,
            "logloss_sum": self.loss.logloss_sum, "prediction_sum": self.loss.prediction_sum,
            "label_sum": self.loss.positives, "p_true_sum": self.p_true_sum,
            "ts_min": self.ts_min, "ts_max": self.ts_max,
            "lengths": {e: [[int(k), int(c[k])] for k in np.flatnonzero(c)] for e, c in self.lengths.items()},
        }


def chunk_labels(world: World, calib: Calibration, chunk) -> tuple[np.ndarray, np.ndarray]:
    terms = raw_terms(world, chunk, calib.active)
    p_true = sigmoid(combine(calib, terms, chunk.n))
    click = (chunk.click_u < p_true).astype(np.int8)
    return click, p_true


def iter_chunks(world: World, calib: Calibration, start: int, rows: int):
    """(chunk, click, p_true) for each row group of the row range [start, start + rows)."""
    cfg = world.config
    for s in range(start, start + rows, cfg.row_group_rows):
        n = min(cfg.row_group_rows, start + rows - s)
        rng = chunk_rng(cfg.seed, s)
        chunk = build_chunk(world, rng, s, n, request_times(cfg, rng, s, n))
        click, p_true = chunk_labels(world, calib, chunk)
        yield chunk, click, p_true


class RowGroupWriter:
    """A Parquet file written one row group per table, each encoded and compressed on one
    background thread while the caller draws the next (Arrow and most numpy kernels release the
    GIL): the same bytes in the same order, with at most one row group waiting in memory."""

    def __init__(self, path: Path, schema):
        self._writer = pq.ParquetWriter(path, schema, **PARQUET_OPTIONS)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kunbench-parquet")
        self._pending: Future | None = None

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises the encoder's error here

    def write(self, table) -> None:
        self._wait()
        self._pending = self._encoder.submit(self._writer.write_table, table, row_group_size=table.num_rows)

    def close(self) -> None:
        self._wait()
        self._encoder.shutdown(wait=True)
        self._writer.close()

    def abort(self) -> None:
        """Stop without raising again (the caller is already handling an error, and removes the file)."""
        self._encoder.shutdown(wait=True, cancel_futures=True)
        self._pending = None
        with contextlib.suppress(Exception):
            self._writer.close()


def write_shard(world: World, calib: Calibration, spec: ShardSpec, root: Path, fingerprint: str,
                on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write one shard chunk by chunk to its temp name, rename it, then write its sidecar."""
    schema = arrow_schema(column_entries(world))
    final = root / spec.path
    tmp = root / spec.temp_path
    tmp.unlink(missing_ok=True)
    stats = ShardStats(world.config.event_names)
    writer = RowGroupWriter(tmp, schema)
    try:
        for chunk, click, p_true in iter_chunks(world, calib, spec.start, spec.rows):
            writer.write(chunk_table(schema, chunk, click, p_true))
            stats.add(click, p_true, chunk.request_ts, {e: c.lengths for e, c in chunk.events.items()})
            if on_chunk is not None:
                on_chunk(chunk.n)
        writer.close()
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    sidecar = {"fingerprint": fingerprint, "shard": spec.name, "split": spec.split, "path": spec.path,
               "start_row": spec.start, "rows": spec.rows, "bytes": final.stat().st_size,
               "sha256": sha256_file(final), "stats": stats.to_dict()}
    write_json_atomic(root / spec.sidecar, sidecar)
    return sidecar


def finished_sidecar(root: Path, spec: ShardSpec, fingerprint: str, verify: bool = True) -> dict | None:
    """The shard's sidecar if the shard is complete and intact, else None (it must be redone)."""
    side = _read_json(root / spec.sidecar)
    if not isinstance(side, dict) or side.get("fingerprint") != fingerprint:
        return None
    if side.get("rows") != spec.rows or side.get("path") != spec.path:
        return None
    f = root / spec.path
    try:
        if f.stat().st_size != side.get("bytes"):
            return None
    except OSError:
        return None
    if verify and sha256_file(f) != side.get("sha256"):
        return None
    return side


# ---- manifest ------------------------------------------------------------------------------
def _length_summary(pairs_list: list[list[list[int]]]) -> dict[str, float] | None:
    counts: dict[int, int] = {}
    for pairs in pairs_list:
        for k, c in pairs:
            counts[k] = counts.get(k, 0) + c
    if not counts:
        return None
    keys = np.array(sorted(counts), dtype=np.int64)
    cnt = np.array([counts[k] for k in keys], dtype=np.int64)
    total = int(cnt.sum())
    cum = np.cumsum(cnt)

    def q(p: float) -> int:
        return int(keys[np.searchsorted(cum, p * total, side="left")])

    return {"mean": float((keys * cnt).sum() / total), "p50": q(0.5), "p99": q(0.99),
            "max": int(keys[-1]), "min": int(keys[0])}


def split_summary(cfg: GeneratorConfig, sidecars: list[dict]) -> dict[str, Any]:
    loss = LogLossSums()
    p_sum = 0.0
    ts_min = ts_max = None
    for s in sidecars:
        st = s["stats"]
        loss = loss.merge(LogLossSums(st["count"], st["positives"], st["logloss_sum"], st["prediction_sum"]))
        p_sum += st["p_true_sum"]
        ts_min = st["ts_min"] if ts_min is None else min(ts_min, st["ts_min"])
        ts_max = st["ts_max"] if ts_max is None else max(ts_max, st["ts_max"])
    rows = sum(s["rows"] for s in sidecars)
    nan_to_none = lambda x: None if x != x else x  # noqa: E731
    return {
        "rows": rows,
        "files": [{"path": s["path"], "rows": s["rows"], "bytes": s["bytes"], "sha256": s["sha256"]}
                  for s in sidecars],
        "base_ctr": nan_to_none(loss.base_rate),
        "oracle_ne": nan_to_none(loss.ne),
        "mean_p_true": p_sum / rows if rows else None,
        "request_ts": {"min": ts_min, "max": ts_max},
        "lengths": {e: _length_summary([s["stats"]["lengths"][e] for s in sidecars]) for e in cfg.events},
        "logloss_sums": {"count": loss.count, "positives": loss.positives,
                         "logloss_sum": loss.logloss_sum, "prediction_sum": loss.prediction_sum},
    }


def build_manifest(world: World, calib: Calibration, fingerprint: str, specs: list[ShardSpec],
                   sidecars: dict[int, dict]) -> dict[str, Any]:
    cfg = world.config
    columns = column_entries(world)
    by_role = lambda role: [c["name"] for c in columns if c["role"] == role and "entity" not in c]  # noqa: E731
    cat_names, dense_names, mh_names = (by_role("context_categorical"), by_role("context_dense"),
                                        by_role("context_multihot"))
    splits = {split: split_summary(cfg, [sidecars[s.index] for s in specs if s.split == split])
              for split in SPLITS}
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR_NAME,
        "output_version": OUTPUT_VERSION,
        "kunbench_version": kunbench.__version__,
        "seed": cfg.seed,
        "fingerprint": fingerprint,
        "rows": cfg.rows,
        "row_group_rows": cfg.row_group_rows,
        "event_types": list(cfg.event_names),
        "long_range_event": cfg.long_range_stream,
        "columns": columns,
        "splits": splits,
        "world": {**calib.to_dict(),
                  "cross_pairs": [[cat_names[a], cat_names[b]] for a, b in world.cross_pairs],
                  "weighted_fields": ([cat_names[i] for i in world.weighted_cat]
                                      + [dense_names[i] for i in world.weighted_dense]
                                      + [mh_names[i] for i in world.weighted_mh])},
        "config": cfg.to_dict(),
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(root / MANIFEST_NAME, manifest)
