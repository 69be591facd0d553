"""Kernel benchmark suite: the GDPA operator (models.md 3.2-3.4) over a shape grid.

    run_kernels_suite(device, dtype, shapes=None, repeats=20, out_dir="results") -> dict
    python -m kunbench.suites.kernels [--device cuda] [--dtype bf16] [--repeats 20] [--shapes ...]

Shapes: Meta's production PFFN (B=1152, max Lq=1000 at ~50% fill, H=4, d_h=128, F=256), a seed-
pooling shape (broadcast seeds over jagged sequences) and a windowed self-attention shape; on CPU a
small grid of the same three modes. Implementations:
  triton        the fused kernels (CUDA; `gdpa(..., implementation="triton")`)
  eager         the PyTorch reference, i.e. the naive PFFN: padded batched matmuls
  compile       torch.compile of the eager reference (CUDA)
  sdpa_softmax  torch SDPA on padded tensors with softmax: NOT the same math (GDPA has an
                activation and no softmax normalizer; no SDPA/FlexAttention mode computes it), so
                it is a speed reference at the same shape only: no error, no speedup claim.
Metrics per (shape, implementation, pass in fwd / fwd+bwd): latency (CUDA events, median of
`repeats`; wall clock on CPU), TFLOP/s from the analytic count (models.md 4: forward
4 d_h H sum Lq Lk, windowed keys min(L, 2w+1); fwd+bwd = 3.5x forward), percent of the device's
dense peak for the dtype (measurement.md table; unknown GPU or dtype -> None; on CPU a calibration
GEMM, labelled as such), speedup over eager, max abs error vs a float32 reference (output for fwd,
max over dq/dk/dv for fwd+bwd) and the same relative to max |reference|.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from kunbench.kernels import gdpa, gdpa_flops
from kunbench.kernels.gdpa_triton import triton_available

SUITE_NAME = "kernels"
SCHEMA_VERSION = 1

def gpu_peak_bf16_tflops(name: str) -> float | None:
    """Dense bf16/fp16 peak of a GPU name (kunbench.peaks); None when not in the table."""
    from kunbench.peaks import gpu_peak_tflops

    return gpu_peak_tflops(name, "bf16")[0]


GPU_SHAPES: list[dict[str, Any]] = [
    dict(name="pffn_prod", mode="pffn", batch=1152, max_len=1000, fill=0.5, heads=4, head_dim=128, f=256,
         activation="gelu"),
    dict(name="seed_pool", mode="seed", batch=1152, max_len=1000, fill=0.5, heads=4, head_dim=128, seeds=128,
         activation="silu"),
    # production batch: the eager reference's banded gather ([B, T, 2w+1, H, d]) does not fit at this
    # size (reported as an error row); the B=64 shape below gives eager, compile and speedup figures
    dict(name="self_window", mode="self", batch=1152, max_len=1000, fill=0.5, heads=4, head_dim=128, window=64,
         activation="silu"),
    dict(name="self_window_b64", mode="self", batch=64, max_len=1000, fill=0.5, heads=4, head_dim=128, window=64,
         activation="silu"),
]
CPU_SHAPES: list[dict[str, Any]] = [
    dict(name="pffn_small", mode="pffn", batch=16, max_len=64, fill=0.5, heads=2, head_dim=32, f=32,
         activation="gelu"),
    dict(name="seed_small", mode="seed", batch=16, max_len=64, fill=0.5, heads=2, head_dim=32, seeds=16,
         activation="silu"),
    dict(name="self_window_small", mode="self", batch=16, max_len=64, fill=0.5, heads=2, head_dim=32, window=8,
         activation="silu"),
]
ALL_SHAPES = {s["name"]: s for s in GPU_SHAPES + CPU_SHAPES}
IMPLEMENTATIONS = ("triton", "eager", "compile", "sdpa_softmax")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


# ---- device peak --------------------------------------------------------------------------------
def device_peak_tflops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """(peak dense TFLOP/s, where it comes from); (None, reason) when unknown, never a guess."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if dtype not in (torch.bfloat16, torch.float16):
            return None, f"{name}: no {dtype} peak in the kunbench.peaks table"
        peak = gpu_peak_bf16_tflops(name)
        if peak is not None:
            return peak, f"{name} (kunbench.peaks table, dense bf16/fp16)"
        return None, f"{name}: not in the peak table, no peak"
    if device.type == "cpu":
        return cpu_calibration_tflops(dtype), f"CPU calibration GEMM ({dtype}), measured now"
    return None, f"no peak for device {device.type}"


