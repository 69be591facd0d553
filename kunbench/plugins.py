"""Plug-in lookup shared by the backend and suite registries: built-ins by module (imported only
when asked for, so one broken plug-in breaks only itself), third parties by Python entry point."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from kunbench.errors import KunbenchError


def plugin_names(builtin: dict[str, str], group: str) -> list[str]:
    return sorted(set(builtin) | {ep.name for ep in entry_points(group=group)})


def load_plugin(name: str, *, builtin: dict[str, str], attr: str, group: str, cls: type, kind: str) -> Any:
    """The `cls` instance registered as `name`: a built-in module's `attr`, else an entry point of
    `group` (an instance, or a zero-argument callable returning one). Errors are one line."""
    if name in builtin:
        return getattr(importlib.import_module(builtin[name]), attr)
    for ep in entry_points(group=group):
        if ep.name != name:
            continue
        try:
            spec = ep.load()
        except Exception as exc:
            raise KunbenchError(f"{kind} {name!r}: entry point {ep.value!r} failed to load: {exc}") from None
        if callable(spec) and not isinstance(spec, cls):
            spec = spec()
        if not isinstance(spec, cls):
            raise KunbenchError(f"entry point {ep.value!r} for {kind} {name!r} is not a {cls.__name__}")
        return spec
    raise KunbenchError(f"unknown {kind} {name!r} (available: {', '.join(plugin_names(builtin, group))})")
