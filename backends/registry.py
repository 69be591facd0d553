"""Backend registry: built-ins plus third-party backends from the `kunbench.backends` entry-point group.

A backend is a `BackendSpec`: a typed config dataclass with named size presets, a builder from
(config, dataset schema) to an `nn.Module` mapping a `Batch` to logits `[B]`, and an analytic
forward-FLOPs function (docs/models.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from kunbench import overrides
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema
from kunbench.errors import KunbenchError
from kunbench.plugins import load_plugin, plugin_names

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
    # the per-event-type truncation to the most recent N events the model applies itself: an int
    # for every type, a dict by type, or None (whole histories). Loaders cut there, which is exact
    # and saves decoding and copies.
    max_lengths_of: Callable[[Any, DatasetSchema | None], int | dict[str, int] | None] | None = None
    # the config keys that size the model, which the scaling suite multiplies: dotted paths into
    # nested configs, `*` for every entry of a dict of configs (`streams.*.d`)
    width_keys: tuple[str, ...] = ()
    # part of the suites' default backend list (a baseline such as logreg runs only when named)
    in_default_runs: bool = True
    # what a run should be told about this config on this dataset (a switch that changes nothing here)
    notes_of: Callable[[Any, DatasetSchema], list[str]] | None = None

    def make_config(self, preset: str | None = None, sets: dict[str, Any] | None = None) -> Any:
        name = preset or self.default_preset
        if name not in self.presets:
            raise KunbenchError(f"backend {self.name!r} has no preset {name!r} "
                                f"(choose from {', '.join(self.presets)})")
        cfg = overrides.apply(self.presets[name], sets or {})
        validate = getattr(cfg, "validate", None)
        return validate() if validate is not None else cfg

    def max_lengths(self, config: Any, schema: DatasetSchema | None = None) -> int | dict[str, int] | None:
        return self.max_lengths_of(config, schema) if self.max_lengths_of is not None else None

    def notes(self, config: Any, schema: DatasetSchema) -> list[str]:
        return list(self.notes_of(config, schema)) if self.notes_of is not None else []

    def scale(self, config: Any, factor: float) -> dict[str, Any]:
        """`--set` changes that multiply every width key by `factor`: integers round (at least 2; a
        width `d` to a multiple of 2 x its config's heads, which keeps RoPE's halves whole), tuples
        of integers (MLP widths) scale element-wise (at least 4)."""
        if not self.width_keys:
            raise KunbenchError(f"backend {self.name!r} declares no width_keys, so it cannot be scaled")
        if not factor > 0:
            raise KunbenchError(f"scale factor must be > 0, got {factor!r}")
        changes: dict[str, Any] = {}
        for key in self.width_keys:
            for path, owner, leaf in _expand(config, key.split("."), ""):
                v = getattr(owner, leaf)
                if isinstance(v, bool) or not (isinstance(v, int) or _int_tuple(v)):
                    raise KunbenchError(f"backend {self.name!r}: width key {path} is {v!r}, not an integer width")
                if isinstance(v, int):
                    heads = getattr(owner, "n_heads", getattr(owner, "heads", None))
                    nv = max(2, int(round(v * factor)))
                    if leaf == "d" and isinstance(heads, int) and heads > 0:
                        nv = max(2 * heads, int(round(v * factor / (2 * heads))) * 2 * heads)
                    changes[path] = nv
                else:
                    changes[path] = [max(4, int(round(x * factor))) for x in v]
        return changes


def _int_tuple(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _expand(config: Any, parts: list[str], prefix: str):
    """(dotted path, object holding the leaf, leaf name) for a width key; `*` walks a dict."""
    head, rest = parts[0], parts[1:]
    if not rest:
        if not hasattr(config, head):
            raise KunbenchError(f"width key {prefix}{head}: {type(config).__name__} has no field {head!r}")
        yield f"{prefix}{head}", config, head
        return
    if head == "*":
        if not isinstance(config, dict):
            raise KunbenchError(f"width key {prefix}*: not a dict of configs")
        for name, sub in config.items():
            yield from _expand(sub, rest, f"{prefix}{name}.")
        return
    if not hasattr(config, head):
        raise KunbenchError(f"width key {prefix}{head}: {type(config).__name__} has no field {head!r}")
    yield from _expand(getattr(config, head), rest, f"{prefix}{head}.")


# backend name -> module holding its SPEC
BUILTIN_MODULES = {"wukong": "kunbench.backends.wukong", "interformer": "kunbench.backends.interformer",
                   "kunlun": "kunbench.backends.kunlun", "logreg": "kunbench.backends.logreg"}


def available_backends() -> list[str]:
    return plugin_names(BUILTIN_MODULES, ENTRY_POINT_GROUP)


def get_backend(name: str) -> BackendSpec:
    return load_plugin(name, builtin=BUILTIN_MODULES, attr="SPEC", group=ENTRY_POINT_GROUP, cls=BackendSpec,
                       kind="backend")
