"""Telemetry around measured windows (docs/measurement.md): an NVML sampler thread for the GPU and
host figures (CPU model, cores, RSS peak).

    with Telemetry(device="cuda:0") as tel:
        ...measured work...
    summary = tel.summary()   # {"gpu": {...}, "host": {...}, "duration_s": ...}

GPU: every `interval` seconds the thread reads SM and memory clocks, power, temperature,
utilization (GPU and memory), memory used and the clock-throttle-reason bitmask. The summary gives
mean and max of each figure, the decoded throttle reasons seen in the window and `throttled`:
true when any sample carried a reason that slows the clocks (power cap, thermal, hardware
slowdown, power brake); idle and application-clock settings are not throttling.

Without nvidia-ml-py, without a driver or without a GPU the GPU part is
`{"available": False, "reason": ...}` and the window is measured anyway. The host part is always
there: CPU model, logical/physical cores, the process RSS peak over the window (sampled) and
since process start (getrusage), and the mean process CPU utilization.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Any

# NVML clocks-event / throttle reason bits (nvml.h: nvmlClocksThrottleReason*)
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# reasons that mean the clocks were held below what the work asked for
THROTTLING = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                        "hw_power_brake_slowdown"})

GPU_FIELDS = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temperature_c", "gpu_util_pct",
              "mem_util_pct", "memory_used_gib")


def decode_throttle(mask: int) -> list[str]:
    """Names of the bits set in an NVML throttle-reason mask (unknown bits as hex)."""
    mask = int(mask)
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(f"unknown_0x{unknown:x}")
    return names


def is_throttling(mask: int) -> bool:
    return any(name in THROTTLING for name in decode_throttle(mask))


def import_nvml():
    """The pynvml module (nvidia-ml-py), imported at call time so tests can substitute a fake."""
    return importlib.import_module("pynvml")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_index(device: Any) -> int:
    """The CUDA ordinal of a torch device spec ('cuda', 'cuda:1', torch.device); 0 when unknown."""
    try:
        import torch

        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == "cuda":
            if dev.index is not None:
                return dev.index
            return torch.cuda.current_device() if torch.cuda.is_available() else 0
    except Exception:  # telemetry must never break a run
        pass
    return 0


class GpuSampler:
    """Background NVML sampler for one GPU (see module docstring)."""

    def __init__(self, device: Any = None, interval: float = 0.1, nvml: Any = None, index: int | None = None):
        self.device = device
        self.interval = float(interval)
        self._nvml = nvml
        self._index = index
        self.samples: list[dict[str, Any]] = []
        self.available = False
        self.reason: str | None = None
        self.name: str | None = None
        self.nvml_index: int | None = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._initialized = False
        self.errors = 0
        self.t0 = self.t1 = 0.0

    # ---- set-up --------------------------------------------------------------------------
    def _resolve_handle(self, nvml) -> Any:
        """NVML handle of the GPU torch runs on: matched by UUID (CUDA_VISIBLE_DEVICES renumbers
        devices), else the CUDA ordinal taken as the NVML index."""
        if self._index is not None:
            return nvml.nvmlDeviceGetHandleByIndex(int(self._index)), int(self._index)
        cuda_index = _cuda_index(self.device)
        try:
            import torch

            if torch.cuda.is_available():
                uuid = str(torch.cuda.get_device_properties(cuda_index).uuid).removeprefix("GPU-")
                for i in range(nvml.nvmlDeviceGetCount()):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    if _text(nvml.nvmlDeviceGetUUID(h)).removeprefix("GPU-") == uuid:
                        return h, i
        except Exception:
            pass
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index), cuda_index

    def start(self) -> "GpuSampler":
        try:
            nvml = self._nvml or import_nvml()
            self._nvml = nvml
        except ImportError:
            self.reason = "nvidia-ml-py not installed"
            return self
        try:
            nvml.nvmlInit()
            self._initialized = True
            if nvml.nvmlDeviceGetCount() < 1:
                self.reason = "no GPU (NVML reports 0 devices)"
                return self
            self._handle, self.nvml_index = self._resolve_handle(nvml)
            self.name = _text(nvml.nvmlDeviceGetName(self._handle))
        except Exception as exc:  # NVMLError subclasses vary by driver state
            self.reason = f"no GPU (NVML: {exc})"
            return self
        self.available = True
        self._stop.clear()
        self.t0 = time.perf_counter()
        self._sample()  # one sample even for windows shorter than the interval
        self._thread = threading.Thread(target=self._run, name="kunbench-nvml", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=max(5.0, 5 * self.interval))
            self._thread = None
            if self.available:
                self._sample()
        self.t1 = time.perf_counter()
        if self._initialized:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._initialized = False

    def __enter__(self) -> "GpuSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- sampling ------------------------------------------------------------------------
    def _read(self, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception:
            self.errors += 1
            return None

    def _sample(self) -> None:
        nvml, h = self._nvml, self._handle
        s: dict[str, Any] = {"t": time.perf_counter() - self.t0}
        sm = self._read(nvml.nvmlDeviceGetClockInfo, h, getattr(nvml, "NVML_CLOCK_SM", 1))
        mem = self._read(nvml.nvmlDeviceGetClockInfo, h, getattr(nvml, "NVML_CLOCK_MEM", 2))
        power = self._read(nvml.nvmlDeviceGetPowerUsage, h)  # milliwatts
        temp = self._read(nvml.nvmlDeviceGetTemperature, h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        util = self._read(nvml.nvmlDeviceGetUtilizationRates, h)
        meminfo = self._read(nvml.nvmlDeviceGetMemoryInfo, h)
        reasons_fn = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                      or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        mask = self._read(reasons_fn, h) if reasons_fn is not None else None
        s["sm_clock_mhz"] = None if sm is None else float(sm)
        s["mem_clock_mhz"] = None if mem is None else float(mem)
        s["power_w"] = None if power is None else float(power) / 1000.0
        s["temperature_c"] = None if temp is None else float(temp)
        s["gpu_util_pct"] = None if util is None else float(util.gpu)
        s["mem_util_pct"] = None if util is None else float(util.memory)
        s["memory_used_gib"] = None if meminfo is None else float(meminfo.used) / 2**30
        s["throttle_mask"] = None if mask is None else int(mask)
        self.samples.append(s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    # ---- summary -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason or "sampler not started"}
        out: dict[str, Any] = {"available": True, "name": self.name, "index": self.nvml_index,
                               "samples": len(self.samples), "interval_s": self.interval,
                               "duration_s": (self.t1 or time.perf_counter()) - self.t0}
        for field in GPU_FIELDS:
            vals = [s[field] for s in self.samples if s.get(field) is not None]
            out[field] = ({"mean": sum(vals) / len(vals), "max": max(vals)} if vals else None)
        masks = [s["throttle_mask"] for s in self.samples if s.get("throttle_mask") is not None]
        combined = 0
        for m in masks:
            combined |= m
        throttled_samples = sum(1 for m in masks if is_throttling(m))
        out["throttle_reasons"] = decode_throttle(combined)
        out["throttled"] = throttled_samples > 0
        out["throttled_fraction"] = throttled_samples / len(masks) if masks else 0.0
        out["read_errors"] = self.errors
        return out


# ---- host -----------------------------------------------------------------------------------
def host_info() -> dict[str, Any]:
    from kunbench.environment import cpu_model

    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"cpu": cpu_model(), "cores_logical": os.cpu_count(), "cores_physical": physical,
            "cores_usable": affinity}


def rss_peak_process_gib() -> float | None:
    """Peak resident set size of this process since it started (getrusage; KiB on Linux)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**30 if sys.platform == "darwin" else 2**20)
    except Exception:
        return None


