"""Ops per step, from torch.profiler: aten operators dispatched on the CPU and, on a GPU, CUDA
kernel launches. A model that spends its step launching thousands of tiny kernels is launch-bound
on a GPU whatever its FLOPs; this is the number that shows it."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable

import torch

from kunbench.hardware import sync


@contextlib.contextmanager
def _quiet_native_stderr():
    """The profiler's C++ side prints a line at every start and stop straight to fd 2 (no setting
    turns it off); send fd 2 to /dev/null meanwhile. Python exceptions still propagate."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): leave it be
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def count_ops(step: Callable[[], Any], device: torch.device) -> dict[str, int]:
    """Run `step()` once under the profiler: `{"aten_ops": n}` plus `{"cuda_launches": n}` on CUDA
    (nested aten calls count once each, as dispatched). A CUDA step launches kernels, so a count of
    zero means the profiler could not see them (CUPTI not permitted in a container) and the key is
    left out rather than reported as 0."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    cuda = device.type == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with _quiet_native_stderr(), profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.events()
    out = {"aten_ops": sum(1 for e in events if e.name.startswith("aten::"))}
    if cuda:
        launches = sum(1 for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                       "cudaLaunchKernelExC", "cuLaunchKernelEx"))
        if launches:
            out["cuda_launches"] = launches
    return out
