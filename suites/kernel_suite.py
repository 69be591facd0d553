"""kernels: the GDPA operator benchmark of suites/kernels.py (run_kernels_suite), wired into the
registry so `kunbench run --suite kernels` writes it like every other suite (environment stamp,
telemetry window, one result document).

Options (kernels.KEY=V): shapes=[names], implementations=[triton, eager, compile, sdpa_softmax],
passes=[fwd, "fwd+bwd"], warmup=N. --repeat sets the timed repeats per case, --dtype the dtype.
"""

from __future__ import annotations

import inspect
from typing import Any

from kunbench.errors import KunbenchError
from kunbench.suites.common import SuiteContext, world_note
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "kernels"


def _runner():
    try:
        from kunbench.suites.kernels import run_kernels_suite
    except ImportError as exc:
        raise KunbenchError(f"the kernels suite is not available: {exc}") from None
    return run_kernels_suite


def run(ctx: SuiteContext) -> SuiteOutput:
    fn = _runner()
    accepted = set(inspect.signature(fn).parameters)
    kwargs: dict[str, Any] = {"device": ctx.device, "out_dir": None}
    if ctx.opts.dtype:
        kwargs["dtype"] = ctx.opts.dtype
    if ctx.opts.repeat is not None:
        kwargs["repeats"] = ctx.opts.repeat
    for key in ("shapes", "implementations", "passes", "warmup"):
        v = ctx.suite_option(key, None)
        if v is not None:
            kwargs[key] = v if not isinstance(v, str) or key == "warmup" else [v]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise KunbenchError(f"kernels suite: run_kernels_suite does not take {', '.join(unknown)}")
    ctx.log("kernels: GDPA operator grid ...")
    with ctx.window("kernels"):
        doc = fn(**kwargs)
    ms = [dict(m) for m in doc.get("metrics", [])]
    for m in ms:
        m.setdefault("suite", NAME)
    tables = list(doc.get("tables") or [])
    for t in tables:
        t.setdefault("label_columns", 3)
        t["notes"] = list(t.get("notes") or []) + [world_note(ctx)]
    impls = sorted({m["backend"] for m in ms})
    return SuiteOutput(measurements=ms, tables=tables, notes=[],
                       extra={"rows": doc.get("rows", [])}, config=dict(doc.get("config") or {}),
                       dataset=None, backends=impls)


SUITE = SuiteSpec(NAME, "GDPA operator: latency, TFLOP/s, % peak, speedup vs eager, error (Triton on CUDA)", run,
                  trains=False, uses_data=False,
                  options=('shapes', 'implementations', 'passes', 'warmup'))
