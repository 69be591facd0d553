"""What every suite shares: the run context (options, `--set` routing, dataset, device, telemetry
windows), training through kunbench.train.runner, per-row eval predictions, throughput timing,
device peak FLOP/s, bootstrap noise and the NE-vs-compute fit.

Budgets. The default run (no `--full`) is the reduced configuration: the backends' `tiny` presets,
one pass at batch 256 with dense lr 3e-3, short throughput windows, and a `tiny`-preset dataset
generated once and cached: 64k train + 8k eval rows, 160k + 8k for scaling (QUICK_DATA_SETS and
QUICK_DATA_SETS_BY_SUITE say why these sizes). The aim is the ablation within ~10 minutes and
scaling within ~20 on a 2-core CPU. `--full` switches to the `small` dataset preset, the backends'
default presets, the default training loop and longer windows. Either way every knob is a `--set`
away (`data.rows=...`, `data.eval_fraction=...`).

Quality is compared on expected NE (the generator's p_true as soft labels, see
kunbench.train.evaluate): at a 3 % CTR the clicks drawn for a few thousand eval rows move NE more
than the differences the ablation and scaling suites look for. Per-row predictions come back with
p_true (`predict_eval`), so `bootstrap_expected_ne` can pair two models on the same rows.

`--set` routing (also for `[section]` tables of a `--config` TOML file):
    train.KEY=V      the training loop (TrainConfig: steps, batch_size, lr, seed, ...)
    data.KEY=V       the generator config of the default dataset (rows, eval_fraction, ...)
    SUITE.KEY=V      a suite option (e.g. qps.batch_sizes=[64,256], ne.baseline=wukong)
    BACKEND.KEY=V    one backend's config (e.g. kunlun.compskip=off)
    KEY=V            every backend's config
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from kunbench.backends.common import kernels_of
from kunbench.errors import KunbenchError
from kunbench.results import measurement
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
# scaling: 15 models (3 backends x 5 widths, 1/4x to 4x the tiny preset), one pass each; the rows
# are what fits ~20 minutes. The widest sizes are still data-starved at this size: measured on the
# tiny preset (one seed, expected NE), at 128k and 256k train rows the 4x width of every backend tied
# or lost against 2x, which bends ln C -> NE; doubling 128k -> 256k lifted Wukong's R^2 from 0.75
# to 0.87 and InterFormer's from 0.67 to 0.74, but 256k took ~25 minutes for InterFormer and Kunlun
# alone on one busy core. At this size the whole suite took 16.5 minutes there (R^2: Wukong 0.91,
# InterFormer 0.77, Kunlun 0.54). More rows help the fit; this budget cannot buy enough of them.
SCALING_TRAIN_ROWS = 163840
QUICK_DATA_SETS_BY_SUITE = {"scaling": quick_data_sets(SCALING_TRAIN_ROWS, QUICK_EVAL_ROWS),
                            # selfcheck reads only the schema and length laws: a few `small` rows
                            "selfcheck": quick_data_sets(2048, 512)}
QUICK_DATA_PRESET_BY_SUITE = {"selfcheck": "small"}
FULL_DATA_PRESET = "small"
QUICK_BACKEND_PRESET = "tiny"
QUICK_TRAIN = {"batch_size": 256, "eval_batch_size": 1024, "lr": 3e-3, "timing_warmup_steps": 3}
DEFAULT_BACKEND_ORDER = ("interformer", "wukong", "kunlun")

# dense peak TFLOP/s (no sparsity) by dtype, from the vendors' data sheets


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
    _routed: dict[str, dict[str, Any]] | None = None

    # ---- device / dtype -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def dtype(self) -> str:
        return self.opts.dtype or str(self.train_sets.get("dtype", "fp32"))

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

    def backend_sets(self, backend: str) -> dict[str, Any]:
        r = self.routed
        return {**r.get("all_backends", {}), **r.get(f"backend:{backend}", {})}

    def backends(self, default: Iterable[str] | None = None) -> list[str]:
        from kunbench.backends.registry import available_backends

        if self.opts.backends:
            return list(self.opts.backends)
        avail = available_backends()
        order = list(default) if default is not None else list(DEFAULT_BACKEND_ORDER)
        chosen = [b for b in order if b in avail]
        chosen += [b for b in avail if b not in chosen and default is None]
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
        if self.opts.dtype:
            base["dtype"] = self.opts.dtype
        if self.opts.compile:
            base["compile"] = True
        base.update({k: v for k, v in explicit.items() if v is not None})
        return make_train_config(base)

    # ---- dataset ----------------------------------------------------------------------------------
    def dataset(self) -> Path:
        if self._dataset is not None:
            return self._dataset
        if self.opts.data is not None:
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
        from kunbench.data.manifest import load_manifest
        from kunbench.train.results import manifest_fingerprint

        root = self.dataset()
        m = load_manifest(root)
        return {"path": str(Path(root).resolve()), "manifest_fingerprint": manifest_fingerprint(root),
                "preset": (m.data.get("config") or {}).get("preset"),
                "train_rows": m.split_rows("train") if "train" in m.splits else None,
                "eval_rows": m.split_rows("eval") if "eval" in m.splits else None,
                "eval_oracle_ne": (m.splits.get("eval") or {}).get("oracle_ne")}

    def schema(self):
        from kunbench.data.manifest import load_manifest

        return load_manifest(self.dataset()).schema

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


# ---- statistics ----------------------------------------------------------------------------------
def std(xs: Iterable[float]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(x)]
    return statistics.stdev(vals) if len(vals) >= 2 else None


def mean(xs: Iterable[float]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else None


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else None


def ne_of(labels: np.ndarray, probs: np.ndarray) -> float:
    from kunbench.metrics import LogLossSums

    s = LogLossSums()
    s.add(labels, probs)
    return s.ne


def bootstrap_ne(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray | None = None,
                 n_boot: int = 200, seed: int = 0) -> dict[str, float | None]:
    """Bootstrap over eval rows: std of NE(a), and (with b) std of the paired relative change
    100 * (NE(a) - NE(b)) / NE(b), resampling the same rows for both models. Also the point values
    on all rows (`ne`, `rel_pct`). `labels` may be soft (see bootstrap_expected_ne)."""
    from kunbench.metrics import EPS

    y = np.asarray(labels, dtype=np.float64)
    n = y.size
    if n < 2:
        return {"ne": None, "ne_std": None, "rel_pct": None, "rel_pct_std": None}
    rng = np.random.default_rng(seed)

    def losses(p):
        p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
        return -(y * np.log(p) + (1 - y) * np.log1p(-p))

    def entropy(base: float) -> float:
        return -(base * math.log(base) + (1 - base) * math.log1p(-base))

    la = losses(probs_a)
    lb = losses(probs_b) if probs_b is not None else None
    base_all = y.mean()
    point_a = point_rel = None
    if 0 < base_all < 1:
        point_a = float(la.mean() / entropy(base_all))
        if lb is not None and lb.mean() > 0:
            point_rel = float(100.0 * (la.mean() - lb.mean()) / lb.mean())
    ne_a, rel = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        base = y[idx].sum() / n
        if base <= 0 or base >= 1:
            continue
        h = entropy(base)
        a = la[idx].mean() / h
        ne_a.append(a)
        if lb is not None:
            b = lb[idx].mean() / h
            rel.append(100.0 * (a - b) / b)
    return {"ne": point_a, "ne_std": std(ne_a), "rel_pct": point_rel if lb is not None else None,
            "rel_pct_std": std(rel) if lb is not None else None}


def bootstrap_expected_ne(p_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray | None = None,
                          n_boot: int = 200, seed: int = 0) -> dict[str, float | None]:
    """bootstrap_ne on *expected* NE: p_true as soft labels, so no clicks are drawn and the spread
    left is only which eval rows happened to be sampled. At a 3 % CTR the sampled-label noise
    swamps the NE differences between ablation rows and between scaling sizes; the paired
    expected-NE change between two models on the same rows is far tighter. Training-seed
    variance is not in this spread (use --repeat for that)."""
    return bootstrap_ne(p_true, probs_a, probs_b, n_boot=n_boot, seed=seed)


def same_eval_rows(a: "TrainedRun", b: "TrainedRun") -> bool:
    """Whether two runs' predictions are on the same eval rows in the same order (pairable)."""
    if len(a.labels) != len(b.labels) or not np.array_equal(a.labels, b.labels):
        return False
    if (a.p_true is None) != (b.p_true is None):
        return False
    return a.p_true is None or np.array_equal(a.p_true, b.p_true)


