"""selfcheck: one short run that says whether this machine computes kunbench's numbers right, and
how fast. `kunbench selfcheck` (or `kunbench run --suite selfcheck`).

1. GDPA kernels against the reference on odd shapes (lengths 0 and 1, head widths and F that are
   not block multiples, a window): the models' padded op in its three modes and the public jagged
   op, forward and the three gradients. On a GPU the compiled Triton kernels in bf16, fp16 and
   fp32; on a CPU the Triton interpreter in fp32. The error is max |kernel - fp32 reference| /
   max |reference|, against a tolerance per dtype.
2. A kernel speed grid (the kernels suite on a few shapes): Triton vs eager vs torch.compile on a
   GPU; eager only on a CPU (triton needs CUDA, and compile time would dominate).
3. Per backend (default presets, in-memory batches shaped like `small`; bf16 autocast on a GPU
   unless `--dtype fp32`, float32 on a CPU): train and inference
   examples/s, MFU, ops per training step and the kernels that ran, over `--repeat` (3) rounds
   that each measure every backend in turn, so every backend's train ex/s, infer ex/s and train
   MFU also come as multiples of the baseline's from windows that ran side by side; then a
   `--compile` training step (compile time apart from examples/s) -- on a CPU with the tiny
   presets, whose compilation fits the time budget.

Steps 1 and 3 run the Triton kernels with their fixed blocks (autotuning every case would compile
about a thousand variants); the speed grid tunes. Everything it could not check is listed in the
notes and in the result's `unchecked`, and a step that fails is a row there, not the end of the run.
Options (selfcheck.KEY=V): batch_size (1024 GPU / 256 CPU), window_s (1.0), baseline (the
backend the ratios divide by; default the first backend), compile
(true; false skips step 3's compiled runs), kernels (true; false skips steps 1-2), budget_s (420 on
a GPU, 540 on a CPU: a compiled run that would start after this many seconds is skipped and listed
as not checked, so the whole check stays inside its 8 / 10 minutes).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import torch

from kunbench.results import measurement
from kunbench.hardware import device_peak
from kunbench.suites.context import SuiteContext, build_model, param_count, resolve_backend, world_note
from kunbench.errors import KunbenchError
from kunbench.suites.throughput import ThroughputProbe, paired_against, paired_columns, throughput_measurements
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "selfcheck"
# max |err| / max |ref| allowed per dtype: fp32 accumulates in the same order up to blocking; bf16
# keeps 8 mantissa bits (inputs, the activated scores and the outputs are rounded), fp16 11
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
CHECK_LENGTHS_GPU = [0, 1, 37, 130, 77, 256]
CHECK_LENGTHS_CPU = [0, 1, 17, 5]
SPEED_SHAPES = [
    dict(name="pffn_b256_l500", mode="pffn", batch=256, max_len=500, fill=0.5, heads=4, head_dim=128, f=256,
         activation="gelu"),
    dict(name="seed_b256_l500", mode="seed", batch=256, max_len=500, fill=0.5, heads=4, head_dim=128, seeds=64,
         activation="silu"),
    dict(name="self_window_b64_l1000", mode="self", batch=64, max_len=1000, fill=0.5, heads=4, head_dim=128,
         window=64, activation="silu"),
]


@contextlib.contextmanager
def _env(name: str, value: str | None):
    """Set one environment variable for the block (None: leave it as it is)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def tolerance(dtype: torch.dtype, cuda: bool) -> float:
    """On a GPU, `tl.dot` of float32 inputs runs in TF32 (10 mantissa bits) in every Triton
    version, while the reference multiplies in full float32: about 5e-4 on these shapes."""
    return 2e-3 if cuda and dtype == torch.float32 else TOLERANCE[dtype]


def _padded(lengths, t, heads, dh, g, device, dtype):
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).to(device)
    x = torch.randn(len(lengths), t, heads, dh, generator=g).to(device=device, dtype=dtype) * 0.5
    return x * mask[..., None, None], mask


