"""What a suite runs in: its options and `--set` routing, the dataset (generated once and cached),
device and dtype, telemetry windows, and the backends it builds. Training lives in training.py,
throughput in throughput.py, statistics in kunbench.stats.

Budgets. The default run (no `--full`) is the reduced configuration: the backends' `tiny` presets,
one pass at batch 256 with dense lr 3e-3, short throughput windows, and a `tiny`-preset dataset
generated once and cached: 64k train + 8k eval rows, 160k + 8k for scaling (QUICK_DATA_SETS and
QUICK_DATA_SETS_BY_SUITE say why these sizes). The aim is the ablation within ~10 minutes and
scaling within ~20 on a 2-core CPU. `--full` switches to the `small` dataset preset, the backends'
default presets, the default training loop and longer windows. Either way every knob is a `--set`
away (`data.rows=...`, `data.eval_fraction=...`).

Quality is compared on expected NE (the generator's p_true as soft labels, see
docs/measurement.md): at a 3 % CTR the clicks drawn for a few thousand eval rows move NE more
than the differences the ablation and scaling suites look for. Per-row predictions come back with
p_true (suites/training.py), so `bootstrap_expected_ne` can pair two models on the same rows.

`--set` routing (also for `[section]` tables of a `--config` TOML file):
    train.KEY=V      the training loop (TrainConfig: steps, batch_size, lr, seed, ...)
    data.KEY=V       the generator config of the default dataset (rows, eval_fraction, ...)
    SUITE.KEY=V      a suite option (e.g. qps.batch_sizes=[64,256], ne.baseline=wukong)
    BACKEND.KEY=V    one backend's config (e.g. kunlun.compskip=off)
    KEY=V            every backend's config
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from kunbench.errors import KunbenchError
from kunbench.telemetry import Telemetry, merge_summaries

QUICK_DATA_PRESET = "tiny"


def quick_data_sets(train_rows: int, eval_rows: int) -> dict[str, Any]:
    """Generator overrides for a reduced dataset of exactly `train_rows` + `eval_rows` rows."""
    rows = train_rows + eval_rows
    return {"rows": rows, "eval_fraction": eval_rows / rows}


# Reduced-run datasets (`tiny` generator preset), generated once per size and cached. Sized in
# fresh rows, not passes: every model sees each row once, and a second pass is not new data.
# 8,192 eval rows: expected NE has no label noise, so the eval-row bootstrap of a paired delta is
# already small there (more eval rows would buy little and cost a forward pass per model).
QUICK_EVAL_ROWS = 8192
# ablation, ne, qps, mfu: 64k train rows. At the old 24k the tiny Kunlun closed ~0.03 of the
# expected gap (one pass at lr 3e-3), so its ablation deltas compared near-untrained models; at 64k
# it closes ~0.15 and the whole ablation (13 trained rows + throughput) took 7 minutes on one core
# of a busy 2-core host.
QUICK_TRAIN_ROWS = 65536
QUICK_DATA_SETS = quick_data_sets(QUICK_TRAIN_ROWS, QUICK_EVAL_ROWS)
# scaling: 15 models (3 backends x 5 widths, 1/4x to 4x the tiny preset), one pass each, each at
# lr x width^-0.5 (suites/scaling.py). At 160k rows the suite takes ~9 minutes on 2 cores and
# Wukong's and InterFormer's fits resolve (R^2 0.95 and 0.82). Kunlun's 4x stays behind its 2x, and
# twice the rows do not change that (320k: expected NE 0.9270 at 4x, 0.9184 at 2x), so the
# budget stays here.
SCALING_TRAIN_ROWS = 163840
QUICK_DATA_SETS_BY_SUITE = {"scaling": quick_data_sets(SCALING_TRAIN_ROWS, QUICK_EVAL_ROWS),
                            # selfcheck reads only the schema and length laws: a few `small` rows
                            "selfcheck": quick_data_sets(2048, 512)}
QUICK_DATA_PRESET_BY_SUITE = {"selfcheck": "small"}
FULL_DATA_PRESET = "small"
QUICK_BACKEND_PRESET = "tiny"
QUICK_TRAIN = {"batch_size": 256, "eval_batch_size": 1024, "lr": 3e-3, "timing_warmup_steps": 3}
DEFAULT_BACKEND_ORDER = ("interformer", "wukong", "kunlun")



# ---- options and context -------------------------------------------------------------------------
@dataclass
class RunOptions:
    suites: list[str]
    backends: list[str] | None = None
    preset: str | None = None
    data: Path | None = None
    device: str = "auto"
    dtype: str | None = None
    repeat: int | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    full: bool = False
    write: bool = True
    show_progress: bool = False
    notes: list[str] = field(default_factory=list)  # run-level notes every result document carries
    compile: bool = False  # torch.compile the measured / trained steps


@dataclass
class SuiteContext:
    opts: RunOptions
    suite: str
    log: Callable[[str], None] = lambda msg: None
    console: Any = None
    dist: Any = None  # kunbench.train.distributed.DistContext, one per process for all suites
    windows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _dataset: Path | None = None
    _manifest: Any = None  # the dataset's Manifest, read once
    _routed: dict[str, dict[str, Any]] | None = None
    cuda_dtype: str = "fp32"  # the suite's own default on a GPU (SuiteSpec.cuda_dtype)

    # ---- device / dtype -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def dtype(self) -> str:
        chosen = self.opts.dtype or self.train_sets.get("dtype")
        if chosen is not None:
            return str(chosen)
        return self.cuda_dtype if self.cuda_dtype != "fp32" and self.device.type == "cuda" else "fp32"

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def repeats(self, default: int) -> int:
        return self.opts.repeat if self.opts.repeat is not None else default

    @property
    def full(self) -> bool:
        return self.opts.full

    # ---- --set routing --------------------------------------------------------------------------
    @property
    def routed(self) -> dict[str, dict[str, Any]]:
        if self._routed is None:
            self._routed = route_sets(self.opts.sets)
        return self._routed

    @property
    def train_sets(self) -> dict[str, Any]:
        return self.routed.get("train", {})

    @property
    def data_sets(self) -> dict[str, Any]:
        return self.routed.get("data", {})

    def suite_option(self, key: str, default: Any) -> Any:
        return self.routed.get(f"suite:{self.suite}", {}).get(key, default)

    def number_option(self, key: str, default: float, *, integer: bool = False, minimum: float = 0.0,
                      maximum: float | None = None, strict: bool = True) -> Any:
        """A numeric `--set SUITE.KEY`: finite, an integer when asked, above `minimum` (at least it
        when not `strict`) and at most `maximum`; anything else is one line naming the option."""
        raw = self.suite_option(key, default)
        name = f"{self.suite}.{key}"
        try:
            value = float(raw)
            ok = math.isfinite(value) and (not integer or value == int(value)) and not isinstance(raw, bool)
        except (TypeError, ValueError):
            ok = False
        ok = ok and (value > minimum if strict else value >= minimum) and (maximum is None or value <= maximum)
        if not ok:
            kind = "an integer" if integer else "a finite number"
            bound = f"{'>' if strict else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
            raise KunbenchError(f"{name} must be {kind} {bound}, got {raw!r}")
        return int(value) if integer else value

    def bool_option(self, key: str, default: bool) -> bool:
        """A yes/no `--set SUITE.KEY`: true/false, on/off, yes/no or 1/0; anything else is one line
        (a typo must not flip a switch)."""
        raw = self.suite_option(key, default)
        text = str(raw).strip().lower()
        if text in ("true", "on", "yes", "1"):
            return True
        if text in ("false", "off", "no", "0"):
            return False
        raise KunbenchError(f"{self.suite}.{key} must be true or false, got {raw!r}")

    def backend_sets(self, backend: str) -> dict[str, Any]:
        r = self.routed
        return {**r.get("all_backends", {}), **r.get(f"backend:{backend}", {})}

    def backends(self, default: Iterable[str] | None = None) -> list[str]:
        from kunbench.backends.registry import available_backends

        if self.opts.backends:
            return list(dict.fromkeys(self.opts.backends))  # a backend named twice runs once
        avail = available_backends()
        order = list(default) if default is not None else list(DEFAULT_BACKEND_ORDER)
        chosen = [b for b in order if b in avail]
        if default is None:  # plug-ins too, but not the baselines that run only when named
            from kunbench.backends.registry import get_backend

            chosen += [b for b in avail if b not in chosen and get_backend(b).in_default_runs]
        return chosen

    def preset_for(self, spec) -> str:
        """--preset, else `tiny` in the reduced configuration (if the backend has it), else its default."""
        if self.opts.preset:
            return self.opts.preset
        if not self.full and QUICK_BACKEND_PRESET in spec.presets:
            return QUICK_BACKEND_PRESET
        return spec.default_preset

    def train_config(self, **explicit: Any):
        from kunbench.train.runner import make_train_config

        base = {} if self.full else dict(QUICK_TRAIN)
        base.update(self.train_sets)
        base["dtype"] = self.dtype  # --dtype, train.dtype, or the suite's own default on a GPU
        if self.opts.compile:
            base["compile"] = True
        base.update({k: v for k, v in explicit.items() if v is not None})
        return make_train_config(base)

    # ---- dataset ----------------------------------------------------------------------------------
    def dataset(self) -> Path:
        if self._dataset is not None:
            return self._dataset
        if self.opts.data is not None:
            if self.data_sets:
                raise KunbenchError(f"--set data.{next(iter(self.data_sets))}: data.KEY configures the dataset a suite "
                                    f"generates by default; with --data it would change nothing")
            path = Path(self.opts.data)
            if not (path / "manifest.json").is_file():
                raise KunbenchError(f"--data {path}: no dataset here (no manifest.json)")
            self._dataset = path
            return path
        from kunbench.cache import default_dataset

        preset = FULL_DATA_PRESET if self.full else QUICK_DATA_PRESET_BY_SUITE.get(self.suite, QUICK_DATA_PRESET)
        sets = {} if self.full else dict(QUICK_DATA_SETS_BY_SUITE.get(self.suite, QUICK_DATA_SETS))
        sets.update(self.data_sets)
        ctx = self.dist
        if ctx.is_main:
            path = default_dataset(preset, sets=sets or None, log=self.log)
        ctx.barrier()
        if not ctx.is_main:
            path = default_dataset(preset, sets=sets or None)
        self._dataset = path
        return path

    def dataset_info(self) -> dict[str, Any]:
        from kunbench.data.manifest import manifest_fingerprint

        root = self.dataset()
        m = self.manifest()
        return {"path": str(Path(root).resolve()), "manifest_fingerprint": manifest_fingerprint(root),
                "preset": (m.data.get("config") or {}).get("preset"),
                "train_rows": m.split_rows("train") if "train" in m.splits else None,
                "eval_rows": m.split_rows("eval") if "eval" in m.splits else None,
                "eval_oracle_ne": (m.splits.get("eval") or {}).get("oracle_ne"), "label_source": m.label_source}

    def oracle_notes(self) -> list[str]:
        """Table notes on what the oracle-derived columns mean for this dataset (or why they are n/a)."""
        m = self.manifest()
        if not m.has_oracle:
            return [f"no oracle in this dataset (labels: {m.label_source}): oracle NE, gap closed and expected NE "
                    "are n/a, and rows compare on NE of the observed labels"]
        return [f"gap closed = (1 - NE) / (1 - oracle NE); oracle = {m.oracle_source}",
                "exp. NE / exp. gap: p_true as soft labels, i.e. against unlimited fresh labels on these eval rows "
                "(no label-sampling noise)"]

    def manifest(self):
        root = self.dataset()
        if self._manifest is None or self._manifest.root != root:  # a copy may point at another dataset
            from kunbench.data.manifest import load_manifest

            self._manifest = load_manifest(root)
        return self._manifest

    def schema(self):
        return self.manifest().schema

    # ---- telemetry ----------------------------------------------------------------------------------
    def window(self, label: str) -> "Window":
        return Window(self, label)

    def telemetry_summary(self) -> dict[str, Any] | None:
        return merge_summaries(self.windows)


class Window:
    """A measured window: telemetry sampled around it, its summary kept on the context."""

    def __init__(self, ctx: SuiteContext, label: str):
        self.ctx = ctx
        self.tel = Telemetry(ctx.device, label=label)
        self.summary: dict[str, Any] | None = None

    def __enter__(self) -> "Window":
        self.tel.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.tel.__exit__(*exc)
        self.summary = self.tel.summary()
        self.ctx.windows.append(self.summary)


def route_sets(sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split `--set` keys by their first dotted part (see module docstring)."""
    from kunbench.backends.registry import available_backends
    from kunbench.suites.registry import available_suites

    suites = set(available_suites())
    backends = set(available_backends())
    out: dict[str, dict[str, Any]] = {}
    for key, value in (sets or {}).items():
        head, dot, rest = key.partition(".")
        if dot and head == "train":
            out.setdefault("train", {})[rest] = value
        elif dot and head == "data":
            out.setdefault("data", {})[rest] = value
        elif dot and head in suites:
            out.setdefault(f"suite:{head}", {})[rest] = value
        elif dot and head in backends:
            out.setdefault(f"backend:{head}", {})[rest] = value
        else:
            out.setdefault("all_backends", {})[key] = value
    return out


