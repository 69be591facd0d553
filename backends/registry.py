"""Backend registry: built-ins plus third-party backends from the `kunbench.backends` entry-point group.

A backend is a `BackendSpec`: a typed config dataclass with named size presets, a builder from
(config, dataset schema) to an `nn.Module` mapping a `Batch` to logits `[B]`, and an analytic
forward-FLOPs function (docs/models.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from torch import nn

from kunbench import overrides
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema
from kunbench.errors import KunbenchError

ENTRY_POINT_GROUP = "kunbench.backends"


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    config_cls: type
    presets: dict[str, Any]  # size name -> config instance
    default_preset: str
    build: Callable[[Any, DatasetSchema], nn.Module]
    # forward FLOPs per example for each example of `batch` (true lengths) -> tensor [B] float64
    flops_per_example: Callable[[Any, DatasetSchema, Batch], Any]

    def make_config(self, preset: str | None = None, sets: dict[str, Any] | None = None) -> Any:
        name = preset or self.default_preset
        if name not in self.presets:
            raise KunbenchError(f"backend {self.name!r} has no preset {name!r} "
                                f"(choose from {', '.join(self.presets)})")
        cfg = overrides.apply(self.presets[name], sets or {})
        validate = getattr(cfg, "validate", None)
        return validate() if validate is not None else cfg


def _builtin() -> dict[str, Callable[[], BackendSpec]]:
    """Lazily imported so `kunbench list` stays fast and one broken backend breaks only itself."""
    def wukong() -> BackendSpec:
        from kunbench.backends.wukong import SPEC
        return SPEC

    def interformer() -> BackendSpec:
        from kunbench.backends.interformer import SPEC
        return SPEC

    def kunlun() -> BackendSpec:
        from kunbench.backends.kunlun import SPEC
        return SPEC

    return {"wukong": wukong, "interformer": interformer, "kunlun": kunlun}


def available_backends() -> list[str]:
    names = set(_builtin())
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_backend(name: str) -> BackendSpec:
    builtin = _builtin()
    if name in builtin:
        return builtin[name]()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            spec = ep.load()
            spec = spec() if callable(spec) and not isinstance(spec, BackendSpec) else spec
            if not isinstance(spec, BackendSpec):
                raise KunbenchError(f"entry point {ep.value!r} for backend {name!r} is not a BackendSpec")
            return spec
    raise KunbenchError(f"unknown backend {name!r} (available: {', '.join(available_backends())})")