def _relative_errors(fn, inputs, dtype) -> float:
    """max over the output and the input gradients of |kernel - fp32 reference| / max |reference|."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(leaves, "triton")
    ref_leaves = [t.detach().float().clone().requires_grad_() for t in inputs]
    ref = fn(ref_leaves, "torch")
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.device)
    got = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    want = torch.autograd.grad(ref, ref_leaves, grad)
    worst = 0.0
    for a, b in [(out.detach(), ref.detach()), *zip(got, want)]:
        scale = float(b.abs().max()) if b.numel() else 0.0
        if scale > 0:
            worst = max(worst, float((a.float() - b).abs().max()) / scale)
    return worst


def gdpa_checks(device: torch.device, log=None) -> list[dict[str, Any]]:
    """One row per (dtype, mode): the relative error and whether it is within tolerance.

    Correctness needs no tuning, so the kernels run untuned (autotuning every case would compile
    ~1,000 variants), and each head gets its own activation only in the first dtype (per-head
    activations compile one kernel per group); `log` gets each row as it is done."""
    from kunbench.backends.gdpa_ops import gdpa_pffn, gdpa_seed_pool, gdpa_self_attention
    from kunbench.kernels import gdpa

    cuda = device.type == "cuda"
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if cuda else [torch.float32]
    lengths = CHECK_LENGTHS_GPU if cuda else CHECK_LENGTHS_CPU
    heads, dh, f, seeds, window = (3, 72, 19, 7, 5) if cuda else (2, 24, 19, 7, 3)
    t = max(lengths) + 3
    rows = []
    with _env("TRITON_INTERPRET", None if cuda else "1"), _env("KUNBENCH_TRITON_AUTOTUNE", "0"):
        for dtype in dtypes:
            g = torch.Generator().manual_seed(0)
            q, mask = _padded(lengths, t, heads, dh, g, device, dtype)
            k, _ = _padded(lengths, t, heads, dh, g, device, dtype)
            v, _ = _padded(lengths, t, heads, dh, g, device, dtype)
            kf = (torch.randn(len(lengths), f, heads, dh, generator=g) * 0.5).to(device=device, dtype=dtype)
            vf = (torch.randn(len(lengths), f, heads, dh, generator=g) * 0.5).to(device=device, dtype=dtype)
            sd = (torch.randn(seeds, heads, dh, generator=g) * 0.5).to(device=device, dtype=dtype)
            acts = ["gelu", "silu", "gelu_tanh"][:heads] if dtype == dtypes[0] else ["silu"] * heads
            off = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
            cases = {
                "pffn": (lambda x, impl: gdpa_pffn(x[0], mask, x[1], x[2], activations=acts, scale=1 / 37,
                                                   impl=impl), [q, kf, vf]),
                "seed_pool": (lambda x, impl: gdpa_seed_pool(x[0], x[1], x[2], mask, activations=acts,
                                                             scale=torch.tensor(1 / 37, device=device), position="pre",
                                                             impl=impl), [sd, k, v]),
                "self_attention": (lambda x, impl: gdpa_self_attention(x[0], x[1], x[2], mask, activations=acts,
                                                                       scale=0.05, impl=impl), [q, k, v]),
                f"self_attention_w{window}": (lambda x, impl: gdpa_self_attention(
                    x[0], x[1], x[2], mask, activations=acts, scale=0.05, window=window, impl=impl), [q, k, v]),
                "jagged_op": (lambda x, impl: gdpa(x[0], x[1], x[2], q_offsets=off, kv_offsets=off, activation=acts,
                                                   window=window, implementation=impl),
                              [q[mask], k[mask], v[mask]]),
            }
            for mode, (fn, inputs) in cases.items():
                t0 = time.perf_counter()
                tol = tolerance(dtype, cuda)
                try:
                    err = _relative_errors(fn, inputs, dtype)
                    status = "pass" if err <= tol else "FAIL"
                except Exception as exc:  # a kernel that does not build or run is a failed check
                    err, status = None, f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                rows.append({"dtype": str(dtype).removeprefix("torch."), "mode": mode, "rel_err": err,
                             "tolerance": tol, "status": status,
                             "seconds": time.perf_counter() - t0,
                             "kernel": "triton" if cuda else "triton (interpreter)"})
                if log is not None:
                    log(f"selfcheck: gdpa {rows[-1]['dtype']} {mode}: {status}"
                        + (f" ({err:.2e})" if err is not None else ""))
    return rows


def speed_grid(device: torch.device) -> tuple[list[dict[str, Any]], list[str]]:
    from kunbench.suites.kernels import CPU_SHAPES, measure_grid

    cuda = device.type == "cuda"
    dtype = "bf16" if cuda else "fp32"
    rows = measure_grid(device, torch.bfloat16 if cuda else torch.float32, SPEED_SHAPES if cuda else CPU_SHAPES,
                        ("triton", "eager", "compile") if cuda else ("eager",), repeats=10 if cuda else 3,
                        peak_flops=device_peak(device, dtype).get("flops_per_s"))
    unchecked = [] if cuda else ["kernel speed of triton and torch.compile: needs a CUDA GPU (eager timed only)"]
    return rows, unchecked


def _failure(exc: Exception) -> str:
    return f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"


def _one_round(modes: dict[str, "ThroughputProbe"]) -> None:
    """One window per mode (a function, so no loop variable keeps a failed model alive)."""
    for probe in modes.values():
        probe.window()


def _compiled_run(ctx: SuiteContext, name: str, preset: str, row: dict[str, Any], batch_size: int,
                  window_s: float, peak: dict[str, Any]) -> list[dict[str, Any]]:
    """A `--compile` training run of `name` at `preset`: its figures go in `row`, its measurements
    come back (named `compiled_*`); the model is freed when this returns."""
    cuda = ctx.device.type == "cuda"
    cbuilt = resolve_backend(ctx, name, preset=preset)
    probe = ThroughputProbe(ctx, cbuilt, build_model(ctx, cbuilt), "train", batch_size, min_window_s=window_s,
                            warmup=3, label=f"selfcheck {name} compiled", compile=True)
    for _ in range(2):
        probe.window()
    tp = probe.result()
    row["compiled_preset"] = preset
    row["compile_s"] = tp.compile_s
    row["compiled_train_qps"] = tp.qps
    row["compiled_aten_ops"] = tp.ops.get("cuda_launches" if cuda else "aten_ops")
    return [dict(m, name="compiled_" + m["name"])
            for m in throughput_measurements(NAME, name, f"bs={batch_size} {preset}", tp, peak=peak,
                                             world_size=ctx.world_size)]


def backend_runs(ctx: SuiteContext, batch_size: int, window_s: float, windows: int, base: str | None,
                 compile_: bool, deadline: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Every backend built and warmed up first, then `windows` rounds that each measure one train
    and one infer window of every backend in turn (so the ratios to `base` pair windows that ran
    side by side), then a compiled training run per backend. A backend that fails (out of memory,
    a kernel that does not launch) becomes a FAIL row and leaves the rounds; the others go on."""
    from kunbench.backends.registry import get_backend

    cuda = ctx.device.type == "cuda"
    peak = device_peak(ctx.device, ctx.dtype)
    rows: dict[str, dict[str, Any]] = {}
    ms: list[dict[str, Any]] = []
    unchecked: list[str] = []
    built_of: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {}
    probes: dict[str, dict[str, ThroughputProbe]] = {}
    tps: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}

    def drop(name: str) -> None:
        """Free a failed backend's model (outside the `except` block: its traceback holds tensors)."""
        models.pop(name, None)
        probes.pop(name, None)
        if cuda:
            torch.cuda.empty_cache()

    for name in ctx.backends():
        # the backends' own presets (the sizes the README's figures use), unless --preset says otherwise
        built = built_of[name] = resolve_backend(ctx, name, preset=ctx.opts.preset or get_backend(name).default_preset)
        rows[name] = {"backend": name, "preset": built.preset}
        try:
            ctx.log(f"selfcheck: {name} bs={batch_size}: build and warm up ...")
            models[name] = build_model(ctx, built)
            rows[name]["params"] = param_count(models[name])
            probes[name] = {mode: ThroughputProbe(ctx, built, models[name], mode, batch_size, min_window_s=window_s,
                                                  warmup=3 if cuda else 2, label=f"selfcheck {name} {mode}",
                                                  compile=False)
                            for mode in ("train", "infer")}
        except Exception as exc:
            failed[name] = _failure(exc)
        if name in failed:
            drop(name)
    finished = dict.fromkeys(probes, 0)
    for i in range(windows):
        ctx.log(f"selfcheck: round {i + 1}/{windows} of {', '.join(probes) or 'no backend'} ...")
        for name in list(probes):
            try:
                _one_round(probes[name])
                finished[name] += 1
            except Exception as exc:
                failed[name] = f"{_failure(exc)} (in round {i + 1} of {windows})"
            if name in failed:  # keep the rounds it finished: a fault that poisons the device fails the rest too
                if finished[name]:
                    tps[name] = {mode: p.result(finished[name]) for mode, p in probes[name].items()}
                drop(name)
    for name, modes in probes.items():
        tps[name] = {mode: p.result() for mode, p in modes.items()}
    for name, by_mode in tps.items():
        row = rows[name]
        for mode, tp in by_mode.items():
            got = throughput_measurements(NAME, name, f"bs={batch_size}", tp, peak=peak, world_size=ctx.world_size)
            ms += got
            for m in got:
                row[m["name"]] = m["value"]
            row["flops"] = tp.flops_per_example
            row["kernels"] = ", ".join(f"{k}={v}" for k, v in tp.kernels.items()) or "-"
            if mode == "train" and cuda and "cuda_launches" not in tp.ops:
                unchecked.append(f"{name}: CUDA kernel launches per step (the profiler saw none: "
                                 "CUPTI may not be permitted here)")
    for name, why in failed.items():
        rows[name]["kernels"] = why
        kept = finished.get(name, 0)
        unchecked.append(f"{name} eager train/infer: {why}"
                         + (f"; its figures are from the {kept} round(s) before" if name in tps else ""))
        ctx.log(f"selfcheck: {name}: {why}")
    if base is not None and base in tps and len(tps) > 1:
        ms += paired_against(NAME, [rows[n] for n in tps], tps, base, f"bs={batch_size}")
    elif base is not None and base not in tps:
        unchecked.append(f"ratios to {base}: it has no measured round")
    models.clear()
    probes.clear()
    if cuda:
        torch.cuda.empty_cache()
    for name, row in rows.items() if compile_ else ():
        if time.perf_counter() > deadline:
            unchecked.append(f"{name} --compile: skipped, the time budget (selfcheck.budget_s) is spent")
            continue
        preset = built_of[name].preset if cuda else "tiny"
        ctx.log(f"selfcheck: {name} --compile train ({preset}) ...")
        try:
            ms += _compiled_run(ctx, name, preset, row, batch_size, window_s, peak)
        except Exception as exc:  # report and go on: the other backends still get checked
            row["compiled_preset"] = _failure(exc)
            unchecked.append(f"{name} --compile: {row['compiled_preset']}")
        if cuda:
            torch.cuda.empty_cache()
    if not compile_:
        unchecked.append("compiled runs: skipped (selfcheck.compile=false)")
    return list(rows.values()), ms, unchecked


