"""Bit mixes: the paper's ``DistFromAvg`` — which bitwidths a tensor uses and in what share.

A mix ``{b: p_b}`` says that a fraction ``p_b`` of the tensor's entries gets ``b`` bits
(``sum p_b = 1``); its average bitwidth is ``sum b * p_b``. Algorithm 1 turns a mix into
per-entry counts ``round(p_b * N)``, with rounding leftovers given to the largest bitwidth.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["BitMix", "MIN_BITS", "MAX_BITS", "PAPER_MIXES"]

MIN_BITS = 1
MAX_BITS = 8
_SUM_TOLERANCE = 1e-6

# The paper's error-study mixes (Fig. 2a), in tenths of 1/2/3-bit entries.
PAPER_MIXES: dict[float, tuple[int, int, int]] = {
    1.1: (9, 1, 0),
    1.2: (9, 0, 1),
    1.3: (7, 3, 0),
    1.4: (7, 2, 1),
    1.5: (5, 5, 0),
    1.6: (6, 2, 2),
    1.7: (5, 3, 2),
    1.8: (4, 4, 2),
    1.9: (4, 3, 3),
}


@dataclass(frozen=True)
class BitMix:
    """A validated bit mix: ``fractions[k]`` of the entries get ``bits[k]`` bits.

    Entries with a zero fraction are dropped, so ``bits`` lists exactly the bitwidths
    that occur. Bits are integers in 1..8; fractions are non-negative and sum to 1.

    Example:
        >>> BitMix({1: 0.7, 2: 0.2, 3: 0.1}).average
        1.4
        >>> BitMix.from_average(1.4) == BitMix({1: 0.7, 2: 0.2, 3: 0.1})
        True
    """

    bits: tuple[int, ...]
    fractions: tuple[float, ...]

    def __init__(self, mix: Mapping[int, float]):
        if not isinstance(mix, Mapping) or not mix:
            raise ValueError(f"mix: expected a non-empty {{bits: fraction}} mapping, got {mix!r}")
        items = []
        for b, p in mix.items():
            items.append((_check_bits(b), _check_fraction(b, p)))
        total = sum(p for _, p in items)
        if abs(total - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"mix: fractions must sum to 1, got {total:.6g} for {dict(mix)!r}")
        kept = sorted((b, p) for b, p in items if p > 0)
        object.__setattr__(self, "bits", tuple(b for b, _ in kept))
        object.__setattr__(self, "fractions", tuple(p for _, p in kept))

    # ------------------------------------------------------------------ builders
    @classmethod
    def homogeneous(cls, bits: int) -> "BitMix":
        """Every entry gets ``bits`` bits."""
        return cls({_check_bits(bits): 1.0})

    @classmethod
    def from_average(cls, average: float) -> "BitMix":
        """The paper's mix for an average of 1.1..1.9 bits, or the homogeneous mix for an integer.

        Raises:
            ValueError: for any other average (the message lists the allowed ones).
        """
        if isinstance(average, bool) or not isinstance(average, (int, float)) or not math.isfinite(average):
            raise ValueError(f"average: expected a number, got {average!r}")
        if float(average).is_integer():
            return cls.homogeneous(int(average))
        key = round(float(average), 1)
        if abs(key - average) > 1e-9 or key not in PAPER_MIXES:
            allowed = ", ".join(str(k) for k in PAPER_MIXES)
            raise ValueError(
                f"average: no paper mix for {average!r} bits; allowed: integers {MIN_BITS}..{MAX_BITS} "
                f"or {allowed} (pass an explicit mix such as {{1: 0.8, 3: 0.2}} otherwise)"
            )
        tenths = PAPER_MIXES[key]
        return cls({b + 1: t / 10 for b, t in enumerate(tenths)})

    @classmethod
    def parse(cls, text: str) -> "BitMix":
        """Parse ``"70/20/10"`` (percent of 1/2/3-bit entries; any number of slots).

        Also accepts ``"1:0.7,2:0.2,3:0.1"`` and a plain number (``"1.4"``, ``"2"``).
        """
        text = text.strip()
        if re.fullmatch(r"\d+(\.\d+)?(/\d+(\.\d+)?)+", text):
            parts = [float(t) for t in text.split("/")]
            return cls({i + 1: p / 100 for i, p in enumerate(parts)})
        if ":" in text:
            try:
                pairs = [kv.split(":") for kv in text.split(",")]
                return cls({int(k): float(v) for k, v in pairs})
            except ValueError as exc:
                if "mix:" in str(exc) or "bits" in str(exc):
                    raise
                raise ValueError(f"mix: cannot parse {text!r}; use '70/20/10' or '1:0.7,2:0.2,3:0.1'") from None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"mix: cannot parse {text!r}; use an average like '1.4', percents like '70/20/10' "
                "or '1:0.7,2:0.2,3:0.1'"
            ) from None
        return cls.from_average(value)

    @classmethod
    def coerce(cls, value: Any) -> "BitMix":
        """Turn a BitMix, int, float average, string or ``{bits: fraction}`` dict into a BitMix."""
        if isinstance(value, BitMix):
            return value
        if isinstance(value, bool):
            raise TypeError(f"bits: expected an int, float, str, dict or BitMix, got {value!r}")
        if isinstance(value, int):
            return cls.homogeneous(value)
        if isinstance(value, float):
            return cls.from_average(value)
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping):
            return cls({_key_to_int(k): v for k, v in value.items()})
        raise TypeError(f"bits: expected an int, float, str, dict or BitMix, got {type(value).__name__}")

    # ---------------------------------------------------------------- properties
    @property
    def average(self) -> float:
        """``sum_b b * p_b``, rounded to 12 decimals to hide float noise (0.7+0.4+0.3)."""
        return round(sum(b * p for b, p in zip(self.bits, self.fractions)), 12)

    @property
    def max_bits(self) -> int:
        """Largest bitwidth in the mix (the number of residual planes needed)."""
        return self.bits[-1]

    @property
    def min_bits(self) -> int:
        """Smallest bitwidth in the mix."""
        return self.bits[0]

    @property
    def is_homogeneous(self) -> bool:
        """True when every entry gets the same bitwidth (no bit map selection needed)."""
        return len(self.bits) == 1

    def counts(self, n: int) -> tuple[int, ...]:
        """Entries per bitwidth for a tensor of ``n`` entries (Algorithm 1's slice sizes).

        ``round(p_b * n)`` (half up) for every bitwidth but the largest, which takes the
        remainder, so the counts always sum to ``n``.
        """
        counts: list[int] = []
        used = 0
        for p in self.fractions[:-1]:
            c = min(int(math.floor(p * n + 0.5)), n - used)
            counts.append(c)
            used += c
        counts.append(n - used)
        return tuple(counts)

    def cuts(self, n: int) -> list[int]:
        """Cumulative slice ends ``c_1 <= ... <= c_{K-1}`` for ``n`` entries: the first ``c_j``
        entries of the ranking get at most ``bits[j-1]`` bits."""
        ends, total = [], 0
        for c in self.counts(n)[:-1]:
            total += c
            ends.append(total)
        return ends

    def to_dict(self) -> dict[int, float]:
        """``{bits: fraction}`` for the bitwidths present."""
        return dict(zip(self.bits, self.fractions))

    def __str__(self) -> str:
        if self.is_homogeneous:
            return f"{self.bits[0]}-bit"
        parts = "/".join(f"{round(p * 100, 4):g}" for p in self.fractions)
        return f"{self.average:g}-bit ({parts} % of {'/'.join(map(str, self.bits))}-bit)"


def _key_to_int(key: Any) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return key


def _check_bits(b: Any) -> int:
    if isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
        raise ValueError(f"bits: expected an integer in {MIN_BITS}..{MAX_BITS}, got {b!r}")
    return b


def _check_fraction(b: int, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
        raise ValueError(f"mix: fraction for {b} bits must be a number >= 0, got {p!r}")
    return float(p)
