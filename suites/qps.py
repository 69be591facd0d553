"""qps: inference and training examples/s and inference latency p50/p99 at several batch sizes,
from the in-memory on-device batch source (kunbench.data.synthetic), so the input pipeline is not
what is measured.

Per backend and batch size: `warmup` iterations, then `--repeat` windows (default 3) of at least
`window_s` seconds each; the figure is the median over windows and its spread the standard deviation
over windows. Latency percentiles pool every timed iteration. CUDA runs bracket each iteration with
CUDA events and synchronize around windows.

Options (qps.KEY=V): batch_sizes (default [256, 1024, 4096] on CUDA, [64, 256, 1024] on CPU),
window_s (0.5 / 2.0), warmup (3 / 10), modes ([infer, train]).
"""

from __future__ import annotations

from typing import Any

from kunbench.results import measurement
from kunbench.hardware import device_peak
from kunbench.suites.context import (SuiteContext, build_model, int_list, param_count, resolve_backend, str_list,
                                     world_note)
from kunbench.suites.throughput import measure_throughput, throughput_measurements
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "qps"


def settings(ctx: SuiteContext) -> dict[str, Any]:
    # big batches only on a GPU: a CPU core trains the sequence models at ~200 ex/s, so one
    # 4096-row training step takes ~20 s and the warm-up alone minutes
    gpu = ctx.device.type == "cuda"
    bs = int_list(ctx.suite_option("batch_sizes", [256, 1024, 4096] if gpu else [64, 256, 1024]),
                  "qps.batch_sizes")
    return {"batch_sizes": bs,
            "window_s": ctx.number_option("window_s", 2.0 if ctx.full else 0.5, maximum=3600),
            "warmup": ctx.number_option("warmup", 10 if ctx.full else 3, integer=True, strict=False),
            "windows": ctx.repeats(3),
            "modes": str_list(ctx.suite_option("modes", ["infer", "train"]), "qps.modes", ("infer", "train"))}


def run(ctx: SuiteContext) -> SuiteOutput:
    s = settings(ctx)
    backends = ctx.backends()
    out = SuiteOutput(backends=backends, config={"settings": s, "backends": {}})
    rows = []
    peak = device_peak(ctx.device, ctx.dtype)
    for b in backends:
        built = resolve_backend(ctx, b)
        out.config["backends"][b] = {"preset": built.preset}
        model = build_model(ctx, built)
        params = param_count(model)
        for bs in s["batch_sizes"]:
            row: dict[str, Any] = {"backend": b, "preset": built.preset, "batch_size": bs, "params": params}
            for mode in s["modes"]:
                ctx.log(f"qps: {b} {mode} bs={bs} ...")
                tp = measure_throughput(ctx, built, model, mode, bs, windows=s["windows"],
                                        min_window_s=s["window_s"], warmup=s["warmup"])
                ms = throughput_measurements(NAME, b, f"bs={bs}", tp, peak=peak, world_size=ctx.world_size)
                out.measurements += ms
                for m in ms:
                    row[m["name"]] = m["value"]
                    row[m["name"] + "_spread"] = m["spread"]
                row["flops"] = tp.flops_per_example
                row["throttled"] = bool(((tp.telemetry or {}).get("gpu") or {}).get("throttled"))
            rows.append(row)
        out.measurements.append(measurement(NAME, b, "", "params", params, better="none"))
        del model
    cols = [{"key": "backend", "header": "backend"}, {"key": "preset", "header": "preset"},
            {"key": "batch_size", "header": "batch", "fmt": ","}]
    if "infer" in s["modes"]:
        cols += [{"key": "infer_qps", "header": "infer ex/s", "fmt": ",.0f", "pm": "infer_qps_spread"},
                 {"key": "latency_p50", "header": "p50 ms", "fmt": ".2f"},
                 {"key": "latency_p99", "header": "p99 ms", "fmt": ".2f"}]
    if "train" in s["modes"]:
        cols += [{"key": "train_qps", "header": "train ex/s", "fmt": ",.0f", "pm": "train_qps_spread"},
                 {"key": "train_mfu_pct", "header": "train MFU %", "fmt": ".2f"},
                 {"key": "train_aten_ops_per_step", "header": "aten ops/train step", "fmt": ",.0f"}]
        if ctx.device.type == "cuda":
            cols.append({"key": "train_cuda_launches_per_step", "header": "CUDA launches/train step", "fmt": ",.0f"})
    cols += [{"key": "flops", "header": "fwd FLOPs/ex", "fmt": ",.0f"}, {"key": "throttled", "header": "throttled"}]
    out.tables.append({"title": f"qps: throughput from the in-memory source (median ± std over {s['windows']} windows)",
                       "columns": cols, "rows": rows, "label_columns": 3,
                       "notes": [world_note(ctx), f"peak: {peak.get('source')}",
                                 "MFU: training FLOPs = 3 x analytic forward FLOPs"]})
    out.extra["peak"] = peak
    out.dataset = ctx.dataset_info()
    return out


SUITE = SuiteSpec(NAME, "Inference and training examples/s, latency p50/p99 at several batch sizes "
                        "(in-memory on-device source)", run,
                  options=('batch_sizes', 'modes', 'warmup', 'window_s'))
