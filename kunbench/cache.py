"""The default dataset: the `small` preset generated once into a cache directory and reused.

Location: $KUNBENCH_CACHE/datasets/small-<fingerprint>, else ~/.cache/kunbench/datasets/...
(XDG_CACHE_HOME honoured). The fingerprint is the generator config's, so a changed preset gets a
fresh directory. Generation writes into a temporary sibling and renames it into place under a
file lock, so concurrent first runs (e.g. every torchrun rank) generate it once and a crashed
run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

from kunbench.errors import KunbenchError

DEFAULT_PRESET = "small"


def cache_root() -> Path:
    env = os.environ.get("KUNBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kunbench"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _generate(config, out_dir: Path) -> None:
    from kunbench.generators.ctr import generate

    generate(config, out_dir, progress=False)


def default_dataset(preset: str = DEFAULT_PRESET, *, log: Callable[[str], None] | None = None,
                    generate: Callable | None = None, sets: dict | None = None) -> Path:
    """Path of the cached dataset for `preset`, generating it first if it is not there yet.

    `sets`: generator config overrides (e.g. {"rows": 16384}); the fingerprint covers them, so a
    reduced variant gets its own cache directory."""
    try:
        from kunbench.generators.config import build_config
    except ImportError as exc:  # pragma: no cover - the generator ships with kunbench
        raise KunbenchError(f"the data generator is not available: {exc}") from None
    config = build_config(preset, sets=sets)
    root = cache_root() / "datasets"
    target = root / f"{preset}-{config.fingerprint()}"
    if (target / "manifest.json").is_file():
        return target
    with _locked(root / f".{target.name}.lock"):
        if (target / "manifest.json").is_file():  # another process made it while we waited
            return target
        if log is not None:
            log(f"generating the {preset!r} dataset once into {target} (reused by later runs)")
        # one fixed work directory per dataset, used only under the lock: a run that was killed
        # leaves it behind, and the next run resumes the shards it finished instead of starting over
        tmp = root / f".{target.name}.partial"
        for stale in root.glob(f".{target.name}.*"):  # work directories of older kunbench versions
            if stale.is_dir() and stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(mode=0o755, exist_ok=True)
        try:
            (generate or _generate)(config, tmp)
        except KunbenchError:
            shutil.rmtree(tmp, ignore_errors=True)  # a refused config leaves nothing to resume
            raise
        if not (tmp / "manifest.json").is_file():
            raise KunbenchError(f"dataset generation into {tmp} wrote no manifest.json")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target