def load_average() -> float | None:
    """1-minute load average: above the core count, other processes competed for the CPU."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


class HostSampler:
    """Samples this process's RSS and CPU time in the window (psutil; getrusage as fallback)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.rss: list[float] = []
        self._proc = None
        try:
            import psutil

            self._proc = psutil.Process()
        except Exception:
            self._proc = None
        self.cpu0 = self.cpu1 = 0.0
        self.t0 = self.t1 = 0.0

    def _cpu_time(self) -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = self._cpu_time()
        self.sample()

    def sample(self) -> None:
        if self._proc is not None:
            try:
                self.rss.append(self._proc.memory_info().rss / 2**30)
            except Exception:
                pass

    def stop(self) -> None:
        self.sample()
        self.t1 = time.perf_counter()
        self.cpu1 = self._cpu_time()

    def summary(self) -> dict[str, Any]:
        wall = max(self.t1 - self.t0, 1e-9)
        return {
            **host_info(),
            "loadavg_1m": load_average(),
            "rss_peak_gib": max(self.rss) if self.rss else None,
            "rss_peak_process_gib": rss_peak_process_gib(),
            "cpu_util_pct": 100.0 * (self.cpu1 - self.cpu0) / wall,  # 100 = one core busy
        }


class Telemetry:
    """GPU (NVML) and host sampling around one measured window; one thread for both."""

    def __init__(self, device: Any = None, interval: float = 0.1, nvml: Any = None, gpu: bool | None = None,
                 label: str | None = None):
        self.label = label
        want_gpu = gpu if gpu is not None else _is_cuda(device)
        self.gpu = GpuSampler(device, interval, nvml) if want_gpu else None
        self.host = HostSampler(interval)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = self.t1 = 0.0

    def __enter__(self) -> "Telemetry":
        self.t0 = time.perf_counter()
        self.host.start()
        if self.gpu is not None:
            self.gpu.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kunbench-host", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.host.sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.gpu is not None:
            self.gpu.stop()
        self.host.stop()
        self.t1 = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        gpu = (self.gpu.summary() if self.gpu is not None
               else {"available": False, "reason": f"not a CUDA run; {_gpu_probe()}"})
        out = {"duration_s": (self.t1 or time.perf_counter()) - self.t0, "gpu": gpu, "host": self.host.summary()}
        if self.label:
            out["label"] = self.label
        return out


