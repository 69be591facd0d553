"""The import run: lock the output directory, resume what a killed run finished, show progress,
and write the manifest last (a dataset without one is not a dataset)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError
from kunbench.importer import build
from kunbench.importer.spec import ImportSpec


@dataclass
class ImportResult:
    manifest: dict[str, Any]
    seconds: float
    resumed_buckets: int
    skipped: bool  # the directory already held this import


def _prepare(out: Path, fingerprint: str, force: bool) -> bool:
    """True when `out` already holds this import; refuses a directory holding anything else."""
    from kunbench.generators.writer import remove_dataset_files

    work = out / build.WORK
    resumable = build.read_state(work).get("fingerprint")
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            existing = json.loads(manifest.read_text()).get("fingerprint")
        except (OSError, ValueError):
            existing = None
        if existing == fingerprint:
            return True
        if not force:
            raise KunbenchError(f"--out {out} holds another dataset; choose another --out or pass --force")
        remove_dataset_files(out)  # a generated dataset's bookkeeping too, or generate would resume over us
    elif resumable != fingerprint and any(p.name != build.WORK for p in out.iterdir()):
        if not force:
            if resumable:
                raise KunbenchError(f"--out {out} holds an unfinished import of another spec (or changed input); "
                                    f"rerun that one to resume it, or pass --force to start this one")
            raise KunbenchError(f"--out {out} is not empty and holds no kunbench import; choose an empty directory "
                                f"or pass --force")
        remove_dataset_files(out)
    if build.read_state(work).get("fingerprint") != fingerprint:  # removed above, or another spec's
        build.clean_work(out)
    work.mkdir(parents=True, exist_ok=True)
    return False


def run_import(spec: ImportSpec, out: str | Path, *, force: bool = False, progress: bool = True,
               console=None) -> ImportResult:
    from kunbench.generators.writer import directory_lock, write_json_atomic
    from kunbench.progress import progress as make_progress
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    out = Path(out)
    t0 = time.perf_counter()
    fingerprint = spec.fingerprint()
    with directory_lock(out, what="import"):
        if _prepare(out, fingerprint, force):
            return ImportResult(json.loads((out / "manifest.json").read_text()), 0.0, 0, True)
        work = out / build.WORK
        state = build.read_state(work) or {"fingerprint": fingerprint, "buckets": {}}
        save = lambda: write_json_atomic(work / "state.json", state)  # noqa: E731
        bar = make_progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console if progress else None, disable=not progress,
                            unit="rows")
        with bar:
            if not state.get("partitioned"):
                task = bar.add_task("import: vocabularies", total=None)
                vocab = build.scan_vocab(spec, lambda n: bar.advance(task, n))
                build.save_vocab(work, vocab)
                task = bar.add_task("import: partition by user", total=None)
                build.partition(spec, vocab, work, lambda n: bar.advance(task, n))
                state["partitioned"] = True
                save()
            vocab = build.load_vocab(work)
            threshold = build.eval_threshold(vocab, spec.eval_fraction)
            users = build.side_attributes(spec.users, vocab.users, None, "users")
            items = build.side_attributes(spec.items, vocab.items, vocab.categories, "items")
            if len(vocab.users) * (vocab.ts_max - vocab.ts_min + 1) >= 1 << 62:
                raise KunbenchError(f"input.timestamp spans {vocab.ts_max - vocab.ts_min:,} units over "
                                    f"{len(vocab.users):,} users: are the times in seconds?")
            resumed = len(state["buckets"])
            task = bar.add_task("import: histories", total=spec.buckets)
            bar.update(task, completed=resumed)
            for b in range(spec.buckets):
                if str(b) in state["buckets"]:
                    continue
                tables = build.bucket_rows(spec, vocab, work / f"bucket-{b:05d}.parquet", users, items)
                state["buckets"][str(b)] = build.write_bucket(out, b, tables, threshold, spec.types)
                save()
                bar.advance(task, 1)
        parts = [state["buckets"][str(b)] for b in range(spec.buckets)]
        build.write_ids(out, vocab)
        splits = {split: build.split_entry([p[split] for p in parts], spec.types) for split in ("train", "eval")}
        if not splits["train"]["rows"]:
            raise KunbenchError("import: no request row falls in the train split (lower output.eval_fraction)")
        manifest = {"schema_version": 1, "generator": build.GENERATOR, "fingerprint": fingerprint,
                    "label_source": spec.label_source, "source": str(spec.path), "config": spec.to_dict(),
                    "event_types": list(spec.types), "eval_from_ts": threshold,
                    "columns": build.columns_spec(spec, vocab, users, items), "splits": splits}
        write_json_atomic(out / "manifest.json", manifest)
        build.clean_work(out)
    return ImportResult(manifest, time.perf_counter() - t0, resumed, False)
