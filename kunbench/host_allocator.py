"""The host heap of a timed process: glibc's malloc hands large freed blocks back to the kernel.

A training step frees and re-allocates the same large activation buffers every iteration. glibc
serves a block above its mmap threshold (128 KiB at start, adjusted up to 32 MiB) with a fresh
`mmap`, and trims the top of the heap back to the kernel past its trim threshold, so the next step
touches new pages: a page fault and a zeroed page for every 4 KiB. On a 2-core CPU this cost
InterFormer (`small`, batch 1024) 3.0 s of system time in a 4.0 s training step, and 0.1 s of a
0.55 s step at batch 256, timed alone; Kunlun, with smaller buffers, lost little. A CPU comparison then measured
the kernel's page zeroing, not the model (the GPU side has PyTorch's caching allocator for this).

`configure()` (called by the commands that time something, `kunbench run`, `selfcheck` and
`train`, before any work) raises both thresholds so freed memory stays in the heap and is reused:
the resident size stays at its peak instead of shrinking between steps. `KUNBENCH_HOST_MALLOC=system` keeps glibc's defaults. Other C libraries (musl,
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


GLIBC_HEAP_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                        "MALLOC_TRIM_THRESHOLD_")


def _from_environment(env: Mapping[str, str]) -> list[str]:
    """Heap settings the user gave glibc directly (its MALLOC_ variables, GLIBC_TUNABLES)."""
    return sorted(k for k in env if k in GLIBC_HEAP_VARIABLES or (k == "GLIBC_TUNABLES" and "malloc" in env[k]))


def configure(env: Mapping[str, str] | None = None) -> str:
    """Apply the setting `KUNBENCH_HOST_MALLOC` asks for (default `tuned`); returns what is in
    effect, as `status()` will report it. mallopt cannot be undone, so `system` after `tuned` in
    one process (tests, library users) reports the tuned heap it leaves in place."""
    global _applied
    env = os.environ if env is None else env
    own = _from_environment(env)
    if choice(env) == "system":
        if _applied is not None and _applied.startswith("glibc tuned"):
            return _applied  # already applied in this process; glibc keeps it
        _applied = f"system defaults ({ENV}=system" + (f"; {', '.join(own)} set" if own else "") + ")"
        return _applied
    mallopt = _glibc()
    if mallopt is None:
        _applied = "system defaults (not glibc)"
        return _applied
    mmap_ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trim_ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if mmap_ok and trim_ok:
        _applied = "glibc tuned: mmap threshold 1 GiB, no trim" + (f" (replacing {', '.join(own)})" if own else "")
    elif mmap_ok or trim_ok:
        _applied = ("glibc partly tuned: " + ("mmap threshold 1 GiB" if mmap_ok else "no trim")
                    + " (mallopt refused the other)")
    else:
        _applied = "system defaults (mallopt refused the thresholds)"
    return _applied


def status() -> str:
    """What configure() put in effect in this process."""
    return _applied if _applied is not None else "system defaults (not configured: kunbench used as a library)"
