"""Dense peak TFLOP/s of known GPUs: the one table MFU and the kernel suite divide by.

Each entry is a regular expression matched against `torch.cuda.get_device_name()` and the vendor's
dense (no sparsity) peaks per dtype; fp16 equals bf16. Variants the table does not cover (the NVL
boards, whose clocks differ) map to None: an unknown peak is reported as unknown, never guessed.
The first matching entry wins, so specific names come before general ones.
"""

from __future__ import annotations

import re

GPU_PEAKS_TFLOPS: tuple[tuple[str, dict[str, float] | None], ...] = (
    (r"H100.*NVL", None),
    (r"H200.*NVL", None),
    (r"H100.*PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    (r"H100", {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),  # SXM (HBM3)
    (r"H200", {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}),
    (r"A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"B200", {"bf16": 2250.0, "tf32": 1100.0, "fp32": 80.0}),
    (r"\bL4\b", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),  # not the L40 / L40S
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
