"""Peak FLOP/s and MFU: the one table, the one CPU calibration and the one MFU formula that every
suite divides by (docs/measurement.md, "MFU").

GPU peaks are the vendors' dense (no sparsity) figures per dtype, matched by regular expression
against `torch.cuda.get_device_name()`; fp16 equals bf16. The first matching entry wins, so board
variants (NVL, PCIe) come before the general name, and a name the table does not know gets no
peak and a message saying so: an unknown peak is reported as unknown, never guessed. On a CPU the
peak is measured: the best of a stream of fp32 GEMMs.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any

import torch

# Model FLOPs of one training step per forward FLOP: the backward pass costs about twice the
# forward (the gradients of the activations and of the weights). Recomputation inside a kernel is
# not credited, so a fused kernel that recomputes the forward in its backward is judged on the same
# model FLOPs as one that stores it.
TRAINING_FLOPS_MULTIPLIER = 3.0

GPU_PEAKS_TFLOPS: tuple[tuple[str, dict[str, float] | None], ...] = (
    (r"H100.*NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200.*NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100.*PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (r"H100", {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),  # SXM (HBM3)
    (r"H200", {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),  # SXM
    (r"A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"B200", {"bf16": 2250.0, "tf32": 1100.0, "fp32": 80.0}),
    (r"L40S", {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL40\b", {"bf16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
)


def gpu_peak_tflops(name: str, dtype: str) -> tuple[float | None, str]:
    """(dense peak TFLOP/s for `dtype` in bf16 | fp16 | tf32 | fp32, where it comes from)."""
    key = "bf16" if dtype == "fp16" else dtype
    for pattern, peaks in GPU_PEAKS_TFLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            if peaks is None or key not in peaks:
                break
            return peaks[key], f"table: {pattern} dense {dtype} {peaks[key]:g} TFLOP/s"
    return None, f"unknown GPU {name!r}: no {dtype} peak in the table"


def tf32_enabled() -> bool:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"
    except Exception:
        return False


def gpu_peak_flops(name: str, dtype: str) -> dict[str, Any]:
    """Dense peak for a GPU name and run dtype: bf16/fp16 -> bf16; fp32 -> tf32 when torch lets
    matmuls use TF32, else fp32. Unknown GPUs: flops_per_s None and the reason."""
    key = "bf16" if dtype in ("bf16", "fp16") else ("tf32" if tf32_enabled() else "fp32")
    tflops, source = gpu_peak_tflops(name, key)
    return {"flops_per_s": None if tflops is None else tflops * 1e12, "source": source, "dtype": key}


def cpu_peak_flops() -> dict[str, Any]:
    """Peak fp32 FLOP/s of this CPU at the current torch thread count, measured once per process
    and thread count."""
    return dict(_cpu_peak(torch.get_num_threads()))


@functools.lru_cache(maxsize=None)
def _cpu_peak(threads: int, n: int = 1536, min_seconds: float = 1.5, min_reps: int = 8) -> dict[str, Any]:
    """The best of n x n GEMMs timed for at least `min_seconds`. A short calibration (a handful of
    ~20 ms GEMMs) caught frequency ramps and neighbours' load and moved MFU by a third between runs;
    a longer window's best is stable."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)  # warm-up: thread pool, caches, clock ramp
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    best, median = min(times), sorted(times)[len(times) // 2]
    return {"flops_per_s": flops / best, "median_flops_per_s": flops / median, "dtype": "fp32",
            "source": f"measured: best of {len(times)} fp32 {n}x{n} GEMMs on {threads} threads "
                      f"(median {flops / median / 1e9:.1f} GFLOP/s)"}


def device_peak(device: torch.device, dtype: str) -> dict[str, Any]:
    """{"flops_per_s": float | None, "source": str, "dtype": str} for a run on `device` in `dtype`."""
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak_flops()
    return {"flops_per_s": None, "source": f"no peak for device type {device.type!r}", "dtype": dtype}


def model_flops(forward_flops: float, training: bool) -> float:
    """Model FLOPs of one example: forward only for inference, TRAINING_FLOPS_MULTIPLIER x forward
    for a training step."""
    return forward_flops * (TRAINING_FLOPS_MULTIPLIER if training else 1.0)


def flops_convention(training: bool) -> str:
    return f"training = {TRAINING_FLOPS_MULTIPLIER:g} x forward" if training else "forward"


def mfu(forward_flops_per_example: float | None, examples_per_s: float | None, peak: dict[str, Any] | None, *,
        training: bool, world_size: int = 1) -> float | None:
    """Model FLOPs utilization in percent: model FLOPs per second over the peak of all
    `world_size` devices (examples/s are global over ranks). None when any input is unknown."""
    peak_flops = (peak or {}).get("flops_per_s")
    if not peak_flops or not forward_flops_per_example or examples_per_s is None:
        return None
    return 100.0 * model_flops(forward_flops_per_example, training) * examples_per_s / (peak_flops * world_size)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host clock brackets only finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