def run(ctx: SuiteContext) -> SuiteOutput:
    cuda = ctx.device.type == "cuda"
    bs = ctx.number_option("batch_size", 1024 if cuda else 256, integer=True)
    window_s = ctx.number_option("window_s", 1.0, maximum=3600)
    compile_ = ctx.bool_option("compile", True)
    kernels = ctx.bool_option("kernels", True)
    budget_s = ctx.number_option("budget_s", 420.0 if cuda else 540.0, strict=False)
    windows = ctx.repeats(3)
    backends = ctx.backends()
    base = ctx.suite_option("baseline", None)
    if base is not None and str(base) not in backends:
        raise KunbenchError(f"selfcheck.baseline must be one of the backends run ({', '.join(backends)}), got {base!r}")
    base = None if len(backends) < 2 else str(base or backends[0])
    out = SuiteOutput(backends=backends, config={"batch_size": bs, "window_s": window_s, "windows": windows,
                                                 "baseline": base, "compile": compile_, "budget_s": budget_s})
    unchecked: list[str] = []
    t0 = time.perf_counter()
    if not cuda:
        unchecked.append("GDPA kernels in bf16 and fp16, and compiled (not interpreted) Triton: need a CUDA GPU")
    try:
        import triton  # noqa: F401
        have_triton = True
    except Exception:
        have_triton = False
        unchecked.append("GDPA kernel correctness: triton is not installed")
    if kernels and have_triton:
        ctx.log("selfcheck: GDPA kernels vs the reference ...")
        checks = gdpa_checks(ctx.device, log=ctx.log)
        out.tables.append({"title": "selfcheck: GDPA kernels vs the float32 reference (odd shapes, fwd + grads)",
                           "columns": [{"key": "dtype", "header": "dtype"}, {"key": "mode", "header": "mode"},
                                       {"key": "kernel", "header": "kernel"},
                                       {"key": "rel_err", "header": "max err / max |ref|", "fmt": ".2e"},
                                       {"key": "tolerance", "header": "tolerance", "fmt": ".0e"},
                                       {"key": "status", "header": "status"}],
                           "rows": checks, "label_columns": 2, "notes": []})
        for r in checks:
            out.measurements.append(measurement(NAME, "gdpa", f"{r['dtype']} {r['mode']}", "gdpa_rel_err",
                                                r["rel_err"], better="lower", status=r["status"]))
        out.extra["gdpa_checks"] = checks
        ctx.log("selfcheck: kernel speed grid ...")
        try:
            grid, missing = speed_grid(ctx.device)
        except Exception as exc:  # the backend checks still run
            grid, missing = [], [f"kernel speed grid: FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"]
            ctx.log(f"selfcheck: {missing[0]}")
        unchecked += missing
        out.extra["speed_grid"] = grid
        out.tables.append({"title": "selfcheck: GDPA speed (kernels suite grid)",
                           "columns": [{"key": "shape", "header": "shape"}, {"key": "impl", "header": "impl"},
                                       {"key": "pass", "header": "pass"},
                                       {"key": "latency_ms", "header": "ms", "fmt": ".3f"},
                                       {"key": "tflops", "header": "TFLOP/s", "fmt": ".3f"},
                                       {"key": "speedup_vs_eager", "header": "vs eager", "fmt": ".2f"},
                                       {"key": "max_rel_err", "header": "max rel err", "fmt": ".1e"},
                                       {"key": "status", "header": "status"}],
                           "rows": grid, "label_columns": 3, "notes": []})
    elif not kernels:
        unchecked.append("GDPA kernels: skipped (selfcheck.kernels=false)")
    # Triton autotuning would compile 8 block configs per kernel and shape here; the backend runs
    # use the fixed blocks (the kernels suite and `kunbench run --suite qps` tune)
    with _env("KUNBENCH_TRITON_AUTOTUNE", "0" if cuda else None):
        rows, ms, missing = backend_runs(ctx, bs, window_s, windows, base, compile_, deadline=t0 + budget_s)
    if cuda:
        unchecked.append("tuned Triton blocks in the backend runs: they ran the fixed untuned blocks")
    unchecked += missing
    out.measurements += ms
    cols = [{"key": "backend", "header": "backend"}, {"key": "preset", "header": "preset"},
            {"key": "train_qps", "header": "train ex/s", "fmt": ",.0f"},
            {"key": "infer_qps", "header": "infer ex/s", "fmt": ",.0f"},
            {"key": "train_mfu_pct", "header": "train MFU %", "fmt": ".2f"},
            {"key": "infer_mfu_pct", "header": "infer MFU %", "fmt": ".2f"},
            {"key": "train_cuda_launches_per_step" if cuda else "train_aten_ops_per_step",
             "header": ("CUDA launches" if cuda else "aten ops") + "/train step", "fmt": ",.0f"},
            *(paired_columns(base) if base is not None else []),
            {"key": "kernels", "header": "kernels"}]
    if compile_:
        cols += [{"key": "compiled_preset", "header": "compiled preset"},
                 {"key": "compile_s", "header": "compile s", "fmt": ".1f"},
                 {"key": "compiled_train_qps", "header": "compiled train ex/s", "fmt": ",.0f"},
                 {"key": "compiled_aten_ops", "header": "compiled ops/step", "fmt": ",.0f"}]
    out.tables.append({"title": f"selfcheck: backends at batch {bs} (in-memory batches)", "columns": cols,
                       "rows": rows, "label_columns": 2,
                       "notes": [world_note(ctx), f"peak: {device_peak(ctx.device, ctx.dtype).get('source')}"]})
    failed = [f"{r['dtype']} {r['mode']}" for r in out.extra.get("gdpa_checks", []) if r["status"] != "pass"]
    out.notes.append(f"selfcheck: {len(failed)} GDPA check(s) failed" + (f": {', '.join(failed)}" if failed else "")
                     + f"; {time.perf_counter() - t0:.0f} s")
    out.notes += [f"not checked: {u}" for u in unchecked]
    out.extra["unchecked"] = unchecked
    out.extra["failed"] = failed
    out.dataset = ctx.dataset_info()
    return out


SUITE = SuiteSpec(NAME, "One-shot machine check: GDPA kernel correctness and speed, backend QPS/MFU/ops, compile",
                  run,
                  options=('baseline', 'batch_size', 'budget_s', 'compile', 'kernels', 'window_s'),
                  cuda_dtype="bf16")  # a GPU's figures are the bf16 ones; --dtype fp32 asks otherwise