# t quantiles (two-sided 95 %) for small degrees of freedom; normal beyond the table
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df  # close to t for df > 30


def fit_log_compute(flops: list[float], ne: list[float]) -> dict[str, Any]:
    """Least squares NE(C) = NE_0 - eta ln(C / C_0), C_0 = geometric mean of C.

    Returns eta, its standard error and 95 % t interval (n - 2 degrees of freedom), NE_0, C_0, R^2."""
    pts = [(float(c), float(v)) for c, v in zip(flops, ne) if c and c > 0 and v is not None and math.isfinite(v)]
    n = len(pts)
    if n < 2:
        return {"n": n, "eta": None, "reason": "fewer than two points"}
    x = np.log(np.array([c for c, _ in pts]))
    y = np.array([v for _, v in pts])
    c0 = float(np.exp(x.mean()))
    xc = x - x.mean()
    sxx = float((xc ** 2).sum())
    if sxx <= 0:
        return {"n": n, "eta": None, "reason": "all points have the same FLOPs"}
    slope = float((xc * (y - y.mean())).sum() / sxx)
    ne0 = float(y.mean())
    resid = y - (ne0 + slope * xc)
    ss_res = float((resid ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    out = {"n": n, "eta": -slope, "ne0": ne0, "c0": c0, "r2": r2,
           "decades": float((x.max() - x.min()) / math.log(10))}
    if n > 2:
        se = math.sqrt(ss_res / (n - 2) / sxx)
        t = t975(n - 2)
        out.update({"eta_se": se, "eta_ci": [-slope - t * se, -slope + t * se]})
    else:
        out.update({"eta_se": None, "eta_ci": None})
    return out


# ---- devices and peaks ---------------------------------------------------------------------------
_CPU_PEAK: dict[int, dict[str, Any]] = {}  # by torch thread count: measured once per process


def cpu_peak_flops(n: int = 1536, min_seconds: float = 1.5, min_reps: int = 8) -> dict[str, Any]:
    """Peak fp32 FLOP/s of this CPU, measured once per process: the best of n x n GEMMs timed for
    at least `min_seconds`. A short calibration (a handful of ~20 ms GEMMs) caught frequency ramps
    and neighbours' load and moved MFU by a third between runs; a longer window's best is stable."""
    threads = torch.get_num_threads()
    if threads in _CPU_PEAK:
        return _CPU_PEAK[threads]
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)  # warm-up (thread pool, caches, clock ramp)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    best = min(times)
    median = sorted(times)[len(times) // 2]
    _CPU_PEAK[threads] = ({"flops_per_s": 2.0 * n ** 3 / best, "median_flops_per_s": 2.0 * n ** 3 / median,
                      "source": f"measured: best of {len(times)} fp32 {n}x{n} GEMMs on "
                      f"{threads} threads (median {2.0 * n ** 3 / median / 1e9:.1f} GFLOP/s)",
                      "dtype": "fp32"})
    return _CPU_PEAK[threads]


def gpu_peak_flops(name: str, dtype: str) -> dict[str, Any]:
    """Dense peak for a GPU name and run dtype: bf16 -> bf16; fp32 -> tf32 when torch lets matmuls use
    TF32, else fp32. Unknown GPUs: flops_per_s None and a reason (never a guess)."""
    from kunbench.peaks import gpu_peak_tflops

    key = "bf16" if dtype == "bf16" else ("tf32" if _tf32_enabled() else "fp32")
    tflops, source = gpu_peak_tflops(name, key)
    return {"flops_per_s": None if tflops is None else tflops * 1e12, "source": source, "dtype": key}


def _tf32_enabled() -> bool:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"
    except Exception:
        return False


def device_peak(device: torch.device, dtype: str) -> dict[str, Any]:
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    return cpu_peak_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


# ---- training and evaluation -------------------------------------------------------------------------
@dataclass
class TrainedRun:
    backend: str
    preset: str
    config: Any
    seed: int
    train: Any  # TrainStats
    labels: np.ndarray
    probs: np.ndarray
    p_true: np.ndarray | None
    flops_per_example: float | None
    eval_seconds: float
    params: int
    telemetry: dict[str, Any] | None
    train_config: Any

    @property
    def ne(self) -> float:
        return ne_of(self.labels, self.probs)

    @property
    def expected_ne(self) -> float | None:
        """NE against p_true as soft labels (None when the data has no p_true)."""
        return ne_of(self.p_true, self.probs) if self.p_true is not None else None

    def metrics(self) -> dict[str, float | None]:
        from kunbench.metrics import LogLossSums, auc, gap_closed

        s = LogLossSums()
        s.add(self.labels, self.probs)
        out = {"ne": s.ne, "auc": auc(self.labels, self.probs), "logloss": s.logloss,
               "calibration": s.calibration, "base_rate": s.base_rate, "oracle_ne": None, "gap_closed": None,
               "expected_ne": None, "expected_gap_closed": None}
        if self.p_true is not None:
            o = LogLossSums()
            o.add(self.labels, self.p_true)
            out["oracle_ne"] = o.ne
            out["gap_closed"] = gap_closed(s.ne, o.ne)
            # p_true as soft labels: no label-sampling noise (kunbench.train.evaluate)
            es, eo = LogLossSums(), LogLossSums()
            es.add(self.p_true, self.probs)
            eo.add(self.p_true, self.p_true)
            out["expected_ne"] = es.ne
            out["expected_gap_closed"] = gap_closed(es.ne, eo.ne)
        return out


@torch.inference_mode()
def predict_eval(ctx: SuiteContext, model: torch.nn.Module, built: Built, batch_size: int,
                 max_lengths: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float | None, float]:
    """Per-row eval labels, probabilities and p_true (gathered over ranks), mean forward FLOPs/example
    and the forward wall time, on this run's eval split."""
    from kunbench.train.evaluate import autocast_context
    from kunbench.train.runner import open_batches

    inner = getattr(model, "module", model)
    was = inner.training
    inner.eval()
    dctx = ctx.dist
    schema = ctx.schema()
    ys, ps, pts = [], [], []
    has_pt = True
    fsum, fn = 0.0, 0
    seconds = 0.0
    try:
        for batch in open_batches(ctx.dataset(), "eval", batch_size, dctx, include_p_true=True,
                                  max_lengths=max_lengths):
            f = built.spec.flops_per_example(built.config, schema, batch)
            fsum += float(torch.as_tensor(f, dtype=torch.float64).sum())
            fn += batch.batch_size
            sync(dctx.device)
            t0 = time.perf_counter()
            b = batch.to(dctx.device, non_blocking=True)
            with autocast_context(dctx.device, ctx.dtype):
                logits = inner(b)
            probs = torch.sigmoid(logits.detach().double()).cpu().numpy()
            seconds += time.perf_counter() - t0
            ys.append(batch.labels.detach().cpu().numpy().astype(np.float64))
            ps.append(probs)
            if batch.p_true is None:
                has_pt = False
            else:
                pts.append(batch.p_true.detach().cpu().numpy().astype(np.float64))
    finally:
        inner.train(was)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    y = np.concatenate(dctx.all_gather_arrays(cat(ys)))
    p = np.concatenate(dctx.all_gather_arrays(cat(ps)))
    has_pt = dctx.all_reduce_min(1.0 if has_pt else 0.0) > 0
    pt = np.concatenate(dctx.all_gather_arrays(cat(pts))) if has_pt else None
    v = dctx.all_reduce_sum([fsum, float(fn)])
    seconds = dctx.all_reduce_max(seconds)
    return y, p, pt, (float(v[0] / v[1]) if v[1] else None), seconds


def train_and_predict(ctx: SuiteContext, built: Built, seed: int = 0, label: str | None = None) -> TrainedRun:
    """One `kunbench train` run (kunbench.train.runner, not written) on the suite's dataset, then
    per-row predictions on the eval split for NE, bootstrap noise and paired deltas."""
    from kunbench.train.runner import backend_max_lengths, run_training

    cfg = ctx.train_config(seed=seed)
    data = ctx.dataset()
    # run_training shuts down a process group it did not create only if told it created it
    run_ctx = dataclasses.replace(ctx.dist, initialized_here=False)
    with ctx.window(label or f"train {built.name}") as win:
        run = run_training(built.name, data, preset=built.preset, sets=built.sets, train_cfg=cfg,
                           device=str(ctx.device), write=False, ctx=run_ctx, spec=built.spec,
                           eval_max_batches=0, show_progress=ctx.opts.show_progress and ctx.is_main,
                           console=ctx.console, log=ctx.log)
    model = run.model
    y, p, pt, flops, secs = predict_eval(ctx, model, built, cfg.eval_batch_size,
                                         max_lengths=backend_max_lengths(built.config, ctx.schema()))
    return TrainedRun(built.name, built.preset, built.config, seed, run.train, y, p, pt, flops, secs,
                      param_count(model), win.summary, cfg)


# ---- throughput ------------------------------------------------------------------------------------------
@dataclass
class Throughput:
    mode: str  # "infer" | "train"
    batch_size: int
    window_qps: list[float]  # examples/s per window (global over ranks)
    latencies_ms: list[float]  # per iteration (batch latency)
    telemetry: dict[str, Any] | None
    flops_per_example: float | None
    iters_per_window: int
    compile_s: float = 0.0  # --compile: warm-up steps that compiled (not in any window)
    ops: dict[str, int] = field(default_factory=dict)  # per step: aten_ops (+ cuda_launches on a GPU)
    kernels: dict[str, str] = field(default_factory=dict)  # the implementation each switchable op ran

    @property
    def qps(self) -> float:
        return float(statistics.median(self.window_qps))

    @property
    def step_s(self) -> float:
        return float(statistics.median(self.latencies_ms)) / 1000.0


def synthetic_source(ctx: SuiteContext, built: Built, batch_size: int, seed: int = 0):
    """In-memory on-device batches shaped like the suite's dataset (the input pipeline is not measured)."""
    from kunbench.data.synthetic import SyntheticBatches
    from kunbench.train.runner import backend_max_lengths

    return SyntheticBatches.from_manifest(ctx.dataset(), batch_size=batch_size, device=ctx.device, seed=seed,
                                          pool_size=2, max_lengths=backend_max_lengths(built.config, ctx.schema()))


class ThroughputProbe:
    """Examples/s of one (model, mode, batch size), one measured window at a time.

    Set-up and `warmup` iterations happen at construction; each `window()` call measures one window
    of at least `min_window_s` seconds (the iteration count is fixed by the first window, so later
    windows repeat the same work). Probes of several models can be interleaved window by window, so
    slow drifts of the machine (clocks, other processes) spread over all of them instead of biasing
    whichever ran last.

    On CUDA each iteration is bracketed by CUDA events and the window by synchronize, so asynchronous
    launches are never timed with a bare clock. train mode = forward, BCE loss, backward, dense grad
    clipping and both optimizers' steps (kunbench.train.optim), under DDP when the run is distributed
    (then the iteration count is agreed across ranks up front, since every step all-reduces)."""

    def __init__(self, ctx: SuiteContext, built: Built, model: torch.nn.Module, mode: str, batch_size: int, *,
                 min_window_s: float, warmup: int, max_iters: int = 10_000, label: str | None = None,
                 compile: bool | None = None):
        from kunbench.train.evaluate import autocast_context
        from kunbench.train.loop import wrap_ddp
        from kunbench.train.optim import Optimizers, has_sparse_embeddings, split_parameters

        if mode not in ("infer", "train"):
            raise KunbenchError(f"throughput mode must be infer or train, got {mode!r}")
        self.ctx, self.built, self.model, self.mode, self.batch_size = ctx, built, model, mode, batch_size
        self.min_window_s, self.max_iters = min_window_s, max_iters
        self.label = label or f"{mode} {built.name} bs={batch_size}"
        device = self.device = ctx.device
        src = synthetic_source(ctx, built, batch_size)
        self.pool = src.pool
        self.flops = float(torch.as_tensor(built.spec.flops_per_example(built.config, src.schema, self.pool[0]),
                                           dtype=torch.float64).mean())
        self.cuda = device.type == "cuda"
        self.window_qps: list[float] = []
        self.lat_ms: list[float] = []
        self.summaries: list[dict[str, Any]] = []
        dtype = ctx.dtype
        if mode == "infer":
            net = model

            def step(b):
                with torch.inference_mode(), autocast_context(device, dtype):
                    return net(b)
        else:
            cfg = ctx.train_config()
            groups = split_parameters(model)
            opts = Optimizers(groups, cfg, sparse_grads=has_sparse_embeddings(model))
            net = wrap_ddp(model, ctx.dist)
            counter = [0]

            def step(b):
                counter[0] += 1
                opts.set_step(counter[0])
                with autocast_context(device, dtype):
                    logits = net(b)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), b.labels.float())
                loss.backward()
                if cfg.clip_grad_norm is not None and groups.dense:
                    torch.nn.utils.clip_grad_norm_(groups.dense, cfg.clip_grad_norm, foreach=True)
                opts.step()
                opts.zero_grad()
                return loss
        compile = ctx.opts.compile if compile is None else compile
        if compile:
            from kunbench.train.compiled import compile_model

            net = compile_model(net)
        self._step = step
        self._set_mode()
        from kunbench.train.compiled import CompileClock

        clock = CompileClock()
        for i in range(max(warmup, 2 if compile else 0)):
            clock.start()
            t_w = time.perf_counter()
            step(self.pool[i % len(self.pool)])
            sync(device)
            clock.stop(time.perf_counter() - t_w)
        self.compile_s = clock.seconds
        sync(device)
        from kunbench.op_count import count_ops
        from kunbench.train.evaluate import autocast_dtype

        self.ops = count_ops(lambda: step(self.pool[0]), device)
        self.kernels = kernels_of(model, device, autocast_dtype(device, dtype))
        self.iters: int | None = None
        if ctx.world_size > 1:
            t_probe = time.perf_counter()
            for j in range(2):
                step(self.pool[j % len(self.pool)])
            sync(device)
            per_iter = max((time.perf_counter() - t_probe) / 2, 1e-9)
            self.iters = int(ctx.dist.all_reduce_max(float(min(max_iters, max(1, math.ceil(min_window_s / per_iter))))))

    def _set_mode(self) -> None:
        self.model.train(self.mode == "train")

    def window(self) -> float:
        self._set_mode()
        step, pool, device = self._step, self.pool, self.device
        with self.ctx.window(self.label) as win:
            events = []
            sync(device)
            t0 = time.perf_counter()
            i = 0
            while True:
                b = pool[i % len(pool)]
                if self.cuda:
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    step(b)
                    e.record()
                    events.append((s, e))
                else:
                    ts = time.perf_counter()
                    step(b)
                    self.lat_ms.append((time.perf_counter() - ts) * 1000.0)
                i += 1
                if self.iters is not None:
                    if i >= self.iters:
                        break
                elif time.perf_counter() - t0 >= self.min_window_s or i >= self.max_iters:
                    self.iters = i  # later windows repeat the same iteration count
                    break
            sync(device)
            elapsed = time.perf_counter() - t0
            if self.cuda:
                self.lat_ms += [s.elapsed_time(e) for s, e in events]
        self.summaries.append(win.summary)
        qps = i * self.batch_size * self.ctx.world_size / elapsed
        self.window_qps.append(qps)
        return qps

    def result(self) -> Throughput:
        if self.mode == "train":
            self.model.zero_grad(set_to_none=True)
        return Throughput(self.mode, self.batch_size, list(self.window_qps), list(self.lat_ms),
                          merge_summaries(self.summaries), self.flops, self.iters or 0, self.compile_s,
                          dict(self.ops), dict(self.kernels))


