"""The host heap of a timed process: glibc's malloc hands large freed blocks back to the kernel.

A training step frees and re-allocates the same large activation buffers every iteration. glibc
serves a block above its mmap threshold (128 KiB at start, adjusted up to 32 MiB) with a fresh
`mmap`, and trims the top of the heap back to the kernel past its trim threshold, so the next step
touches new pages: a page fault and a zeroed page for every 4 KiB. On a 2-core CPU this cost
InterFormer (`small`, batch 1024) 3.0 s of system time in a 4.0 s training step, and 0.1 s of a
0.55 s step at batch 256; Kunlun, with smaller buffers, lost little. A CPU comparison then measured
the kernel's page zeroing, not the model (the GPU side has PyTorch's caching allocator for this).

`configure()` (called by the `kunbench` command before any work) raises both thresholds so freed
memory stays in the heap and is reused: the resident size stays at its peak instead of shrinking
between steps. `KUNBENCH_HOST_MALLOC=system` keeps glibc's defaults. Other C libraries (musl,
macOS) are left alone. Results record what was in effect (`environment.host_malloc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Mapping

from kunbench.errors import KunbenchError

ENV = "KUNBENCH_HOST_MALLOC"
CHOICES = ("tuned", "system")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt's int takes: never trim in practice

# what configure() did in this process: the heap settings are process-wide, so is this record
_applied: str | None = None


def choice(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    value = env.get(ENV, "tuned").strip().lower() or "tuned"
    if value not in CHOICES:
        raise KunbenchError(f"{ENV} must be one of {', '.join(CHOICES)}, got {env.get(ENV)!r}")
    return value


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def configure(env: Mapping[str, str] | None = None) -> str:
    """Apply the setting `KUNBENCH_HOST_MALLOC` asks for (default `tuned`); returns what is in
    effect, as `status()` will report it."""
    global _applied
    if choice(env) == "system":
        _applied = f"system defaults ({ENV}=system)"
        return _applied
    mallopt = _glibc()
    if mallopt is None:
        _applied = "system defaults (not glibc)"
    elif mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _applied = "glibc tuned: mmap threshold 1 GiB, no trim"
    else:
        _applied = "system defaults (mallopt refused the thresholds)"
    return _applied


def status() -> str:
    """What configure() put in effect in this process."""
    return _applied if _applied is not None else "system defaults (not configured: kunbench used as a library)"
