"""Throughput inside a suite: examples/s of a model's inference or training step on in-memory,
on-device batches (the input pipeline is not measured), with latency, ops per step, MFU and the
telemetry of each measured window (docs/measurement.md)."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from kunbench.backends.common import kernels_of
from kunbench.errors import KunbenchError
from kunbench.hardware import flops_convention, mfu, sync
from kunbench.op_count import count_ops
from kunbench.results import measurement
from kunbench.stats import percentile
from kunbench.suites.context import Built, SuiteContext
from kunbench.telemetry import merge_summaries
from kunbench.train.compiled import CompileClock
from kunbench.train.evaluate import autocast_context, autocast_dtype
from kunbench.train.step import make_train_step


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
    return SyntheticBatches.from_manifest(ctx.dataset(), batch_size=batch_size, device=ctx.device, seed=seed,
                                          pool_size=2, max_lengths=built.spec.max_lengths(built.config, ctx.schema()))


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
        compile = ctx.opts.compile if compile is None else compile
        if mode == "infer":
            net = model
            if compile:
                from kunbench.train.compiled import compile_model

                net = compile_model(net)

            def step(b):
                with torch.inference_mode(), autocast_context(device, dtype):
                    return net(b)
        else:
            ts = make_train_step(model, ctx.train_config(), ctx.dist, compile=compile)
            counter = [0]

            def step(b):
                counter[0] += 1
                loss = ts.loss(b)
                ts.update(loss, counter[0])
                return loss
        self._step = step
        self._set_mode()
        clock = CompileClock()
        for i in range(max(warmup, 2 if compile else 0)):
            clock.start()
            t_w = time.perf_counter()
            step(self.pool[i % len(self.pool)])
            sync(device)
            clock.stop(time.perf_counter() - t_w)
        self.compile_s = clock.seconds
        sync(device)
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

    def result(self, windows: int | None = None) -> Throughput:
        """The measured windows, or only the first `windows` of them (a run cut short by a failure
        keeps the rounds every model finished)."""
        if self.mode == "train":
            self.model.zero_grad(set_to_none=True)
        n = len(self.window_qps) if windows is None else min(windows, len(self.window_qps))
        lat = self.lat_ms if windows is None or not self.iters else self.lat_ms[:n * self.iters]
        return Throughput(self.mode, self.batch_size, self.window_qps[:n], list(lat),
                          merge_summaries(self.summaries[:n]), self.flops, self.iters or 0, self.compile_s,
                          dict(self.ops), dict(self.kernels))


def interleaved(probes: dict[str, dict[str, "ThroughputProbe"]], windows: int) -> dict[str, dict[str, Throughput]]:
    """Round `i` runs window `i` of every probe in turn (`probes[name][mode]`), so a host that slows
    down for a while slows every model alike; then each probe's result."""
    for _ in range(windows):
        for modes in probes.values():
            for probe in modes.values():
                probe.window()
    return {name: {mode: p.result() for mode, p in modes.items()} for name, modes in probes.items()}


def paired_ratios(mine: Sequence[float], ref: Sequence[float], scale: float = 1.0) -> list[float]:
    """`scale x mine[i] / ref[i]` for windows measured side by side (round `i` of an interleaved
    run visits every model once): the drift of a shared host cancels within each ratio."""
    return [scale * q / r for q, r in zip(mine, ref, strict=True) if r > 0]


PAIRED_KEYS = (("train_speedup", "train", False), ("infer_speedup", "infer", False), ("train_mfu_ratio", "train", True))


def paired_against(suite: str, rows: list[dict[str, Any]], tps: dict[str, dict[str, Throughput]], base: str,
                   variant: str) -> list[dict[str, Any]]:
    """Each row's backend against `base`, window by window: the windows of one round ran side by
    side, so their ratio cancels what the host did meanwhile. The median and std of those ratios
    go in the row (`train_speedup`, `infer_speedup`, `train_mfu_ratio`); the measurements come
    back, except the baseline's own 1.0, which only its row shows."""
    out: list[dict[str, Any]] = []
    if base not in tps:
        return out
    for row in rows:
        b = row["backend"]
        for key, mode, flops in PAIRED_KEYS:
            if b not in tps or mode not in tps[b] or mode not in tps[base]:
                continue
            mine, ref = tps[b][mode], tps[base][mode]
            if flops and not (mine.flops_per_example and ref.flops_per_example):
                continue  # a backend without analytic FLOPs has no MFU to compare
            scale = mine.flops_per_example / ref.flops_per_example if flops else 1.0
            n = min(len(mine.window_qps), len(ref.window_qps))  # the rounds both finished
            ratios = paired_ratios(mine.window_qps[:n], ref.window_qps[:n], scale)
            if not ratios:
                continue
            m = measurement(suite, b, f"{variant} vs {base}", key, statistics.median(ratios), unit="x",
                            better="higher", samples=ratios,
                            spread_kind=f"std of {len(ratios)} paired window ratios", baseline=base)
            if b != base:
                out.append(m)
            row[key], row[key + "_spread"] = m["value"], m["spread"]
    return out


def paired_columns(base: str) -> list[dict[str, Any]]:
    """Table columns of `paired_against`'s figures."""
    return [{"key": "train_speedup", "header": f"train ex/s x {base}", "fmt": ".2f", "pm": "train_speedup_spread"},
            {"key": "train_mfu_ratio", "header": f"train MFU x {base}", "fmt": ".2f", "pm": "train_mfu_ratio_spread"},
            {"key": "infer_speedup", "header": f"infer ex/s x {base}", "fmt": ".2f", "pm": "infer_speedup_spread"}]


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
    training = tp.mode == "train"
    util = mfu(tp.flops_per_example, tp.qps, peak, training=training, world_size=world_size)
    if util is not None:
        ms.append(measurement(suite, backend, variant, f"{tp.mode}_mfu_pct", util, unit="%", better="higher",
                              samples=[mfu(tp.flops_per_example, q, peak, training=training, world_size=world_size)
                                       for q in tp.window_qps],
                              spread_kind=f"std over {len(tp.window_qps)} windows", batch_size=tp.batch_size,
                              flops_convention=flops_convention(training), peak_source=peak.get("source"),
                              **extra))
    return ms