def measure_throughput(ctx: SuiteContext, built: Built, model: torch.nn.Module, mode: str, batch_size: int, *,
                       windows: int, min_window_s: float, warmup: int, max_iters: int = 10_000,
                       label: str | None = None) -> Throughput:
    """`windows` windows of one ThroughputProbe, back to back."""
    probe = ThroughputProbe(ctx, built, model, mode, batch_size, min_window_s=min_window_s, warmup=warmup,
                            max_iters=max_iters, label=label)
    for _ in range(windows):
        probe.window()
    return probe.result()


def throughput_measurements(suite: str, backend: str, variant: str, tp: Throughput,
                            peak: dict[str, Any] | None = None, world_size: int = 1,
                            **extra: Any) -> list[dict[str, Any]]:
    """QPS (and latency, MFU) measurements of a Throughput. Examples/s are global over ranks, so MFU
    divides by the peak of all `world_size` devices."""
    ms = [measurement(suite, backend, variant, f"{tp.mode}_qps", tp.qps, unit="ex/s", better="higher",
                      samples=tp.window_qps, spread_kind=f"std over {len(tp.window_qps)} windows",
                      telemetry=tp.telemetry, batch_size=tp.batch_size, **extra)]
    if tp.mode == "infer" and tp.latencies_ms:
        for q in (50, 99):
            ms.append(measurement(suite, backend, variant, f"latency_p{q}", percentile(tp.latencies_ms, q),
                                  unit="ms", better="lower", batch_size=tp.batch_size,
                                  spread_kind=f"over {len(tp.latencies_ms)} iterations", **extra))
    for key, n in tp.ops.items():
        ms.append(measurement(suite, backend, variant, f"{tp.mode}_{key}_per_step", float(n), unit="ops",
                              better="lower", batch_size=tp.batch_size, kernels=tp.kernels,
                              spread_kind="one profiled step", **extra))
    if tp.compile_s:
        ms.append(measurement(suite, backend, variant, f"{tp.mode}_compile_s", tp.compile_s, unit="s",
                              better="none", batch_size=tp.batch_size, **extra))
    if peak is not None and peak.get("flops_per_s") and tp.flops_per_example:
        mult = 3.0 if tp.mode == "train" else 1.0
        total_peak = peak["flops_per_s"] * world_size
        achieved = tp.flops_per_example * mult * tp.qps
        ms.append(measurement(suite, backend, variant, f"{tp.mode}_mfu_pct", 100.0 * achieved / total_peak,
                              unit="%", better="higher",
                              samples=[100.0 * tp.flops_per_example * mult * q / total_peak
                                       for q in tp.window_qps],
                              spread_kind=f"std over {len(tp.window_qps)} windows", batch_size=tp.batch_size,
                              flops_convention="training = 3 x forward" if mult == 3.0 else "forward",
                              peak_source=peak.get("source"), **extra))
    return ms


def build_model(ctx: SuiteContext, built: Built, seed: int = 0) -> torch.nn.Module:
    from kunbench.train.runner import seed_everything

    seed_everything(seed)
    return built.spec.build(built.config, ctx.schema()).to(ctx.device)


def world_note(ctx: SuiteContext) -> str:
    return (f"device {ctx.device}, dtype {ctx.dtype}, world size {ctx.world_size}"
            + ("" if ctx.world_size == 1 else " (torchrun DDP; examples/s are global over ranks)"))
