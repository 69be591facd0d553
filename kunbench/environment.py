"""The environment stamp (docs/measurement.md): software versions, host, CPU and GPU through NVML."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from kunbench import host_allocator


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info() -> dict[str, Any]:
    """GPUs as NVML sees them; {'available': False, 'reason': ...} when there is none."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses vary by driver state
        return {"available": False, "reason": f"no GPU (NVML: {exc})"}
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            devices.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_gib": round(mem.total / 2**30, 2),
            })
        return {
            "available": bool(devices),
            "driver": driver.decode() if isinstance(driver, bytes) else driver,
            "devices": devices,
            **({} if devices else {"reason": "no GPU (NVML reports 0 devices)"}),
        }
    except Exception as exc:  # a query a container or MIG slice refuses: the run's result still gets written
        return {"available": False, "reason": f"NVML query failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def environment_stamp() -> dict[str, Any]:
    import torch

    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "kunbench": _pkg_version("kunbench"),
        "torch": torch.__version__,
        "triton": _pkg_version("triton"),
        "numpy": _pkg_version("numpy"),
        "pyarrow": _pkg_version("pyarrow"),
        "cuda": cuda,
        "git_sha": git_sha(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_info(),
        "host_malloc": host_allocator.status(),
    }
