"""kernels: the GDPA operator (docs/models.md 3.2-3.4) over a shape grid, one registered callable
per implementation, the metrics declared once (tritonbench's shape). `kunbench run --suite kernels`.

Shapes: Meta's production PFFN (B=1152, max Lq=1000 at ~50% fill, H=4, d_h=128, F=256), a seed-
pooling shape (broadcast seeds over jagged sequences) and a windowed self-attention shape; on CPU a
small grid of the same three modes. Implementations (IMPLEMENTATIONS):
  triton        the fused kernels (CUDA; `gdpa(..., implementation="triton")`)
  eager         the PyTorch reference, i.e. the naive PFFN: padded batched matmuls
  compile       torch.compile of the eager reference (CUDA)
  sdpa_softmax  torch SDPA on padded tensors with softmax: NOT the same math (GDPA has an
                activation and no softmax normalizer; no SDPA/FlexAttention mode computes it), so
                it is a speed reference at the same shape only: no error, no speedup claim.
Metrics (METRICS) per (shape, implementation, pass in fwd / fwd+bwd): latency (CUDA events, median
of the repeats; wall clock on CPU), TFLOP/s from the analytic count on true lengths (docs/models.md
section 4; fwd+bwd = kunbench.hardware.TRAINING_FLOPS_MULTIPLIER x forward, the models'
convention), percent of the device's dense peak (kunbench.hardware), speedup over eager, and the
max abs / relative error against a float32 reference (output for fwd, max over dq/dk/dv for
fwd+bwd).

Options (kernels.KEY=V): shapes=[names], implementations=[...], passes=[fwd, "fwd+bwd"], warmup=N.
--repeat sets the timed repeats per case (default 20 on CUDA, 5 on CPU), --dtype the dtype
(default bf16 on CUDA, fp32 on CPU).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from kunbench.errors import KunbenchError
from kunbench.results import measurement
from kunbench.stats import std
from kunbench.hardware import device_peak, model_flops, flops_convention, sync
from kunbench.kernels import gdpa, gdpa_flops
from kunbench.kernels.gdpa_triton import triton_available
from kunbench.suites.context import SuiteContext, str_list, world_note
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "kernels"
PASSES = ("fwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}



def _shape(name: str, mode: str, batch: int, max_len: int, heads: int, head_dim: int, **mode_args: Any
           ) -> dict[str, Any]:
    """A grid shape: half-full jagged rows (mean fill 0.5 of max_len); `mode_args` holds the mode's
    own size (pffn: f; seed: seeds; self: window) and may override the activation."""
    activation = "gelu" if mode == "pffn" else "silu"
    return dict(name=name, mode=mode, batch=batch, max_len=max_len, fill=0.5, heads=heads, head_dim=head_dim,
                activation=activation, **mode_args)


GPU_SHAPES: list[dict[str, Any]] = [
    _shape("pffn_prod", "pffn", 1152, 1000, 4, 128, f=256),
    _shape("seed_pool", "seed", 1152, 1000, 4, 128, seeds=128),
    # production batch: the eager reference's banded gather ([B, T, 2w+1, H, d]) does not fit at this
    # size (reported as an error row); the B=64 shape below gives eager, compile and speedup figures
    _shape("self_window", "self", 1152, 1000, 4, 128, window=64),
    _shape("self_window_b64", "self", 64, 1000, 4, 128, window=64),
]
CPU_SHAPES: list[dict[str, Any]] = [  # the same three modes, small
    _shape("pffn_small", "pffn", 16, 64, 2, 32, f=32),
    _shape("seed_small", "seed", 16, 64, 2, 32, seeds=16),
    _shape("self_window_small", "self", 16, 64, 2, 32, window=8),
]
ALL_SHAPES = {s["name"]: s for s in GPU_SHAPES + CPU_SHAPES}


# ---- implementations ----------------------------------------------------------------------------
Built = tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]  # (fn(q, k, v) -> out, input leaves)


@dataclass(frozen=True)
class Implementation:
    name: str
    build: Callable[[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], Built]
    skip: Callable[[torch.device], str | None]  # why it does not run on this device, or None
    same_math: bool = True  # computes GDPA: checked against the reference and compared with eager


def _cuda_only(what: str) -> Callable[[torch.device], str | None]:
    return lambda device: None if device.type == "cuda" else f"skipped: {what}"


def _eager(shape, q, k, v, kw) -> Built:
    return (lambda a, b, c: gdpa(a, b, c, implementation="torch", **kw)), (q, k, v)


IMPLEMENTATIONS: dict[str, Implementation] = {
    "triton": Implementation(
        "triton", lambda shape, q, k, v, kw: ((lambda a, b, c: gdpa(a, b, c, implementation="triton", **kw)),
                                              (q, k, v)),
        lambda device: ("skipped: needs CUDA (the interpreter is a correctness tool, not a benchmark)"
                        if device.type != "cuda" else None if triton_available() else "skipped: triton not installed")),
    "eager": Implementation("eager", _eager, lambda device: None),
    "compile": Implementation("compile", lambda shape, q, k, v, kw: (torch.compile(_eager(shape, q, k, v, kw)[0]),
                                                                     (q, k, v)),
                              _cuda_only("on CPU (compile time dominates)")),
    "sdpa_softmax": Implementation("sdpa_softmax", lambda shape, q, k, v, kw: sdpa_callable(shape, q, k, v, kw),
                                   _cuda_only("on CPU"), same_math=False),
}


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    unit: str
    better: str
    fmt: str


METRICS = (
    Metric("latency_ms", "latency ms (median)", "ms", "lower", ".3f"),
    Metric("tflops", "TFLOP/s", "TFLOP/s", "higher", ".3g"),
    Metric("pct_peak", "% peak", "%", "higher", ".1f"),
    Metric("speedup_vs_eager", "x eager", "x", "higher", ".2f"),
    Metric("max_abs_err", "max abs err", "", "lower", ".2e"),
    Metric("max_rel_err", "rel err", "", "lower", ".2e"),
)


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


def _pad(x: torch.Tensor, off: torch.Tensor, max_len: int) -> torch.Tensor:
    """[N, H, d] jagged -> [B, H, T, d] padded (setup for SDPA, outside the timed region)."""
    from kunbench.ops.jagged import jagged_to_padded

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


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        sync(device)
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
        return torch.autograd.grad(fn(*xs), xs, grad)
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


# ---- the grid -----------------------------------------------------------------------------------
def _measure(impl: Implementation, fn, leaves, p: str, grad, ref_out, ref_grads, device, repeats, warmup
             ) -> tuple[list[float], tuple[float, float] | None]:
    """Timed samples (ms) of one pass, and its errors against the reference when they apply."""
    errors = None
    if p == "fwd":
        if impl.same_math and ref_out is not None:
            with torch.no_grad():
                errors = _errors([fn(*leaves)], [ref_out])
        with torch.no_grad():
            return time_ms(lambda: fn(*leaves), device, repeats, warmup), errors
    g = grad if impl.same_math else torch.randn_like(fn(*leaves)) * 0.1
    step = _fwd_bwd(fn, leaves, g)
    if impl.same_math and ref_grads is not None:
        errors = _errors(step(), ref_grads)
    return time_ms(step, device, repeats, warmup), errors


def measure_grid(device: torch.device, dtype: torch.dtype, shapes: Sequence[dict[str, Any]],
                 implementations: Sequence[str], passes: Sequence[str] = PASSES, repeats: int = 5,
                 warmup: int = 1, peak_flops: float | None = None, reference_chunk: int = 16) -> list[dict[str, Any]]:
    """One row per (shape, implementation, pass) with every METRICS key (None where it does not
    apply) and a status; an implementation that fails on one shape (say, out of memory) gets an
    error row and the grid goes on."""
    cuda = device.type == "cuda"
    rows: list[dict[str, Any]] = []
    for shape in shapes:
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
        eager_ms: dict[str, float] = {}
        shape_rows = []
        for name in implementations:
            impl = IMPLEMENTATIONS[name]
            skip = impl.skip(device)
            built = None
            for p in passes:
                row = {"shape": shape["name"], "mode": shape["mode"], "impl": name, "pass": p, "status": "ok",
                       "samples_ms": None, "latency_spread_ms": None,
                       "flops": model_flops(fwd_flops, training=p == "fwd+bwd"), **{m.key: None for m in METRICS}}
                shape_rows.append(row)
                if skip:
                    row["status"] = skip
                    continue
                try:
                    built = built or impl.build(shape, q, k, v, kw)
                    samples, errors = _measure(impl, *built, p, grad, ref_out, ref_grads, device, repeats, warmup)
                except Exception as exc:  # an OOM or an unsupported case must not end the grid
                    first = str(exc).splitlines()[0][:160] if str(exc) else ""
                    row["status"] = f"error: {type(exc).__name__}: {first}"
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                med = statistics.median(samples)
                row.update(latency_ms=med, samples_ms=samples, tflops=row["flops"] / (med * 1e-3) / 1e12,
                           latency_spread_ms=std(samples))
                if errors is not None:
                    row["max_abs_err"], row["max_rel_err"] = errors
                if peak_flops:
                    row["pct_peak"] = 100.0 * row["tflops"] * 1e12 / peak_flops
                if name == "eager":
                    eager_ms[p] = med
                if not impl.same_math:
                    row["status"] = "ok (softmax, other math: speed ref.)"
                elif ref_note:
                    row["status"] = f"ok ({ref_note})"
        for row in shape_rows:
            if row["latency_ms"] and row["pass"] in eager_ms and IMPLEMENTATIONS[row["impl"]].same_math:
                row["speedup_vs_eager"] = eager_ms[row["pass"]] / row["latency_ms"]
        rows += shape_rows
        del q, k, v, ref_out, ref_grads
        if cuda:
            torch.cuda.empty_cache()
    return rows


# ---- the suite ----------------------------------------------------------------------------------
def run(ctx: SuiteContext) -> SuiteOutput:
    device = ctx.device
    cuda = device.type == "cuda"
    dtype_name = ctx.opts.dtype or ("bf16" if cuda else "fp32")
    if dtype_name not in DTYPES:
        raise KunbenchError(f"kernels: dtype must be one of {', '.join(DTYPES)}, got {dtype_name!r}")
    shape_names = str_list(ctx.suite_option("shapes", [s["name"] for s in (GPU_SHAPES if cuda else CPU_SHAPES)]),
                           "kernels.shapes", ALL_SHAPES)
    impls = str_list(ctx.suite_option("implementations", list(IMPLEMENTATIONS)), "kernels.implementations",
                     IMPLEMENTATIONS)
    passes = str_list(ctx.suite_option("passes", list(PASSES)), "kernels.passes", PASSES)
    warmup = ctx.number_option("warmup", 3 if cuda else 1, integer=True, strict=False)
    repeats = ctx.repeats(20 if cuda else 5)
    peak = device_peak(device, dtype_name)
    ctx.log("kernels: GDPA operator grid ...")
    with ctx.window("kernels"):
        rows = measure_grid(device, DTYPES[dtype_name], [ALL_SHAPES[s] for s in shape_names], impls, passes,
                            repeats, warmup, peak.get("flops_per_s"))
    out = SuiteOutput(backends=sorted({r["impl"] for r in rows if r["latency_ms"] is not None}),
                      config={"dtype": dtype_name, "repeats": repeats, "warmup": warmup, "passes": passes,
                              "shapes": [ALL_SHAPES[s] for s in shape_names], "peak": peak},
                      extra={"rows": rows})
    for r in rows:
        if r["latency_ms"] is None:
            continue
        for m in METRICS:
            if r[m.key] is None:
                continue
            spread = dict(spread=r["latency_spread_ms"], samples=r["samples_ms"],
                          spread_kind=f"std over {len(r['samples_ms'])} repeats") if m.key == "latency_ms" else {}
            out.measurements.append(measurement(NAME, r["impl"], f"{r['shape']}/{r['pass']}", m.key, r[m.key],
                                                unit=m.unit, better=m.better, **spread))
    skipped = sorted({f"{r['impl']} ({r['status']})" for r in rows if r["status"].startswith("skipped")})
    notes = [f"peak: {peak.get('source')}",
             f"FLOPs: analytic on true lengths (docs/models.md section 4); fwd+bwd = {flops_convention(True)}, "
             "recomputation not credited; padded work of eager/SDPA is not credited either",
             "errors: vs a float32 reference from the same inputs; fwd = output, fwd+bwd = max over dq, dk, dv",
             "sdpa_softmax: softmax attention on padded tensors, not GDPA's math (activation, no normalizer); "
             "a speed reference only", world_note(ctx)]
    if skipped:
        notes.append("not run: " + "; ".join(skipped))
    columns = [{"key": "shape", "header": "shape"}, {"key": "pass", "header": "pass"},
               {"key": "impl", "header": "impl"}]
    columns += [{"key": m.key, "header": m.header, "fmt": m.fmt, **({"pm": "latency_spread_ms"}
                                                                    if m.key == "latency_ms" else {})}
                for m in METRICS]
    columns.append({"key": "status", "header": "status"})
    out.tables.append({"title": f"GDPA kernels on {device} ({dtype_name})", "columns": columns,
                       "rows": [r for r in rows if not r["status"].startswith("skipped")], "label_columns": 3,
                       "notes": notes})
    return out


SUITE = SuiteSpec(NAME, "GDPA operator: latency, TFLOP/s, % peak, speedup vs eager, error (Triton on CUDA)", run,
                  uses_data=False, options=("shapes", "implementations", "passes", "warmup"))
