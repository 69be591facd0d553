"""Telemetry: NVML sampling, summaries and throttle flagging against a fake pynvml module."""

from __future__ import annotations

import sys
import time
import types

import pytest

from kunbench import telemetry
from kunbench.telemetry import GpuSampler, Telemetry, decode_throttle, is_throttling, merge_summaries


class FakeNVMLError(Exception):
    pass


def make_fake_nvml(masks=(0,), count=1, fail_init=False, name=b"NVIDIA H100 80GB HBM3"):
    """A pynvml stand-in: clocks step up per sample, throttle masks cycle through `masks`."""
    state = {"calls": 0, "init": 0, "shutdown": 0}
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_TEMPERATURE_GPU = 1, 2, 0

    def init():
        if fail_init:
            raise FakeNVMLError("Driver Not Loaded")
        state["init"] += 1

    def shutdown():
        state["shutdown"] += 1

    def clock(h, kind):
        if kind == m.NVML_CLOCK_SM:
            state["calls"] += 1
            return 1500 + 10 * (state["calls"] % 5)
        return 2619

    def reasons(h):
        return masks[(state["calls"] - 1) % len(masks)]

    m.nvmlInit = init
    m.nvmlShutdown = shutdown
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    m.nvmlDeviceGetName = lambda h: name
    m.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h[1]}"
    m.nvmlDeviceGetClockInfo = clock
    m.nvmlDeviceGetPowerUsage = lambda h: 650_000  # mW
    m.nvmlDeviceGetTemperature = lambda h, kind: 61
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=97, memory=40)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30)
    m.nvmlDeviceGetCurrentClocksThrottleReasons = reasons
    m.state = state
    return m


def test_decode_throttle_names_bits():
    assert decode_throttle(0) == []
    assert decode_throttle(0x1) == ["gpu_idle"]
    assert decode_throttle(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle(0x1000)[-1] == "unknown_0x1000"
    assert not is_throttling(0x1 | 0x2)  # idle and app clocks are not throttling
    assert is_throttling(0x8)


def test_sampler_samples_and_summarises():
    fake = make_fake_nvml(masks=(0,))
    with GpuSampler(interval=0.01, nvml=fake, index=0) as s:
        time.sleep(0.15)
    summ = s.summary()
    assert summ["available"] is True
    assert summ["name"] == "NVIDIA H100 80GB HBM3"
    assert summ["samples"] >= 5  # the thread really sampled
    assert summ["power_w"] == {"mean": 650.0, "max": 650.0}
    assert summ["temperature_c"]["max"] == 61.0
    assert summ["memory_used_gib"]["mean"] == pytest.approx(10.0)
    assert 1500 <= summ["sm_clock_mhz"]["mean"] <= summ["sm_clock_mhz"]["max"] <= 1540
    assert summ["throttled"] is False and summ["throttle_reasons"] == []
    assert fake.state["init"] == 1 and fake.state["shutdown"] == 1


def test_throttled_window_is_flagged():
    fake = make_fake_nvml(masks=(0, 0x4, 0))  # every third sample hits the power cap
    with GpuSampler(interval=0.01, nvml=fake, index=0) as s:
        time.sleep(0.1)
    summ = s.summary()
    assert summ["throttled"] is True
    assert "sw_power_cap" in summ["throttle_reasons"]
    assert 0 < summ["throttled_fraction"] < 1


def test_idle_reason_is_not_throttling():
    fake = make_fake_nvml(masks=(0x1,))
    with GpuSampler(interval=0.01, nvml=fake, index=0) as s:
        time.sleep(0.03)
    summ = s.summary()
    assert summ["throttle_reasons"] == ["gpu_idle"] and summ["throttled"] is False


def test_fake_module_through_import(monkeypatch):
    """Telemetry imports pynvml at call time: a module in sys.modules is what it uses."""
    fake = make_fake_nvml(masks=(0x40,))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    tel = Telemetry(device="cuda:0", interval=0.01)
    tel.gpu._index = 0  # no torch CUDA here: take NVML index 0
    with tel:
        time.sleep(0.05)
    summ = tel.summary()
    assert summ["gpu"]["available"] and summ["gpu"]["throttled"]
    assert summ["gpu"]["throttle_reasons"] == ["hw_thermal_slowdown"]
    assert summ["host"]["cores_logical"] >= 1
    assert "THROTTLED" in telemetry.short_summary(summ)


def test_no_nvml_carries_on(monkeypatch):
    def missing():
        raise ImportError("no pynvml")

    monkeypatch.setattr(telemetry, "import_nvml", missing)
    with Telemetry(device="cuda", interval=0.01) as tel:
        x = sum(range(1000))
    assert x == 499500
    summ = tel.summary()
    assert summ["gpu"] == {"available": False, "reason": "nvidia-ml-py not installed"}
    assert summ["host"]["rss_peak_gib"] > 0


def test_driver_failure_carries_on():
    with GpuSampler(nvml=make_fake_nvml(fail_init=True), index=0) as s:
        pass
    summ = s.summary()
    assert summ["available"] is False and "Driver Not Loaded" in summ["reason"]


def test_zero_devices():
    with GpuSampler(nvml=make_fake_nvml(count=0), index=0) as s:
        pass
    assert "0 devices" in s.summary()["reason"]


def test_cpu_run_states_why_no_gpu():
    with Telemetry(device="cpu", interval=0.01) as tel:
        pass
    summ = tel.summary()
    assert summ["gpu"]["available"] is False and summ["gpu"]["reason"].startswith("not a CUDA run")
    assert summ["host"]["cpu"]
    assert "no GPU telemetry" in telemetry.short_summary(summ)


def test_merge_summaries_weighted_and_flagged():
    fake = make_fake_nvml(masks=(0,))
    with GpuSampler(interval=0.01, nvml=fake, index=0) as a:
        time.sleep(0.03)
    fake2 = make_fake_nvml(masks=(0x8,))
    with GpuSampler(interval=0.01, nvml=fake2, index=0) as b:
        time.sleep(0.03)
    host = {"rss_peak_gib": 1.0, "cpu_util_pct": 50.0}
    merged = merge_summaries([{"duration_s": 1.0, "gpu": a.summary(), "host": host},
                              {"duration_s": 1.0, "gpu": b.summary(), "host": {**host, "rss_peak_gib": 2.0}}])
    assert merged["gpu"]["throttled"] and merged["gpu"]["throttled_windows"] == 1
    assert merged["gpu"]["power_w"]["max"] == 650.0
    assert merged["host"]["rss_peak_gib"] == 2.0
    assert merge_summaries([]) is None
