"""Dict -> dataclass with type checks: the schema machinery behind :mod:`hbnn.train.config`.

Every field's annotation is enforced (ints accepted for floats, numeric strings such as
YAML 1.1's ``1e-4`` read as numbers); unknown keys raise a :class:`ConfigError` that lists
the allowed ones. Nested dataclass fields are built recursively.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Mapping

from hbnn.errors import ConfigError

__all__ = ["coerce_value", "build_dataclass"]


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; accept ints for floats, numeric strings."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce_value(value, inner, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is invalid; expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: {value!r} is invalid; expected an integer")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: {value!r} is invalid; expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: {value!r} is invalid; expected a string")
    if tp is dict or origin is dict:
        if isinstance(value, Mapping):
            return copy.deepcopy(dict(value))
        raise ConfigError(f"{key}: {value!r} is invalid; expected a mapping")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is invalid; expected a list")
        return [coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    raise AssertionError(f"unsupported config annotation {tp!r}")  # internal invariant


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys (listing allowed ones)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]}; allowed in "
                          f"{prefix or 'the top level'}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, data[name], key)
        else:
            kwargs[name] = coerce_value(data[name], tp, key)
    return cls(**kwargs)