def cpu_calibration_tflops(dtype: torch.dtype = torch.float32, n: int = 512, seconds: float = 0.2) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best, t_end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e12


# ---- inputs -------------------------------------------------------------------------------------
def make_lengths(batch: int, max_len: int, fill: float, seed: int = 0) -> torch.Tensor:
    """Jagged lengths with mean ~ fill * max_len and exactly max_len as the maximum."""
    g = torch.Generator().manual_seed(seed)
    hi = max(1, min(max_len, round(2 * fill * max_len)))
    lengths = torch.randint(0, hi + 1, (batch,), generator=g)
    if batch:
        lengths[0] = max_len
    return lengths


def make_inputs(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(q, k, v, gdpa kwargs, q lengths, k lengths) for one grid shape, scores ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed + 1)
    h, d, b = shape["heads"], shape["head_dim"], shape["batch"]
    lengths = make_lengths(b, shape["max_len"], shape.get("fill", 0.5), seed)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)
    n = int(lengths.sum())
    amp = d ** -0.25

    def rn(*s):
        return (torch.randn(*s, generator=g) * amp).to(device=device, dtype=dtype)

    mode = shape["mode"]
    kw: dict[str, Any] = dict(activation=shape.get("activation", "gelu"))
    if mode == "pffn":
        f = shape["f"]
        q, k, v = rn(n, h, d), rn(b, f, h, d), rn(b, f, h, d)
        kw.update(q_offsets=off)
        lq, lk = lengths, torch.full((b,), f)
    elif mode == "seed":
        s = shape["seeds"]
        q, k, v = rn(s, h, d), rn(n, h, d), rn(n, h, d)
        kw.update(kv_offsets=off, broadcast_q=True)
        lq, lk = torch.full((b,), s), lengths
    elif mode == "self":
        q, k, v = rn(n, h, d), rn(n, h, d), rn(n, h, d)
        kw.update(q_offsets=off, kv_offsets=off, window=shape.get("window"))
        lq, lk = lengths, lengths
    else:
        raise ValueError(f"unknown GDPA mode {mode!r}")
    return q, k, v, kw, lq, lk


def forward_flops(shape: dict[str, Any], lq: torch.Tensor, lk: torch.Tensor) -> float:
    return float(gdpa_flops(lq, lk, shape["heads"], shape["head_dim"], window=shape.get("window")).sum())


# ---- implementations ----------------------------------------------------------------------------
def _pad(x: torch.Tensor, off: torch.Tensor, max_len: int) -> torch.Tensor:
    """[N, H, d] jagged -> [B, H, T, d] padded (setup for SDPA, outside the timed region)."""
    from kunbench.data.jagged import jagged_to_padded

    return jagged_to_padded(x, off, pad_to=max_len)[0].transpose(1, 2).contiguous()


