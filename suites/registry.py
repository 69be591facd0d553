"""Suite registry: the built-in suites plus third-party suites from the `kunbench.suites`
entry-point group.

A suite is a `SuiteSpec`: a name, a one-line description, and `run(ctx) -> SuiteOutput` where `ctx`
is a `kunbench.suites.context.SuiteContext` (backends, presets, dataset, device, dtype, repeats,
`--set` overrides, telemetry windows) and `SuiteOutput` holds the measurements (see
kunbench.results), presentation tables, notes and suite-specific extras. `kunbench run` wraps the
output into one result document with the environment stamp and telemetry, and writes it.

A third-party package registers a suite in its pyproject.toml:

    [project.entry-points."kunbench.suites"]
    mysuite = "mypkg.bench:SUITE"      # a SuiteSpec, or a zero-argument callable returning one
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kunbench.errors import KunbenchError
from kunbench.plugins import load_plugin, plugin_names

ENTRY_POINT_GROUP = "kunbench.suites"
# suite name -> module under kunbench.suites holding its SUITE
BUILTIN_MODULES = {"ne": "ne", "qps": "qps", "mfu": "mfu", "scaling": "scaling", "ablation": "ablation",
                   "selfcheck": "selfcheck", "kernels": "kernels", "claims": "claims"}
_MODULES = {name: f"kunbench.suites.{module}" for name, module in BUILTIN_MODULES.items()}


@dataclass
class SuiteOutput:
    measurements: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # suite settings and backend configs used
    dataset: dict[str, Any] | None = None
    backends: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    description: str
    run: Callable[[Any], SuiteOutput]
    # under torchrun, each rank trains on its own slice of the dataset (DDP) and rank 0 reports;
    # False: every rank runs the whole suite on its own device
    data_parallel: bool = False
    uses_data: bool = True  # needs a generated dataset (else only its schema, or none)
    # the `--set SUITE.KEY` keys it reads; a key outside them is rejected before any work (a typo
    # must not be ignored). None: not declared (plug-in suites), nothing checked.
    options: tuple[str, ...] | None = None
    trains: bool | None = None  # the old name of data_parallel, still read for plug-ins written against it
    cuda_dtype: str = "fp32"  # its dtype on a GPU when neither --dtype nor train.dtype names one

    def __post_init__(self) -> None:
        if self.trains is not None:
            object.__setattr__(self, "data_parallel", bool(self.trains))


def available_suites() -> list[str]:
    return plugin_names(_MODULES, ENTRY_POINT_GROUP)


def get_suite(name: str) -> SuiteSpec:
    return load_plugin(name, builtin=_MODULES, attr="SUITE", group=ENTRY_POINT_GROUP, cls=SuiteSpec, kind="suite")


def parse_suite_list(text: str | None) -> list[str]:
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not names:
        raise KunbenchError("--suite needs at least one name (e.g. --suite ablation or --suite ne,qps)")
    known = available_suites()
    for n in names:
        if n not in known:
            raise KunbenchError(f"unknown suite {n!r} (available: {', '.join(known)})")
    return list(dict.fromkeys(names))
