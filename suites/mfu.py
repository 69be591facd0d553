"""mfu: model FLOPs utilization of the training step (and of inference).

MFU = (analytic FLOPs per step / step time) / dense peak of the device for the dtype in use.
Analytic FLOPs follow docs/models.md section 4: the backend's forward FLOPs per example on true
lengths; a training step counts kunbench.hardware.TRAINING_FLOPS_MULTIPLIER x forward (stated in every row).
Peak: docs/measurement.md's table on known GPUs (unknown GPUs: no MFU, said so); on CPU the peak of a
calibration GEMM measured at the start of the run, printed as such.

Options (mfu.KEY=V): batch_size (default 256 reduced, 1024 with --full or on CUDA), window_s, warmup,
interleave (default true: with several backends, each measured window visits them all in turn, so
a host that slows down for a while does not bias the ratio between them), baseline (default: the
first backend; with interleaved windows every backend's train and infer ex/s and train MFU are
also given as multiples of the baseline's, the median of the ratios of windows measured side by
side, with their std).
"""

from __future__ import annotations

from kunbench.errors import KunbenchError
from kunbench.results import measurement
from kunbench.hardware import device_peak, flops_convention, model_flops
from kunbench.suites.context import SuiteContext, build_model, param_count, resolve_backend, world_note
from kunbench.suites.throughput import (ThroughputProbe, interleaved, measure_throughput, paired_against,
                                        paired_columns, throughput_measurements)
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "mfu"


def _row(ctx: SuiteContext, out: SuiteOutput, b: str, built, params: int, tps: dict, bs: int,
         peak: dict) -> dict:
    """One backend's table row from its train and infer throughput; its measurements go to `out`."""
    row = {"backend": b, "preset": built.preset, "params": params}
    for mode, tp in tps.items():
        ms = [m for m in throughput_measurements(NAME, b, f"bs={bs}", tp, peak=peak, world_size=ctx.world_size)
              if not m["name"].startswith("latency")]
        step_flops = model_flops(tp.flops_per_example, training=mode == "train") * bs
        ms.append(measurement(NAME, b, f"bs={bs}", f"{mode}_step_ms", tp.step_s * 1000.0, unit="ms",
                              better="lower", spread_kind="median per-iteration time"))
        ms.append(measurement(NAME, b, f"bs={bs}", f"{mode}_achieved_gflops", step_flops * tp.qps / bs / 1e9,
                              unit="GFLOP/s", better="higher",
                              samples=[step_flops * q / bs / 1e9 for q in tp.window_qps]))
        out.measurements += ms
        for m in ms:
            row[m["name"]] = m["value"]
            row[m["name"] + "_spread"] = m.get("spread")
        row["flops"] = tp.flops_per_example
        row["kernels"] = ", ".join(f"{k}={v}" for k, v in tp.kernels.items()) or "-"
    return row


