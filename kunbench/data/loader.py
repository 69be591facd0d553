"""Batches from a dataset directory: a torch IterableDataset over (file, row group) work units.

    ds = ParquetBatches("data/std", "train", batch_size=512, max_lengths={"impression": 256})
    for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2):
        ...

The dataset yields whole `Batch` objects, so the DataLoader must not batch again (batch_size=None).
Work units are the split's row groups in manifest order; unit k (after the optional per-epoch
shuffle) goes to global worker k % (world_size * num_workers), with global worker id
rank * num_workers + worker_id, so every row is read exactly once per epoch across ranks and
DataLoader workers. Batches may span row groups within one worker; each worker's last batch may be
short unless drop_last.

List columns are decoded from Arrow's offsets and values with numpy (zero-copy views of the
Arrow buffers), truncated to the most recent N events per type with one vectorized gather, and
copied exactly once into the batch's own tensors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kunbench.data.batch import Batch, EventSequence, Jagged
from kunbench.data.jagged import arrow_list_to_numpy, truncate_recent_index_np
from kunbench.ops.jagged import slice_maxima
from kunbench.data.manifest import Column, Manifest, load_manifest
from kunbench.errors import KunbenchError

LIST_ROLES = ("context_multihot", "sequence")


# ---- decoded row groups ------------------------------------------------------------------
class _JaggedCol:
    """One list column of a decoded row group: zero-copy values plus (optionally) a truncation."""

    __slots__ = ("values", "offsets", "index", "out_offsets")

    def __init__(self, values: np.ndarray, offsets: np.ndarray, index: np.ndarray | None = None,
                 out_offsets: np.ndarray | None = None):
        self.values = values
        self.offsets = offsets  # [n+1] int64 into values, starting at 0
        self.index = index  # gather index for truncation, or None
        self.out_offsets = offsets if out_offsets is None else out_offsets

    def write(self, a: int, b: int, out: np.ndarray) -> None:
        """Copy the (possibly truncated) values of rows [a, b) into `out`."""
        if self.index is None:
            out[:] = self.values[self.offsets[a]:self.offsets[b]]
        else:
            np.take(self.values, self.index[self.out_offsets[a]:self.out_offsets[b]], out=out)


@dataclass
class _Chunk:
    n: int
    cat: list[np.ndarray]
    dense: list[np.ndarray]
    multihot: list[_JaggedCol]
    seqs: list[tuple[_JaggedCol, _JaggedCol, _JaggedCol]]  # per event type: item, category, ts
    request_ts: np.ndarray
    labels: np.ndarray
    p_true: np.ndarray | None


def _flat(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


_TORCH_DTYPE = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32,
                np.dtype(np.float64): torch.float64, np.dtype(np.int8): torch.int8}
_ALIGN = 64


def _allocate(specs: list[tuple[tuple[int, ...], np.dtype]], shared: bool) -> list[torch.Tensor]:
    """Fresh tensors of the given shapes and dtypes.

    In DataLoader workers (shared=True) they are views into ONE shared-memory buffer: handing a
    batch to the main process then costs no copy and a single shared segment, instead of one per
    tensor (creating many small segments costs several times more than filling them).
    """
    if not shared:
        return [torch.empty(shape, dtype=_TORCH_DTYPE[np.dtype(dt)]) for shape, dt in specs]
    starts, pos = [], 0
    for shape, dt in specs:
        starts.append(pos)
        pos += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize // _ALIGN) * _ALIGN
    arena = torch.empty(max(pos, _ALIGN), dtype=torch.uint8).share_memory_()
    out = []
    for (shape, dt), start in zip(specs, starts):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        out.append(arena[start:start + nbytes].view(_TORCH_DTYPE[np.dtype(dt)]).view(shape))
    return out


def _out_offsets(pieces: list[tuple[_JaggedCol, int, int]]) -> np.ndarray:
    B = sum(b - a for _, a, b in pieces)
    offsets = np.empty(B + 1, dtype=np.int64)
    offsets[0] = 0
    row, base = 1, 0
    for col, a, b in pieces:
        o = col.out_offsets
        offsets[row:row + b - a] = o[a + 1:b + 1] - o[a] + base
        base += int(o[b] - o[a])
        row += b - a
    return offsets


def _fill_jagged(pieces: list[tuple[_JaggedCol, int, int]], out: np.ndarray) -> None:
    """Write the (truncated) values of rows [a, b) of each piece, concatenated, into `out`."""
    pos = 0
    for col, a, b in pieces:
        m = int(col.out_offsets[b] - col.out_offsets[a])
        col.write(a, b, out[pos:pos + m])
        pos += m


def _assemble(pieces: list[tuple[_Chunk, int, int]], include_p_true: bool, event_types: Sequence[str],
              multihot_names: Sequence[str], shared: bool = False) -> Batch:
    B = sum(b - a for _, a, b in pieces)
    c0 = pieces[0][0]
    mh_cols = [[(ch.multihot[j], a, b) for ch, a, b in pieces] for j in range(len(multihot_names))]
    seq_cols = [[[(ch.seqs[j][p], a, b) for ch, a, b in pieces] for p in range(3)] for j in range(len(event_types))]
    mh_off = [_out_offsets(cols) for cols in mh_cols]
    seq_off = [_out_offsets(parts[0]) for parts in seq_cols]
    i64, f32 = np.dtype(np.int64), np.dtype(np.float32)
    specs = [((B, len(c0.cat)), i64), ((B, len(c0.dense)), f32), ((B,), i64), ((B,), f32)]
    if include_p_true:
        specs.append(((B,), np.dtype(np.float64)))
    for cols, off in zip(mh_cols, mh_off):
        specs += [((B + 1,), i64), ((int(off[-1]),), cols[0][0].values.dtype)]
    for parts, off in zip(seq_cols, seq_off):
        specs += [((B + 1,), i64)] + [((int(off[-1]),), part[0][0].values.dtype) for part in parts]
    tensors = iter(_allocate(specs, shared))
    t_cat, t_dense, t_request_ts, t_labels = (next(tensors) for _ in range(4))
    t_p_true = next(tensors) if include_p_true else None
    cat, dense, request_ts, labels = t_cat.numpy(), t_dense.numpy(), t_request_ts.numpy(), t_labels.numpy()
    p_true = None if t_p_true is None else t_p_true.numpy()
    row = 0
    for ch, a, b in pieces:
        r = slice(row, row + b - a)
        for j, col in enumerate(ch.cat):
            cat[r, j] = col[a:b]
        for j, col in enumerate(ch.dense):
            dense[r, j] = col[a:b]
        request_ts[r] = ch.request_ts[a:b]
        labels[r] = ch.labels[a:b]
        if p_true is not None:
            p_true[r] = ch.p_true[a:b]
        row += b - a
    multihot = {}
    for name, cols, off in zip(multihot_names, mh_cols, mh_off):
        t_off, t_val = next(tensors), next(tensors)
        t_off.numpy()[:] = off
        _fill_jagged(cols, t_val.numpy())
        multihot[name] = Jagged(t_val, t_off)
    sequences, max_lengths, length_slices = {}, {}, {}
    for et, parts, off in zip(event_types, seq_cols, seq_off):
        length_slices[et] = slice_maxima(torch.from_numpy(np.diff(off)))
        max_lengths[et] = length_slices[et].longest
        t_off = next(tensors)
        t_off.numpy()[:] = off
        vals = [next(tensors) for _ in range(3)]
        for part, t in zip(parts, vals):
            _fill_jagged(part, t.numpy())
        sequences[et] = EventSequence(vals[0], vals[1], vals[2], t_off)
    return Batch(context_categorical=t_cat, context_dense=t_dense, multihot=multihot, sequences=sequences,
                 request_ts=t_request_ts, labels=t_labels, p_true=t_p_true, max_lengths=max_lengths,
                 length_slices=length_slices)


# ---- the dataset ---------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkUnit:
    file: int  # index into the split's file list
    row_group: int
    rows: int


class ParquetBatches(IterableDataset):
    """Batches of one split of a kunbench dataset directory (see module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", batch_size: int = 512,
                 max_lengths: int | Mapping[str, int] | None = None, include_p_true: bool = False,
                 drop_last: bool = False, shuffle_seed: int | None = None,
                 event_types: Sequence[str] | None = None, rank: int | None = None,
                 world_size: int | None = None, use_threads: bool | None = None):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise KunbenchError(f"batch_size must be a positive integer, got {batch_size!r}")
        root = Path(root)
        if not root.is_dir():
            raise KunbenchError(f"dataset directory {root} does not exist")
        self.manifest: Manifest = load_manifest(root)
        self.root = root
        self.split = split
        self.paths = self.manifest.files(split)  # raises on an unknown split
        self.batch_size = int(batch_size)
        self.include_p_true = include_p_true
        self.drop_last = drop_last
        self.shuffle_seed = shuffle_seed
        self.use_threads = use_threads
        self.epoch = 0
        if (rank is None) != (world_size is None):
            raise KunbenchError("give both rank and world_size, or neither")
        if world_size is not None and not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
            raise KunbenchError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.rank, self.world_size = rank, world_size

        schema = self.manifest.schema
        known = schema.event_types
        if event_types is None:
            self.event_types = tuple(known)
        else:
            event_types = [event_types] if isinstance(event_types, str) else list(event_types)
            bad = [e for e in event_types if e not in known]
            if bad:
                raise KunbenchError(f"unknown event type {bad[0]!r} (dataset has {', '.join(known)})")
            self.event_types = tuple(event_types)
        self.max_lengths = self._resolve_max_lengths(max_lengths, known)

        cols = self.manifest.columns
        by_role = lambda role: [c for c in cols if c.role == role]  # noqa: E731
        for role in ("request_ts", "label"):
            if len(by_role(role)) != 1:
                raise KunbenchError(f"{root}: manifest needs exactly one {role} column, has {len(by_role(role))}")
        self._request_ts_col = by_role("request_ts")[0].name
        self._label_col = by_role("label")[0].name
        oracle = by_role("oracle")
        if len(oracle) > 1:
            raise KunbenchError(f"{root}: manifest has {len(oracle)} oracle columns (at most one)")
        # a dataset without an oracle (a real log) has no p_true to include
        include_p_true = self.include_p_true = include_p_true and bool(oracle)
        self._p_true_col = oracle[0].name if include_p_true else None
        # every ID is checked against its column's cardinality as it is decoded: a damaged or
        # mislabelled shard must stop the run, not fold IDs silently into other rows of a table
        self._cardinality = {c.name: int(c.cardinality) for c in self.manifest.columns
                             if isinstance(c.cardinality, int) and c.cardinality > 0
                             and (c.role in ("context_categorical", "context_multihot")
                                  or (c.role == "sequence" and c.part in ("item", "category")))}
        self.categorical_names = [c.name for c in schema.categorical]
        self.dense_names = [c.name for c in schema.dense]
        self.multihot_names = [c.name for c in schema.multihot]
        self._seq_names = [tuple(schema.sequence_columns[e][p].name for p in ("item", "category", "ts"))
                           for e in self.event_types]
        self._read_columns = ([self._request_ts_col, self._label_col] + ([self._p_true_col] if include_p_true else [])
                              + self.categorical_names + self.dense_names + self.multihot_names
                              + [n for names in self._seq_names for n in names])
        self.units = self._scan_files(cols)
        self.num_rows = sum(u.rows for u in self.units)

    # ---- setup ---------------------------------------------------------------------------
    @staticmethod
    def _resolve_max_lengths(max_lengths, known: Sequence[str]) -> dict[str, int]:
        def check(name: str, v) -> int:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise KunbenchError(f"max length for {name!r} must be an integer >= 0, got {v!r}")
            return int(v)

        if max_lengths is None:
            return {}
        if isinstance(max_lengths, Mapping):
            bad = [e for e in max_lengths if e not in known]
            if bad:
                raise KunbenchError(f"max_lengths names unknown event type {bad[0]!r} (dataset has {', '.join(known)})")
            return {e: check(e, v) for e, v in max_lengths.items()}
        return {e: check(e, max_lengths) for e in known}

    def _scan_files(self, cols: Sequence[Column]) -> list[WorkUnit]:
        expected = {c.name: c for c in cols}
        entries = self.manifest.splits[self.split]["files"]
        units = []
        for i, (path, entry) in enumerate(zip(self.paths, entries)):
            if not path.is_file():
                raise KunbenchError(f"shard {path} listed in the manifest is missing")
            try:
                meta = pq.read_metadata(path)
                arrow_schema = meta.schema.to_arrow_schema()
            except (OSError, pa.ArrowException) as exc:
                raise KunbenchError(f"shard {path} is not a readable Parquet file: {exc}") from None
            names = set(arrow_schema.names)
            missing = sorted(set(expected) - names)
            extra = sorted(names - set(expected))
            if missing or extra:
                what = "; ".join(p for p in (f"missing {', '.join(missing[:5])}" if missing else "",
                                             f"unexpected {', '.join(extra[:5])}" if extra else "") if p)
                raise KunbenchError(f"shard {path} columns do not match the manifest ({what})")
            for name in self._read_columns:
                t = arrow_schema.field(name).type
                is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
                value_type = t.value_type if is_list else t
                # an integer column holding floats or text would be cast (and truncated) silently;
                # a narrower integer or float width reads fine
                wants_int = expected[name].dtype.startswith(("int", "list<int"))
                if is_list != (expected[name].role in LIST_ROLES) or (
                        wants_int and not pa.types.is_integer(value_type)):
                    raise KunbenchError(f"shard {path} column {name!r} has type {t}, "
                                        f"which does not match manifest dtype {expected[name].dtype}")
            if "rows" in entry and int(entry["rows"]) != meta.num_rows:
                raise KunbenchError(f"shard {path} has {meta.num_rows} rows, the manifest says {entry['rows']}")
            for rg in range(meta.num_row_groups):
                n = meta.row_group(rg).num_rows
                if n:
                    units.append(WorkUnit(i, rg, n))
        return units

    @property
    def schema(self):
        return self.manifest.schema

    def rows_for(self, rank: int, world_size: int, num_workers: int = 1) -> int:
        """Rows one rank reads this epoch, all of its `num_workers` DataLoader workers together
        (which units a rank gets depends on the worker count: unit k -> global worker k % total)."""
        return sum(u.rows for w in range(num_workers) for u in self.units_for(rank, world_size, w, num_workers))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the unit order (when shuffle_seed is set) for this epoch."""
        self.epoch = int(epoch)

    def _dist(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def unit_order(self) -> list[WorkUnit]:
        if self.shuffle_seed is None:
            return list(self.units)
        perm = np.random.default_rng([int(self.shuffle_seed), self.epoch]).permutation(len(self.units))
        return [self.units[k] for k in perm]

    def units_for(self, rank: int, world_size: int, worker_id: int = 0, num_workers: int = 1) -> list[WorkUnit]:
        """The units global worker rank * num_workers + worker_id reads this epoch."""
        total = world_size * num_workers
        return self.unit_order()[rank * num_workers + worker_id::total]

    # ---- reading ---------------------------------------------------------------------------
    def _check_ids(self, name: str, values: np.ndarray, where: str) -> np.ndarray:
        card = self._cardinality.get(name)
        if card is not None and values.size and (values.min() < 0 or values.max() >= card):
            bad = values[(values < 0) | (values >= card)][0]
            raise KunbenchError(f"{where}: column {name!r} holds ID {bad}, outside [0, {card}) (its cardinality "
                                f"in the manifest); the shard is damaged or the manifest is wrong "
                                f"(kunbench inspect --verify)")
        return values

    def _decode(self, table: pa.Table, where: str = "") -> _Chunk:
        n = table.num_rows
        col = lambda name: self._check_ids(name, _flat(table.column(name)), where)  # noqa: E731

        def jagged(name: str) -> _JaggedCol:
            values, offsets = arrow_list_to_numpy(table.column(name))
            return _JaggedCol(self._check_ids(name, values, where), offsets)

        seqs = []
        for et, names in zip(self.event_types, self._seq_names):
            parts = [jagged(name) for name in names]
            offsets = parts[0].offsets
            for p, name in zip(parts[1:], names[1:]):
                if not np.array_equal(p.offsets, offsets):
                    raise KunbenchError(f"{self.root}: column {name!r} has row lengths that differ from {names[0]!r}")
            max_len = self.max_lengths.get(et)
            if max_len is not None:
                index, out_offsets = truncate_recent_index_np(offsets, max_len)
                if index is not None:
                    for p in parts:
                        p.index, p.out_offsets = index, out_offsets
            seqs.append(tuple(parts))
        return _Chunk(
            n=n,
            cat=[col(name) for name in self.categorical_names],
            dense=[col(name) for name in self.dense_names],
            multihot=[jagged(name) for name in self.multihot_names],
            seqs=seqs,
            request_ts=col(self._request_ts_col),
            labels=col(self._label_col),
            p_true=col(self._p_true_col) if self._p_true_col else None,
        )

    def _chunks(self, units: Sequence[WorkUnit], use_threads: bool) -> Iterator[_Chunk]:
        current: tuple[int, pq.ParquetFile] | None = None
        for u in units:
            path = self.paths[u.file]
            try:
                if current is None or current[0] != u.file:
                    current = (u.file, pq.ParquetFile(path))
                table = current[1].read_row_group(u.row_group, columns=self._read_columns, use_threads=use_threads)
            except FileNotFoundError:
                raise KunbenchError(f"shard {path} listed in the manifest is missing") from None
            except (OSError, pa.ArrowException, KeyError) as exc:
                raise KunbenchError(f"shard {path} row group {u.row_group} could not be read: "
                                    f"{str(exc).splitlines()[0]}") from None
            yield self._decode(table, f"shard {path} row group {u.row_group}")

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        rank, world_size = self._dist()
        units = self.units_for(rank, world_size, worker_id, num_workers)
        use_threads = self.use_threads if self.use_threads is not None else info is None
        shared = info is not None
        pending: list[tuple[_Chunk, int, int]] = []
        have = 0
        B = self.batch_size
        for chunk in self._chunks(units, use_threads):
            start = 0
            while start < chunk.n:
                take = min(B - have, chunk.n - start)
                pending.append((chunk, start, start + take))
                have += take
                start += take
                if have == B:
                    yield self._make(pending, shared)
                    pending, have = [], 0
        if pending and not self.drop_last:
            yield self._make(pending, shared)

    def _make(self, pieces: list[tuple[_Chunk, int, int]], shared: bool = False) -> Batch:
        return _assemble(pieces, self.include_p_true, self.event_types, self.multihot_names, shared)

    def __repr__(self) -> str:
        return (f"ParquetBatches({str(self.root)!r}, split={self.split!r}, rows={self.num_rows}, "
                f"units={len(self.units)}, batch_size={self.batch_size})")


def make_dataloader(dataset: ParquetBatches, num_workers: int = 0, pin_memory: bool = False,
                    prefetch_factor: int | None = None, persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader that passes the dataset's batches through unchanged (batch_size=None)."""
    kwargs = {}
    if num_workers > 0 and prefetch_factor is not None:
        kwargs["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       persistent_workers=persistent_workers and num_workers > 0, **kwargs)


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (DataLoader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure_loader(root: str | os.PathLike, split: str = "train", num_workers: int = 0, batch_size: int = 512,
                   max_lengths: int | Mapping[str, int] | None = None, max_rows: int | None = None,
                   **dataset_kwargs) -> dict:
    """One timed pass; returns rows, batches, events, seconds, rows_per_s, the time to the first batch,
    steady_rows_per_s (rows after the first batch over the time after it: start-up excluded) and
    rows_per_cpu_s (rows over the CPU time of the main process and its workers; robust to other
    load on the machine, where wall-clock figures are not)."""
    ds = ParquetBatches(root, split, batch_size=batch_size, max_lengths=max_lengths, **dataset_kwargs)
    loader = make_dataloader(ds, num_workers=num_workers)
    rows = batches = events = 0
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    first = None
    for batch in loader:
        rows += batch.batch_size
        if first is None:
            first, first_rows = time.perf_counter() - t0, rows
        batches += 1
        events += sum(int(s.item.numel()) for s in batch.sequences.values())
        if max_rows is not None and rows >= max_rows:
            break
    seconds = time.perf_counter() - t0
    del loader  # workers exit and are reaped, so their CPU time is counted
    cpu = _cpu_seconds() - cpu0
    steady = None
    if first is not None and batches > 1 and seconds > first:
        steady = (rows - first_rows) / (seconds - first)
    return {"rows": rows, "batches": batches, "events": events, "seconds": seconds,
            "rows_per_s": rows / seconds if seconds > 0 else float("inf"), "first_batch_s": first,
            "steady_rows_per_s": steady, "cpu_s": cpu, "rows_per_cpu_s": rows / cpu if cpu > 0 else float("inf"),
            "num_workers": num_workers, "batch_size": batch_size}
