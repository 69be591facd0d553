"""One peak table, one CPU calibration and one MFU formula for every suite."""

from __future__ import annotations

import pytest

from kunbench import hardware


def test_gpu_peaks():
    assert hardware.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16")["flops_per_s"] == 989e12
    assert hardware.gpu_peak_flops("NVIDIA H100 PCIe", "bf16")["flops_per_s"] == 756e12
    assert hardware.gpu_peak_flops("NVIDIA H200", "bf16")["flops_per_s"] == 989e12
    assert hardware.gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16")["flops_per_s"] == 312e12
    assert hardware.gpu_peak_flops("NVIDIA B200", "bf16")["flops_per_s"] == 2250e12
    assert hardware.gpu_peak_flops("NVIDIA L4", "bf16")["flops_per_s"] == 121e12
    unknown = hardware.gpu_peak_flops("Some Future GPU", "fp32")
    assert unknown["flops_per_s"] is None and "unknown GPU" in unknown["source"]
    # variants are explicit: an L40S is not an L4 or an L40, an NVL board is not the SXM part
    assert hardware.gpu_peak_flops("NVIDIA L40S", "bf16")["flops_per_s"] == 362.05e12
    assert hardware.gpu_peak_flops("NVIDIA L40", "bf16")["flops_per_s"] == 181.05e12
    assert hardware.gpu_peak_flops("NVIDIA H200 NVL", "bf16")["flops_per_s"] == 835.5e12
    assert hardware.gpu_peak_flops("NVIDIA H100 NVL", "bf16")["flops_per_s"] == 835.5e12


def test_cpu_peak_measured():
    peak = hardware._cpu_peak(1, n=128, min_seconds=0.05, min_reps=3)
    assert peak["flops_per_s"] > 1e6 and peak["source"].startswith("measured")
    assert peak["flops_per_s"] >= peak["median_flops_per_s"]  # the peak is the best window
    assert hardware._cpu_peak(1, n=128, min_seconds=0.05, min_reps=3) is peak  # measured once per process


def test_mfu_one_formula():
    peak = {"flops_per_s": 1e12}
    assert hardware.mfu(1e6, 1e5, peak, training=False) == pytest.approx(10.0)
    assert hardware.mfu(1e6, 1e5, peak, training=True) == pytest.approx(10.0 * hardware.TRAINING_FLOPS_MULTIPLIER)
    assert hardware.mfu(1e6, 1e5, peak, training=True, world_size=2) == pytest.approx(15.0)
    assert hardware.mfu(1e6, 1e5, {"flops_per_s": None}, training=True) is None
    assert hardware.mfu(None, 1e5, peak, training=False) is None