def str_list(value: Any, key: str, allowed: Iterable[str] | None = None) -> list[str]:
    """A list of names from a --set value: a TOML list, or a string like `a,b` or `[a, b]` (bare words)."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [x.strip().strip("'\"") for x in str(value).strip().strip("[]").split(",")]
    items = [x for x in items if x]
    if allowed is not None:
        allowed = list(allowed)
        bad = [x for x in items if x not in allowed]
        if bad:
            raise KunbenchError(f"{key}: unknown value {bad[0]!r} (choose from {', '.join(allowed)})")
    if not items:
        raise KunbenchError(f"{key}: needs at least one value")
    return items


def int_list(value: Any, key: str) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else str(value).strip().strip("[]").split(",")
    try:
        out = [int(x) for x in items if str(x).strip()]
    except (TypeError, ValueError):
        raise KunbenchError(f"{key}: expected integers, got {value!r}") from None
    if not out or any(x < 1 for x in out):
        raise KunbenchError(f"{key}: expected positive integers, got {value!r}")
    return out


# ---- backends --------------------------------------------------------------------------------------
@dataclass
class Built:
    name: str
    spec: Any
    preset: str
    config: Any
    sets: dict[str, Any]


def resolve_backend(ctx: SuiteContext, name: str, extra_sets: dict[str, Any] | None = None,
                    preset: str | None = None) -> Built:
    from kunbench.backends.registry import get_backend

    spec = get_backend(name)
    sets = {**ctx.backend_sets(name), **(extra_sets or {})}
    p = preset or ctx.preset_for(spec)
    return Built(name, spec, p, spec.make_config(p, sets), sets)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(ctx: SuiteContext, built: Built, seed: int = 0) -> torch.nn.Module:
    from kunbench.train.runner import seed_everything

    seed_everything(seed)
    return built.spec.build(built.config, ctx.schema()).to(ctx.device)


def world_note(ctx: SuiteContext) -> str:
    return (f"device {ctx.device}, dtype {ctx.dtype}, world size {ctx.world_size}"
            + ("" if ctx.world_size == 1 else " (torchrun DDP; examples/s are global over ranks)"))