def run(ctx: SuiteContext) -> SuiteOutput:
    big = ctx.full or ctx.device.type == "cuda"
    bs = ctx.number_option("batch_size", 1024 if big else 256, integer=True)
    window_s = ctx.number_option("window_s", 2.0 if ctx.full else 0.75, maximum=3600)
    warmup = ctx.number_option("warmup", 10 if ctx.full else 3, integer=True, strict=False)
    windows = ctx.repeats(3)
    interleave = ctx.bool_option("interleave", True)
    peak = device_peak(ctx.device, ctx.dtype)
    ctx.log(f"mfu: device peak {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['source']})"
            if peak.get("flops_per_s") else f"mfu: {peak['source']}")
    backends = ctx.backends()
    base = str(ctx.suite_option("baseline", backends[0]))
    if base not in backends:
        raise KunbenchError(f"mfu.baseline must be one of the backends run ({', '.join(backends)}), got {base!r}")
    paired = interleave and len(backends) > 1
    out = SuiteOutput(backends=backends, config={"batch_size": bs, "window_s": window_s, "warmup": warmup,
                                                 "windows": windows, "interleave": interleave, "peak": peak,
                                                 "baseline": base if paired else None,
                                                 "backends": {}})
    rows = []
    built_of = {b: resolve_backend(ctx, b) for b in backends}
    for b in backends:
        out.config["backends"][b] = {"preset": built_of[b].preset}
    if paired:  # every model built and warmed up first, then the windows run round by round
        ctx.log(f"mfu: {len(backends)} backends at batch {bs}, {windows} interleaved windows ...")
        models = {b: build_model(ctx, built_of[b]) for b in backends}
        probes = {b: {mode: ThroughputProbe(ctx, built_of[b], models[b], mode, bs, min_window_s=window_s,
                                            warmup=warmup, label=f"mfu {b} {mode}")
                      for mode in ("train", "infer")} for b in backends}
        tps = interleaved(probes, windows)
        for b in backends:
            rows.append(_row(ctx, out, b, built_of[b], param_count(models[b]), tps[b], bs, peak))
        out.measurements += paired_against(NAME, rows, tps, base, f"bs={bs}")
        del models, probes
    else:
        for b in backends:
            model = build_model(ctx, built_of[b])
            tps = {}
            for mode in ("train", "infer"):
                ctx.log(f"mfu: {b} {mode} bs={bs} ...")
                tps[mode] = measure_throughput(ctx, built_of[b], model, mode, bs, windows=windows,
                                               min_window_s=window_s, warmup=warmup)
            rows.append(_row(ctx, out, b, built_of[b], param_count(model), tps, bs, peak))
            del model
    peak_txt = (f"{peak['flops_per_s'] / 1e9:,.1f} GFLOP/s" if peak.get("flops_per_s") else "unknown")
    out.tables.append({
        "title": f"mfu: analytic FLOPs ({flops_convention(True)}) / step time / peak {peak_txt} (batch {bs})",
        "columns": [{"key": "backend", "header": "backend"}, {"key": "preset", "header": "preset"},
                    {"key": "flops", "header": "fwd FLOPs/ex", "fmt": ",.0f"},
                    {"key": "train_step_ms", "header": "train step ms", "fmt": ".1f"},
                    {"key": "train_achieved_gflops", "header": "train GFLOP/s", "fmt": ".2f"},
                    {"key": "train_mfu_pct", "header": "train MFU %", "fmt": ".2f", "pm": "train_mfu_pct_spread"},
                    {"key": "infer_step_ms", "header": "infer step ms", "fmt": ".1f"},
                    {"key": "infer_mfu_pct", "header": "infer MFU %", "fmt": ".2f", "pm": "infer_mfu_pct_spread"},
                    *(paired_columns(base) if paired else []),
                    {"key": "train_aten_ops_per_step", "header": "aten ops/train step", "fmt": ",.0f"},
                    *([{"key": "train_cuda_launches_per_step", "header": "CUDA launches/train step", "fmt": ",.0f"}]
                      if ctx.device.type == "cuda" else []),
                    *([{"key": "train_compile_s", "header": "compile s", "fmt": ".1f"}] if ctx.opts.compile else []),
                    {"key": "kernels", "header": "kernels"},
                    {"key": "params", "header": "params", "fmt": ","}],
        "rows": rows, "label_columns": 2,
        "notes": [world_note(ctx), f"peak: {peak['source']}",
                  *([f"x {base}: median of the ratios of windows run side by side (± their std)"] if paired else
                    ["no ratios to a baseline: windows were not interleaved"] if len(backends) > 1 else [])]})
    out.extra["peak"] = peak
    out.dataset = ctx.dataset_info()
    return out


SUITE = SuiteSpec(NAME, f"Training-step MFU: analytic FLOPs ({flops_convention(True)}) vs device peak "
                        "(CPU: measured GEMM peak)",
                  run,
                  options=('baseline', 'batch_size', 'interleave', 'warmup', 'window_s'))
