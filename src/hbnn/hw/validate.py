"""Argument checks shared by the hardware cost model (one-line :class:`ConfigError` messages)."""

from __future__ import annotations

import math
from typing import Any

from hbnn.errors import ConfigError

__all__ = ["MIN_BITS", "MAX_BITS", "FLOAT_BITS", "check_bits", "coerce_bits", "check_positive", "check_fraction"]

MIN_BITS = 1.0
MAX_BITS = 8.0
# Bits assigned to a layer without a quantizer (an ordinary float32 layer).
FLOAT_BITS = 32.0


def _number(value: Any, name: str) -> float:
    """``value`` as a finite float, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0.

    Raises:
        ConfigError: naming ``name``, the value and the allowed range.
    """
    x = _number(value, name)
    if x <= 0:
        raise ConfigError(f"{name}: expected a number > 0, got {value!r}")
    return x


def check_fraction(value: Any, name: str) -> float:
    """Return ``value`` as a float if it lies in (0, 1] (an occupancy or a LUT budget)."""
    x = _number(value, name)
    if not 0 < x <= 1:
        raise ConfigError(f"{name}: expected a fraction in (0, 1], got {value!r}")
    return x


def check_bits(value: Any, name: str = "bits") -> float:
    """Return ``value`` as a float if it is a bitwidth in [1, 8].

    Non-integers are allowed: they are the average bits of a heterogeneous mix
    (``1.4`` = the paper's 70/20/10 mix of 1/2/3 bits).
    """
    x = _number(value, name)
    if not MIN_BITS <= x <= MAX_BITS:
        raise ConfigError(
            f"{name}: expected bits in [{MIN_BITS:g}, {MAX_BITS:g}] (an integer, or a mix's average), got {value!r}"
        )
    return x


def coerce_bits(value: Any, name: str = "bits") -> float:
    """Average bits of a number, a numeric string, or a mix (``"70/20/10"``, ``{1: 0.7, ...}``).

    Mixes are parsed by :class:`hbnn.quant.BitMix` (imported only when needed).

    Example:
        >>> coerce_bits("70/20/10")
        1.4
    """
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None:
            return check_bits(number, name)
    if isinstance(value, (str, dict)):
        from hbnn.quant.mix import BitMix

        try:
            return check_bits(BitMix.coerce(value).average, name)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return check_bits(value, name)
