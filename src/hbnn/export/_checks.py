"""Field checks shared by the packed-header validators (:mod:`hbnn.export.validate`,
:mod:`hbnn.export.provenance`): each failure is one :class:`hbnn.errors.FormatError` line
``<where>: <field>: invalid value <value>; allowed: <what>``.

Types are exact: a JSON boolean is not an integer, an integer is not a boolean, and
fields the writer stores as floats (``float(...)``) must be JSON floats, finite and
within float32's range (the engine computes in float32).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hbnn.schema import is_int, is_number
from hbnn.schema import short_repr as short
from hbnn.errors import FormatError

__all__ = ["MAX_INT", "FLOAT32_MAX", "At", "short", "is_int", "is_number"]

#: Upper bound of every integer field (and of a weight's entry count).
MAX_INT = 2 ** 31 - 1
#: Largest finite float32 (``3.4e38``).
FLOAT32_MAX = torch.finfo(torch.float32).max








class At:
    """Checks of the fields of one object; every failure names ``where`` and the field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, value: Any, allowed: str) -> FormatError:
        """``<where>: <field>: invalid value <value>; allowed: <allowed>``."""
        return FormatError(f"{self.where}: {field}: invalid value {short(value)}; allowed: {allowed}")

    def keys(self, prefix: str, obj: Any, required: tuple[str, ...]) -> dict:
        """``obj`` as a dict with exactly the keys ``required``."""
        if not isinstance(obj, dict):
            raise self.fail(prefix.rstrip(".") or "record", obj, f"an object with keys {', '.join(required)}")
        for key in required:
            if key not in obj:
                raise FormatError(f"{self.where}: {prefix}{key}: missing; required keys: {', '.join(required)}")
        for key in obj:
            if key not in required:
                name = key if isinstance(key, str) and key.isprintable() else short(key)
                raise FormatError(f"{self.where}: {prefix}{name}: unknown field; allowed: {', '.join(required)}")
        return obj

    def int(self, field: str, value: Any, lo: int = 0, hi: int = MAX_INT) -> int:
        """An integer (not a bool) in ``lo..hi``."""
        if not is_int(value) or not lo <= value <= hi:
            raise self.fail(field, value, f"an integer in {lo}..{hi}")
        return value

    def bool(self, field: str, value: Any) -> bool:
        """``true`` or ``false``."""
        if not isinstance(value, bool):
            raise self.fail(field, value, "true or false")
        return value

    def number(self, field: str, value: Any, allowed: str = "a finite number") -> float:
        """A float (as the writer stores it; integers are not floats) the engine's float32 can hold:
        finite, ``|value| <= 3.4e38``."""
        if not isinstance(value, float) or not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise self.fail(field, value, f"{allowed} (a float, |x| <= {FLOAT32_MAX:.4g})")
        return value

    def text(self, field: str, value: Any) -> str:
        """A string of printable characters."""
        if not isinstance(value, str) or not value.isprintable():
            raise self.fail(field, value, "a string of printable characters")
        return value

    def choice(self, field: str, value: Any, choices: tuple[str, ...]) -> str:
        """One of ``choices``."""
        if not isinstance(value, str) or value not in choices:
            raise self.fail(field, value, ", ".join(map(str, choices)))
        return value

    def ints(self, field: str, value: Any, lo: int, scalar: bool = False, n: int = 2) -> list[int]:
        """``n`` integers in ``lo..MAX_INT`` as a list (a single integer too, if ``scalar``)."""
        values = [value] * n if scalar and is_int(value) else value
        if not isinstance(values, list) or len(values) != n or not all(
                is_int(v) and lo <= v <= MAX_INT for v in values):
            form = "an integer or " if scalar else ""
            raise self.fail(field, value, f"{form}a list of {n} integers in {lo}..{MAX_INT}")
        return values
