"""Apply TOML files and `--set key=value` overrides to typed, frozen dataclass configs.

Keys are dotted paths into nested dataclasses; values are parsed as TOML scalars so `3`, `0.5`,
`true` and `"text"` keep their types, and anything else is a plain string.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(items: typing.Iterable[str]) -> dict[str, Any]:
    """Turn `["a.b=1", ...]` into `{"a.b": 1, ...}`, rejecting malformed items by name."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KunbenchError(f"--set expects key=value, got {item!r}")
        out[key] = parse_value(value.strip())
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise KunbenchError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KunbenchError(f"config file {p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes UTF-8 itself and lets this through
        raise KunbenchError(f"config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise KunbenchError(f"config file {p}: cannot read it ({exc.strerror or exc})") from None


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys; tables the config treats as values stay whole."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "on", "yes", "false", "off", "no"}:
            return value.lower() in {"true", "on", "yes"}
        raise KunbenchError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise KunbenchError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KunbenchError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        return str(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        (elem,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        # "a, b", "[a, b]", a TOML list and a single value all mean a tuple; an empty element is a typo
        if isinstance(value, str):
            items = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",")]
            if any(v == "" for v in items):
                raise KunbenchError(f"{key}: empty element in {value!r} (write a comma list such as a,b)")
        else:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(parse_value(v) if isinstance(v, str) else v, elem, key) for v in items)
    return value


def apply(config: Any, assignments: dict[str, Any]) -> Any:
    """Return a copy of the dataclass `config` with dotted-key assignments applied and typed."""
    for key, value in assignments.items():
        config = _apply_one(config, key.split("."), value, key)
    return config


def _apply_one(config: Any, path: list[str], value: Any, full_key: str) -> Any:
    hook = getattr(config, "apply_override", None)
    if hook is not None:
        replaced = hook(path, value, full_key)
        if replaced is not NotImplemented:
            return replaced
    fields = {f.name: f for f in dataclasses.fields(config)}
    name = path[0]
    if name not in fields:
        known = ", ".join(sorted(fields))
        raise KunbenchError(f"unknown config key {full_key!r} (known at this level: {known})")
    current = getattr(config, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise KunbenchError(f"config key {full_key!r}: {name!r} has no sub-keys")
        return dataclasses.replace(config, **{name: _apply_one(current, path[1:], value, full_key)})
    if dataclasses.is_dataclass(current):
        raise KunbenchError(f"config key {full_key!r} is a section; set one of its keys")
    hints = typing.get_type_hints(type(config))
    return dataclasses.replace(config, **{name: _coerce(value, hints[name], full_key)})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