_PROBE: list[str] = []


def _gpu_probe() -> str:
    """What NVML says on this machine, probed once: why no GPU is sampled on a CPU run."""
    if not _PROBE:
        try:
            from kunbench.environment import gpu_info

            info = gpu_info()
            _PROBE.append(info.get("reason", "") if not info.get("available") else
                          "GPU present but unused: " + ", ".join(d["name"] for d in info["devices"]))
        except Exception as exc:
            _PROBE.append(f"NVML probe failed: {exc}")
    return _PROBE[0]


def _is_cuda(device: Any) -> bool:
    if device is None:
        return False
    return str(device).startswith("cuda")


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary over several windows: duration-weighted means, overall max, throttled if any was."""
    summaries = [s for s in summaries if s]
    if not summaries:
        return None
    total = sum(s.get("duration_s") or 0.0 for s in summaries) or 1.0
    gpus = [s["gpu"] for s in summaries if s.get("gpu", {}).get("available")]
    if gpus:
        gpu: dict[str, Any] = {"available": True, "name": gpus[0].get("name"), "index": gpus[0].get("index"),
                               "samples": sum(g.get("samples", 0) for g in gpus), "windows": len(gpus)}
        for field in GPU_FIELDS:
            pairs = [(g[field], g.get("duration_s") or 0.0) for g in gpus if g.get(field)]
            if pairs:
                w = sum(d for _, d in pairs) or float(len(pairs))
                gpu[field] = {"mean": sum(v["mean"] * (d or 1.0) for v, d in pairs) / (w if w else 1.0),
                              "max": max(v["max"] for v, _ in pairs)}
            else:
                gpu[field] = None
        reasons: list[str] = []
        for g in gpus:
            reasons += [r for r in g.get("throttle_reasons", []) if r not in reasons]
        gpu["throttle_reasons"] = reasons
        gpu["throttled"] = any(g.get("throttled") for g in gpus)
        gpu["throttled_windows"] = sum(1 for g in gpus if g.get("throttled"))
    else:
        gpu = dict(summaries[0].get("gpu") or {"available": False, "reason": "no telemetry"})
    hosts = [s["host"] for s in summaries if s.get("host")]
    host = dict(hosts[-1]) if hosts else {}
    peaks = [h.get("rss_peak_gib") for h in hosts if h.get("rss_peak_gib") is not None]
    host["rss_peak_gib"] = max(peaks) if peaks else None
    loads = [h.get("loadavg_1m") for h in hosts if h.get("loadavg_1m") is not None]
    host["loadavg_1m_max"] = max(loads) if loads else None
    utils = [(h.get("cpu_util_pct"), s.get("duration_s") or 0.0) for h, s in zip(hosts, summaries)
             if h.get("cpu_util_pct") is not None]
    if utils:
        host["cpu_util_pct"] = sum(u * d for u, d in utils) / total
    return {"duration_s": total, "windows": len(summaries), "gpu": gpu, "host": host}


def short_summary(summary: dict[str, Any] | None) -> str:
    """One line for tables: 'H100: 1755 MHz sm, 650/700 W, 61 C max, util 98%' or the reason."""
    if not summary:
        return "-"
    gpu = summary.get("gpu") or {}
    host = summary.get("host") or {}
    busy = ""
    load = host.get("loadavg_1m_max", host.get("loadavg_1m"))
    cores = host.get("cores_usable") or host.get("cores_logical")
    if load is not None and cores and load > cores:
        busy = f"; host BUSY: load {load:.1f} on {cores} cores (other processes competed)"
    if not gpu.get("available"):
        rss = host.get("rss_peak_gib")
        return (f"no GPU telemetry ({gpu.get('reason', 'n/a')}); RSS peak {rss:.2f} GiB" if rss else
                f"no GPU telemetry ({gpu.get('reason', 'n/a')})") + busy

    def mm(field: str, fmt: str) -> str:
        v = gpu.get(field)
        return "n/a" if not v else f"{v['mean']:{fmt}}/{v['max']:{fmt}}"

    flag = " THROTTLED (" + ",".join(r for r in gpu.get("throttle_reasons", []) if r in THROTTLING) + ")" \
        if gpu.get("throttled") else ""
    return (f"sm {mm('sm_clock_mhz', '.0f')} MHz, {mm('power_w', '.0f')} W, {mm('temperature_c', '.0f')} C, "
            f"util {mm('gpu_util_pct', '.0f')}% (mean/max){flag}{busy}")