def sdpa_callable(shape, q, k, v, kw) -> Callable[..., torch.Tensor]:
    """Softmax SDPA at the same shape on padded tensors (a speed reference, not GDPA's math)."""
    mode, t = shape["mode"], shape["max_len"]
    if mode == "pffn":
        qp, kp, vp = _pad(q, kw["q_offsets"], t), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        mask = None
    elif mode == "seed":
        b = kw["kv_offsets"].numel() - 1
        qp = q.transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1).contiguous()
        kp, vp = _pad(k, kw["kv_offsets"], t), _pad(v, kw["kv_offsets"], t)
        lens = (kw["kv_offsets"][1:] - kw["kv_offsets"][:-1])
        mask = (torch.arange(t, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    else:
        off = kw["q_offsets"]
        qp, kp, vp = _pad(q, off, t), _pad(k, off, t), _pad(v, off, t)
        lens = off[1:] - off[:-1]
        pos = torch.arange(t, device=q.device)
        mask = (pos[None, :] < lens[:, None])[:, None, None, :]
        if kw.get("window") is not None:
            band = (pos[:, None] - pos[None, :]).abs() <= kw["window"]
            mask = mask & band[None, None]
    leaves = (qp, kp, vp)

    def run(a, b_, c):
        return F.scaled_dot_product_attention(a, b_, c, attn_mask=mask)

    return run, leaves


def _implementations(device: torch.device, dtype: torch.dtype, shape, q, k, v, kw) -> dict[str, Any]:
    """name -> (callable(q, k, v) -> out, input leaves) or a string saying why it does not run."""
    eager = lambda a, b, c: gdpa(a, b, c, implementation="torch", **kw)  # noqa: E731
    impls: dict[str, Any] = {}
    cuda = device.type == "cuda"
    if not cuda:
        impls["triton"] = "skipped: needs CUDA (the interpreter is a correctness tool, not a benchmark)"
    elif not triton_available():
        impls["triton"] = "skipped: triton not installed"
    else:
        impls["triton"] = (lambda a, b, c: gdpa(a, b, c, implementation="triton", **kw), (q, k, v))
    impls["eager"] = (eager, (q, k, v))
    impls["compile"] = (torch.compile(eager), (q, k, v)) if cuda else "skipped on CPU (compile time dominates)"
    impls["sdpa_softmax"] = sdpa_callable(shape, q, k, v, kw) if cuda else "skipped on CPU"
    return impls


# ---- float32 reference ---------------------------------------------------------------------------
def chunked_reference(q, k, v, kw, grad, chunk: int = 16):
    """float32 reference output and (dq, dk, dv) for upstream `grad`, `chunk` samples at a time
    (samples are independent; broadcast dq sums over chunks). The scale is fixed from the whole
    batch so chunks agree with the one-shot operator."""
    bq, jkv = bool(kw.get("broadcast_q")), kw.get("kv_offsets") is not None
    qo, ko = kw.get("q_offsets"), kw.get("kv_offsets")
    batch = (ko.numel() - 1) if jkv else k.shape[0]
    if kw.get("scale") is None:
        max_q = q.shape[0] if bq else int((qo[1:] - qo[:-1]).max()) if batch else 0
        scale = 1.0 / max(max_q, 1)
    else:
        scale = kw["scale"]
    outs, dqs, dks, dvs = [], [], [], []
    dq_sum = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if bq else None
    for b0 in range(0, batch, chunk):
        b1 = min(batch, b0 + chunk)
        ckw = dict(kw, scale=scale)
        if bq:
            qc, gc = q, grad[b0:b1]
        else:
            r0, r1 = int(qo[b0]), int(qo[b1])
            qc, gc = q[r0:r1], grad[r0:r1]
            ckw["q_offsets"] = qo[b0:b1 + 1] - qo[b0]
        if jkv:
            s0, s1 = int(ko[b0]), int(ko[b1])
            kc, vc = k[s0:s1], v[s0:s1]
            ckw["kv_offsets"] = ko[b0:b1 + 1] - ko[b0]
        else:
            kc, vc = k[b0:b1], v[b0:b1]
        leaves = [t.float().requires_grad_() for t in (qc, kc, vc)]
        out = gdpa(*leaves, implementation="torch", **ckw)
        dq, dk, dv = torch.autograd.grad(out, leaves, gc.float())
        outs.append(out.detach())
        if bq:
            dq_sum += dq
        else:
            dqs.append(dq)
        dks.append(dk)
        dvs.append(dv)
    if not outs:
        shape = (0, *q.shape) if bq else q.shape
        return torch.zeros(shape, device=q.device), (torch.zeros_like(q, dtype=torch.float32),
                                                    torch.zeros_like(k, dtype=torch.float32),
                                                    torch.zeros_like(v, dtype=torch.float32))
    dq_all = dq_sum if bq else torch.cat(dqs)
    return torch.cat(outs), (dq_all, torch.cat(dks), torch.cat(dvs))


# ---- timing -------------------------------------------------------------------------------------
def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _fwd_bwd(fn, leaves, grad):
    def step():
        xs = [t.detach().requires_grad_() for t in leaves]
        out = fn(*xs)
        return torch.autograd.grad(out, xs, grad)
    return step


def _errors(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> tuple[float, float]:
    abs_err, rel_err = 0.0, 0.0
    for a, b in zip(got, want):
        if b.numel() == 0:
            continue
        e = float((a.float() - b.float()).abs().max())
        abs_err = max(abs_err, e)
        rel_err = max(rel_err, e / max(float(b.float().abs().max()), 1e-12))
    return abs_err, rel_err


# ---- the suite ----------------------------------------------------------------------------------
def run_kernels_suite(
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    shapes: Sequence[str | dict[str, Any]] | None = None,
    repeats: int | None = None,
    out_dir: str | Path | None = "results",
    warmup: int | None = None,
    implementations: Sequence[str] | None = None,
    passes: Sequence[str] = ("fwd", "fwd+bwd"),
    reference_chunk: int = 16,
) -> dict[str, Any]:
    """Run the grid; returns the result document (rows in doc["rows"]) and, unless out_dir is None,
    writes it atomically as results/suite-kernels-...json (path in doc["path"])."""
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = DTYPES[dtype.lower()]
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cuda = device.type == "cuda"
    repeats = repeats or (20 if cuda else 5)
    warmup = warmup if warmup is not None else (3 if cuda else 1)
    grid = [ALL_SHAPES[s] if isinstance(s, str) else dict(s) for s in (shapes or (GPU_SHAPES if cuda else CPU_SHAPES))]
    wanted = set(implementations or IMPLEMENTATIONS)
    peak, peak_source = device_peak_tflops(device, dtype)
    rows: list[dict[str, Any]] = []
    for shape in grid:
        q, k, v, kw, lq, lk = make_inputs(shape, device, dtype)
        fwd_flops = forward_flops(shape, lq, lk)
        out_shape = (lq.numel(), q.shape[0], *q.shape[1:]) if kw.get("broadcast_q") else q.shape
        grad = (torch.randn(out_shape, generator=torch.Generator().manual_seed(5)) * 0.1).to(device=device, dtype=dtype)
        try:  # float32 reference from the same (rounded) inputs, in sample chunks to bound memory
            ref_out, ref_grads = chunked_reference(q, k, v, kw, grad, chunk=reference_chunk)
            ref_note = None
        except Exception as exc:
            ref_out, ref_grads, ref_note = None, None, f"no reference: {type(exc).__name__}"
            if cuda:
                torch.cuda.empty_cache()
        impls = _implementations(device, dtype, shape, q, k, v, kw)
        eager_ms: dict[str, float] = {}
        for name in [n for n in IMPLEMENTATIONS if n in wanted]:
            impl = impls[name]
            for p in passes:
                row = dict(shape=shape["name"], mode=shape["mode"], impl=name, pass_=p, status="ok",
                           latency_ms=None, latency_spread_ms=None, samples_ms=None, tflops=None, pct_peak=None,
                           speedup_vs_eager=None, max_abs_err=None, max_rel_err=None,
                           flops=fwd_flops * (3.5 if p == "fwd+bwd" else 1.0))
                rows.append(row)
                if isinstance(impl, str):
                    row["status"] = impl
                    continue
                fn, leaves = impl
                try:
                    if p == "fwd":
                        with torch.no_grad():
                            out = fn(*leaves)
                        step = lambda: fn(*leaves)  # noqa: E731
                        if name != "sdpa_softmax" and ref_out is not None:
                            row["max_abs_err"], row["max_rel_err"] = _errors([out], [ref_out])
                        del out
                        with torch.no_grad():
                            samples = time_ms(step, device, repeats, warmup)
                    else:
                        g = grad if name != "sdpa_softmax" else torch.randn_like(fn(*leaves)) * 0.1
                        step = _fwd_bwd(fn, leaves, g)
                        if name != "sdpa_softmax" and ref_grads is not None:
                            row["max_abs_err"], row["max_rel_err"] = _errors(step(), ref_grads)
                        samples = time_ms(step, device, repeats, warmup)
                except Exception as exc:  # an OOM or an unsupported case must not end the suite
                    row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                med = statistics.median(samples)
                row.update(latency_ms=med, samples_ms=samples,
                           latency_spread_ms=statistics.stdev(samples) if len(samples) > 1 else None,
                           tflops=row["flops"] / (med * 1e-3) / 1e12)
                if peak:
                    row["pct_peak"] = 100.0 * row["tflops"] / peak
                if name == "eager":
                    eager_ms[p] = med
                if name == "sdpa_softmax":
                    row["status"] = "ok (softmax, other math: speed ref.)"
                elif ref_note:
                    row["status"] = f"ok ({ref_note})"
        for row in rows:
            if row["shape"] == shape["name"] and row["latency_ms"] and row["pass_"] in eager_ms \
                    and row["impl"] != "sdpa_softmax":
                row["speedup_vs_eager"] = eager_ms[row["pass_"]] / row["latency_ms"]
        del q, k, v, ref_out, ref_grads, impls
        if cuda:
            torch.cuda.empty_cache()

    for row in rows:
        row["pass"] = row.pop("pass_")
    doc = _document(rows, grid, device, dtype, peak, peak_source, repeats, warmup, time.perf_counter() - started)
    if out_dir is not None:
        doc["path"] = str(write_document(doc, out_dir))
    return doc


def _measurements(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    metrics = (("latency_ms", "ms", "lower"), ("tflops", "TFLOP/s", "higher"), ("pct_peak", "%", "higher"),
               ("speedup_vs_eager", "x", "higher"), ("max_abs_err", "", "lower"))
    for r in rows:
        if r["latency_ms"] is None:
            continue
        for key, unit, better in metrics:
            if r[key] is None:
                continue
            m = {"suite": SUITE_NAME, "backend": r["impl"], "variant": f"{r['shape']}/{r['pass']}", "name": key,
                 "value": float(r[key]), "unit": unit, "better": better, "spread": None, "spread_kind": None,
                 "samples": None}
            if key == "latency_ms" and r["latency_spread_ms"] is not None:
                m.update(spread=r["latency_spread_ms"], spread_kind=f"std over {len(r['samples_ms'])} repeats",
                         samples=r["samples_ms"])
            out.append(m)
    return out


def _environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    try:
        from kunbench.environment import environment_stamp

        env = environment_stamp()
    except Exception as exc:  # the stamp must never sink a benchmark
        env = {"torch": torch.__version__, "stamp_error": str(exc)}
    env.update(device=str(device), dtype=str(dtype).replace("torch.", ""),
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    return env


TABLE_COLUMNS = [
    {"key": "shape", "header": "shape"}, {"key": "pass", "header": "pass"}, {"key": "impl", "header": "impl"},
    {"key": "latency_ms", "header": "latency ms (median)", "fmt": ".3f", "pm": "latency_spread_ms"},
    {"key": "tflops", "header": "TFLOP/s", "fmt": ".3g"}, {"key": "pct_peak", "header": "% peak", "fmt": ".1f"},
    {"key": "speedup_vs_eager", "header": "x eager", "fmt": ".2f"},
    {"key": "max_abs_err", "header": "max abs err", "fmt": ".2e"},
    {"key": "max_rel_err", "header": "rel err", "fmt": ".2e"}, {"key": "status", "header": "status"},
]


def _document(rows, grid, device, dtype, peak, peak_source, repeats, warmup, total_s) -> dict[str, Any]:
    notes = [
        f"peak: {peak if peak is not None else 'unknown'} TFLOP/s ({peak_source})",
        "FLOPs: analytic on true lengths (models.md 4): fwd 4 d_h H sum Lq Lk (window: min(L, 2w+1) keys); "
        "fwd+bwd = 3.5 x fwd. Padded work of eager/SDPA is not credited.",
        "errors: vs a float32 reference from the same inputs; fwd = output, fwd+bwd = max over dq, dk, dv.",
        "sdpa_softmax: softmax attention on padded tensors, not GDPA's math (activation, no normalizer); no "
        "SDPA or FlexAttention mode computes GDPA, so it is a speed reference only.",
    ]
    shown = [r for r in rows if not r["status"].startswith("skipped")]
    skipped = sorted({f"{r['impl']} ({r['status']})" for r in rows if r["status"].startswith("skipped")})
    if skipped:
        notes.append("not run: " + "; ".join(skipped))
    table_rows = [{c["key"]: r.get(c["key"]) for c in TABLE_COLUMNS} | {"latency_spread_ms": r["latency_spread_ms"]}
                  for r in shown]
    impls = sorted({r["impl"] for r in rows if r["latency_ms"] is not None})
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "suite",
        "suite": SUITE_NAME,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": ",".join(impls) or SUITE_NAME,
        "config": {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "repeats": repeats,
                   "warmup": warmup, "shapes": grid, "peak_tflops": peak, "peak_source": peak_source},
        "dataset": None,
        "environment": _environment(device, dtype),
        "timing": {"total_s": total_s},
        "metrics": _measurements(rows),
        "tables": [{"title": f"GDPA kernels on {device} ({str(dtype).replace('torch.', '')})",
                    "columns": TABLE_COLUMNS, "rows": table_rows, "notes": notes}],
        "notes": notes,
        "rows": rows,
    }


def write_document(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Atomic write (temp file + os.replace) under a unique name (kunbench.train.results)."""
    from kunbench.train.results import atomic_write_json, result_name

    out = Path(out_dir)
    for _ in range(100):
        path = out / result_name(f"suite-{SUITE_NAME}", doc["backend"])
        if not path.exists():
            return atomic_write_json(path, {k: v for k, v in doc.items() if k != "path"})
    raise RuntimeError(f"could not find a free result name in {out}")  # pragma: no cover


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    spec = doc["tables"][0]
    t = Table(title=spec["title"], title_justify="left")
    for c in spec["columns"]:
        t.add_column(c["header"], justify="right" if c.get("fmt") else "left", overflow="fold")
    for r in spec["rows"]:
        cells = []
        for c in spec["columns"]:
            val = r.get(c["key"])
            if val is None:
                cells.append("-")
            elif c.get("fmt"):
                s = format(val, c["fmt"])
                if c.get("pm") and r.get(c["pm"]) is not None:
                    s += f" ± {format(r[c['pm']], c['fmt'])}"
                cells.append(s)
            else:
                cells.append(str(val))
        t.add_row(*cells)
    console = Console(width=max(Console().width, 150))
    console.print(t)
    for n in spec["notes"]:
        console.print(f"[dim]{n}[/]", highlight=False)
    if doc.get("path"):
        console.print(f"wrote {doc['path']}")


# ---- registry hook (`kunbench run --suite kernels`) ---------------------------------------------
def _run_from_context(ctx: Any):
    from kunbench.suites.registry import SuiteOutput

    def opt(*names, default=None):
        for n in names:
            val = getattr(ctx, n, None)
            if val is not None:
                return val
        return default

    doc = run_kernels_suite(device=opt("device"), dtype=opt("dtype"), repeats=opt("repeats"), out_dir=None)
    return SuiteOutput(measurements=doc["metrics"], tables=doc["tables"], notes=doc["notes"],
                       extra={"rows": doc["rows"]}, config=doc["config"], backends=doc["backend"].split(","))


def _suite_spec():
    try:
        from kunbench.suites.registry import SuiteSpec
    except Exception:  # registry not present in this checkout
        return None
    return SuiteSpec(name=SUITE_NAME, description="GDPA operator: Triton vs eager vs compile vs SDPA over a shape grid",
                     run=_run_from_context, uses_data=False)


SUITE = _suite_spec()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m kunbench.suites.kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--shapes", nargs="+", choices=sorted(ALL_SHAPES), default=None)
    ap.add_argument("--impl", nargs="+", choices=IMPLEMENTATIONS, default=None)
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="results", help="results directory")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    doc = run_kernels_suite(a.device, a.dtype, shapes=a.shapes, repeats=a.repeats, warmup=a.warmup,
                            out_dir=None if a.no_write else a.out, implementations=a.impl,
                            passes=("fwd",) if a.fwd_only else ("fwd", "fwd+bwd"))
    print_table(doc)
    return doc


if __name__ == "__main__":
    main()
