"""Dict <-> dataclass: the one schema mechanism behind every hbnn config.

A config class is a dataclass that inherits :class:`Schema`. :meth:`Schema.from_dict`
builds it from the dict/YAML form:

* every field's annotation is enforced (ints accepted for floats, numeric strings such as
  YAML 1.1's ``1e-4`` read as numbers, integral floats for ints); bools are not numbers,
  other strings (``"nan"``, ``"1_000"``, ``" 3"``) are not numbers, and floats must be
  finite (NaN and +-inf refused with "a finite number") unless the field is annotated
  :data:`NonFiniteFloat`; YAML 1.1 reads ``yes``/``no``/``on``/``off`` as bools, which
  bool fields accept and other fields refuse;
* unknown keys raise a :class:`~hbnn.errors.ConfigError` that lists the allowed ones, and
  so do missing keys of fields without a default;
* fields annotated with another :class:`Schema` class (also ``X | None`` and
  ``dict[str, X | None]``) are built recursively;
* a value that is not a mapping goes to the class's :meth:`Schema.from_value` hook (short
  forms such as ``weight: 1.4`` for a :class:`hbnn.quant.QuantSpec`);
* errors raised by a nested section's constructor are prefixed with its dotted path
  (``heuristic: ...`` in ``quant.default.weight`` reads ``quant.default.weight.heuristic: ...``).

:meth:`Schema.to_dict` is the inverse (fields in declaration order, nested schemas as
their own ``to_dict``); :meth:`Schema.as_written` returns the mapping an object was built
from, as given. Constraints between and on values stay in each class's
``__post_init__``, written with the shared helpers :func:`check` and :func:`check_choice`,
so every message reads ``<key>: invalid value <value>; allowed: <what>`` (one line: the
value's ``repr``, cut to :data:`MAX_VALUE_CHARS` characters).

Example:
    >>> @dataclass
    ... class Opt(Schema):
    ...     lr: float = 0.1
    >>> Opt.from_dict({"lr": "1e-3"}).lr
    0.001
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Iterable, Mapping

from hbnn.errors import ConfigError

__all__ = ["is_int", "is_number", "Schema", "NonFiniteFloat", "MAX_VALUE_CHARS", "coerce_value", "invalid", "check", "check_choice",
           "short_repr"]

#: Annotation of a float field that accepts NaN and +-inf (plain ``float`` fields refuse them).
NonFiniteFloat = Annotated[float, "non-finite allowed"]

#: Longest value ``repr`` quoted in an error message (longer ones end in ``...``).
MAX_VALUE_CHARS = 80

# A number as YAML 1.1 leaves it a string ("1e-4": no dot in the mantissa); nothing else.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (JSON/YAML ``true`` is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any, finite: bool = True) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``; finite unless ``finite=False``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and (not finite or math.isfinite(value))


def short_repr(value: Any) -> str:
    """``repr(value)`` on one line, at most :data:`MAX_VALUE_CHARS` characters."""
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    """The one error format: ``<key>: invalid value <value!r>; allowed: <allowed>`` (one line)."""
    return ConfigError(f"{key}: invalid value {short_repr(value)}; allowed: {allowed}")


def check(cond: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :func:`invalid` unless ``cond``."""
    if not cond:
        raise invalid(key, value, allowed)


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """Raise :func:`invalid` (listing ``choices``) unless ``value`` is one of them."""
    choices = tuple(choices)
    if value not in choices:
        raise invalid(key, value, ", ".join(choices))


def _is_schema(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Schema)


def coerce_value(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in that type.

    Accepts ints for floats, numeric strings (:data:`_NUMBER`) for floats, integral
    floats for ints; never bools for numbers; finite floats only, except for
    :data:`NonFiniteFloat`; builds :class:`Schema` annotations with
    :meth:`Schema.from_dict`; copies mappings.
    """
    if tp == NonFiniteFloat:
        return _coerce_float(value, key, finite=False)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce_value(value, inner, key)
    if _is_schema(tp):
        return tp.from_dict(value, key)
    if tp is bool:
        check(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        return _coerce_float(value, key, finite=True)
    if tp is str:
        check(isinstance(value, str), key, value, "a string")
        return value
    if tp is dict or origin is dict:
        check(isinstance(value, Mapping), key, value, "a mapping")
        if not args:
            return copy.deepcopy(dict(value))
        return {k: coerce_value(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        check(isinstance(value, (list, tuple)), key, value, "a list")
        return [coerce_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    raise AssertionError(f"unsupported config annotation {tp!r}")  # internal invariant


def _coerce_float(value: Any, key: str, *, finite: bool) -> float:
    if isinstance(value, str) and _NUMBER.fullmatch(value):  # YAML 1.1 reads "1e-4" as a string
        value = float(value)
    check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value,
          "a finite number" if finite else "a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise invalid(key, value, "a finite number") from None
    check(math.isfinite(number) or not finite, key, value, "a finite number")
    return number


def _plain(value: Any) -> Any:
    if isinstance(value, Schema):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


@dataclass
class Schema:
    """Base of every config dataclass: :meth:`from_dict` and :meth:`to_dict` (see the module)."""

    @classmethod
    def from_value(cls, value: Any, where: str) -> "Schema":
        """Build from a value that is not a mapping; by default that is an error.

        Override for short forms (the override must return an instance or raise).
        """
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of settings, got {short_repr(value)}")

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Any:
        """Build from the dict form (``None`` = all defaults); an instance passes through.

        Args:
            data: a mapping of field name -> value, or a short form (:meth:`from_value`).
            where: the dotted path of this section, for error messages.

        Raises:
            ConfigError: an unknown key (listing the allowed ones), a value of the wrong
                type, or a constraint of ``__post_init__``.
        """
        if isinstance(data, cls):
            return data
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            return cls.from_value(data, where)
        hints = typing.get_type_hints(cls, include_extras=True)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in data if k not in names]
        if unknown:
            name = unknown[0] if isinstance(unknown[0], str) and unknown[0].isprintable() else short_repr(unknown[0])
            key = f"{where}.{name}" if where else name
            raise ConfigError(f"unknown key {key}; allowed in {where or cls.__name__}: {', '.join(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where or cls.__name__}: missing key {missing[0]}")
        kwargs = {name: coerce_value(data[name], hints[name], f"{where}.{name}" if where else name)
                  for name in names if name in data}
        try:
            obj = cls(**kwargs)
        except ConfigError as exc:
            if not where:
                raise
            message = str(exc)
            field = message.split(":", 1)[0].split(".", 1)[0]
            raise ConfigError(f"{where}.{message}" if field in names else f"{where}: {message}") from None
        object.__setattr__(obj, "_written", copy.deepcopy(dict(data)))
        return obj

    def as_written(self) -> dict | None:
        """The mapping :meth:`from_dict` built this object from, as given (short forms and
        all); None when it was built otherwise. Records that must replay byte-identically
        (a run's ``quant`` section, a point's spec) use it; :meth:`to_dict` is the explicit form.
        """
        written = getattr(self, "_written", None)
        return None if written is None else copy.deepcopy(written)

    def to_dict(self) -> dict[str, Any]:
        """The plain (JSON/YAML-safe) dict form, fields in declaration order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
