"""Weight memory with the bit map counted: planes + map + scales (beyond the paper).

The paper charges a weight of a 70/20/10 mix 1.4 bits. A heterogeneous layer must also
store *which* bitwidth each weight has. For a ``rows x cols`` weight matrix (``N = rows *
cols`` entries, see :mod:`hbnn.hw.profile`) with a mix of ``K`` bitwidths
``b_1 < ... < b_K`` in fractions ``p_1..p_K`` (average ``b = sum p_k b_k``)::

    planes  = b * N                                  (the paper's figure, unchanged)
    map     = U * c                                  (0 when K = 1: structure "none")
    scales  = 32 * b_K * (rows if per-channel else 1)
    total   = planes + map + scales                  ("map-aware")

with ``U`` the map's units (one level code each) for its *structure*:

* ``entry``: one per weight, ``U = N`` (the paper's per-entry maps, Algorithm 1);
* ``channel``: one per output channel (matrix row), ``U = rows``;
* ``block<k>``: one per run of ``k`` inputs of an output row, ``U = rows * ceil(cols / k)``
  (``hbnn`` quantizers' ``block: k``; ``block1`` is ``entry``);
* ``none``: a homogeneous mix, ``U = 0``.

and ``c`` the bits per unit of the *map code*:

* ``entropy``: ``H(p) = -sum p_k log2 p_k``, the order-0 lower bound of any code
  (1.157 for 70/20/10); not addressable per weight;
* ``fixed``: ``ceil(log2 K)`` (2 for 70/20/10), a fixed-length code a hardware decoder
  reads at a fixed offset per weight; ``hbnn summary`` charges the same;
* ``packed``: what ``hbnn export`` writes: nested masks (a unary code), for ``j = 1..K-1``
  one bit per unit with level ``>= j-1``, so ``c = sum_{j=0}^{K-2} P(level >= j)``
  (1 + 0.3 = 1.3 for 70/20/10; 1 for any two-bitwidth mix).

Unit levels are assumed distributed like the mix (exact for ``entry``; for ``channel`` and
``block<k>`` up to rounding of the per-unit counts). The *masked planes* view is how
today's kernels hold a heterogeneous weight: ``b_K`` dense sign planes plus a mask for each
plane that is not full (``b_K - b_1`` of them), i.e. ``(2 b_K - b_1) * N`` bits (5 bits per
weight for 70/20/10, independent of the structure and code), plus the scales. Activation maps
are computed at run time from thresholds and are not stored; nothing here counts them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Sequence

from hbnn.errors import ConfigError
from hbnn.hw.validate import FLOAT_BITS

__all__ = [
    "DEFAULT_STRUCTURE",
    "DEFAULT_MAP_CODE",
    "MAP_CODES",
    "STRUCTURES",
    "SCALE_BITS",
    "WeightStorage",
    "check_structure",
    "check_map_code",
    "map_units",
    "code_bits",
    "mix_levels",
    "weight_storage",
    "layer_storage",
    "network_storage",
    "parse_shape",
    "storage_table",
]

DEFAULT_STRUCTURE = "entry"
DEFAULT_MAP_CODE = "fixed"
MAP_CODES = ("entropy", "fixed", "packed")
STRUCTURES = "none, entry, channel, block<k> (k an integer >= 1, e.g. block64)"
# Bits of one stored scale (float32), as hbnn summary and the packed format store them.
SCALE_BITS = 32

_BLOCK = re.compile(r"block([1-9][0-9]*)")

Mix = Sequence[tuple[int, float]]


def check_structure(value: Any, key: str = "structure") -> str:
    """A structure name, canonical (``block1`` -> ``entry``), or a one-line ConfigError."""
    if isinstance(value, str):
        if value in ("none", "entry", "channel"):
            return value
        match = _BLOCK.fullmatch(value)
        if match:
            return "entry" if int(match.group(1)) == 1 else value
    raise ConfigError(f"{key}: invalid value {value!r}; allowed: {STRUCTURES}")


def check_map_code(value: Any, key: str = "map_code") -> str:
    """A map code name (:data:`MAP_CODES`), or a one-line ConfigError."""
    if value not in MAP_CODES:
        raise ConfigError(f"{key}: invalid value {value!r}; allowed: {', '.join(MAP_CODES)}")
    return value


def map_units(structure: str, rows: int, cols: int) -> int:
    """Units ``U`` of a map over a ``rows x cols`` matrix: ``N``, ``rows``, ``rows * ceil(cols/k)`` or 0."""
    structure = check_structure(structure)
    if structure == "none":
        return 0
    if structure == "entry":
        return rows * cols
    if structure == "channel":
        return rows
    k = int(structure[len("block"):])
    return rows * -(-cols // k)


def code_bits(mix: Mix, code: str) -> float:
    """Bits per map unit ``c`` of ``code`` for a mix ``[(bits, fraction), ...]`` (0 when homogeneous).

    Example:
        >>> round(code_bits([(1, 0.7), (2, 0.2), (3, 0.1)], "packed"), 12)
        1.3
    """
    code = check_map_code(code)
    levels = sorted(mix)
    k = len(levels)
    if k <= 1:
        return 0.0
    if code == "fixed":
        return float(math.ceil(math.log2(k)))
    if code == "entropy":
        return -sum(p * math.log2(p) for _, p in levels if p > 0)
    tails = [sum(p for _, p in levels[j:]) for j in range(k - 1)]  # P(level >= j), j = 0..K-2
    return sum(tails)


def mix_levels(bits: Any, key: str = "wbits") -> tuple[tuple[int, float], ...]:
    """``((bits, fraction), ...)`` of a mix given as a number, string, dict or ``BitMix``.

    Anything :meth:`hbnn.quant.BitMix.coerce` takes (``1.4`` -> the paper's 70/20/10,
    ``"80/0/20"``, ``{1: 0.7, ...}``); any other average ``b`` in (1, 8) (e.g. a realized
    2.5) is read as the two-level mix of ``floor(b)`` and ``ceil(b)`` with that average.

    Raises:
        ConfigError: naming ``key``, for anything else.
    """
    from hbnn.quant.mix import MAX_BITS, MIN_BITS, BitMix

    try:
        mix = BitMix.coerce(bits)
    except (TypeError, ValueError) as exc:
        try:
            value = float(bits) if isinstance(bits, (str, int, float)) and not isinstance(bits, bool) else None
        except ValueError:
            value = None
        if value is None or not MIN_BITS < value < MAX_BITS or value.is_integer():
            raise ConfigError(f"{key}: {exc}") from None
        lo = math.floor(value)
        return ((lo, lo + 1 - value), (lo + 1, value - lo))
    return tuple(zip(mix.bits, mix.fractions))


@dataclass(frozen=True)
class WeightStorage:
    """Stored bits of binarized weights (one layer, or a sum of layers), see the module doc.

    Attributes:
        weights: entries ``N``.
        paper_bits: ``b * N`` (the paper's weight memory; equal to the plane bits).
        map_units: ``U``.
        map_bits: ``U * c``.
        scale_bits: ``32 * b_K * (rows or 1)``.
        masked_plane_bits: ``(2 b_K - b_1) * N``, the dense masked planes kernels read.
    """

    weights: int
    paper_bits: float
    map_units: int
    map_bits: float
    scale_bits: float
    masked_plane_bits: float

    @property
    def total_bits(self) -> float:
        """Map-aware weight memory: ``planes + map + scales``."""
        return self.paper_bits + self.map_bits + self.scale_bits

    def bits_per_weight(self) -> dict[str, float]:
        """Each term divided by ``N``: ``paper`` (= planes), ``map``, ``scales``, ``map_aware``
        (their sum) and ``masked_planes`` (masked planes + scales)."""
        n = self.weights
        return {
            "paper": self.paper_bits / n,
            "map": self.map_bits / n,
            "scales": self.scale_bits / n,
            "map_aware": self.total_bits / n,
            "masked_planes": (self.masked_plane_bits + self.scale_bits) / n,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``total_bits`` and ``bits_per_weight``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "total_bits": self.total_bits, "bits_per_weight": self.bits_per_weight()}


def weight_storage(
    rows: int,
    cols: int,
    mix: Mix,
    structure: str = DEFAULT_STRUCTURE,
    code: str = DEFAULT_MAP_CODE,
    *,
    average: float | None = None,
    per_channel: bool = False,
) -> WeightStorage:
    """Stored bits of one binarized ``rows x cols`` weight with bit mix ``mix``.

    Args:
        rows, cols: the weight matrix (output channels x inputs per output).
        mix: ``[(bits, fraction), ...]``; a homogeneous mix needs no map whatever ``structure``.
        structure: ``entry``, ``channel``, ``block<k>`` or ``none`` (homogeneous mixes only).
        code: ``entropy``, ``fixed`` or ``packed`` (module doc).
        average: the realized average bits ``b`` (default: the mix's).
        per_channel: one scale per output channel and plane instead of one per plane.

    Raises:
        ConfigError: a bad structure or code, or ``none`` with a heterogeneous mix.
    """
    structure, code = check_structure(structure), check_map_code(code)
    levels = sorted(mix)
    if structure == "none" and len(levels) > 1:
        raise ConfigError(
            f"structure: 'none' needs a homogeneous mix; a mix of {len(levels)} bitwidths needs a map "
            "(entry, channel or block<k>)"
        )
    n = rows * cols
    b = sum(bits * p for bits, p in levels) if average is None else average
    lo, hi = levels[0][0], levels[-1][0]
    units = map_units(structure, rows, cols) if len(levels) > 1 else 0
    return WeightStorage(
        weights=n,
        paper_bits=b * n,
        map_units=units,
        map_bits=units * code_bits(levels, code),
        scale_bits=float(SCALE_BITS * hi * (rows if per_channel else 1)),
        masked_plane_bits=float((2 * hi - lo) * n),
    )


def _layer_structure(layer: Any, override: str | None, levels: Mix) -> str:
    """``override``, else the layer's own structure, else ``entry``; ``none`` when homogeneous."""
    if len(levels) == 1 and override in (None, "none"):
        return "none"
    chosen = override or getattr(layer, "structure", None) or DEFAULT_STRUCTURE
    return "none" if len(levels) == 1 else chosen


def layer_storage(layer: Any, structure: str | None = None, code: str = DEFAULT_MAP_CODE) -> dict[str, Any] | None:
    """Map-aware storage of one profiled layer (a :class:`~hbnn.hw.profile.LayerProfile`).

    Args:
        layer: the profile; its ``wmix`` (else a mix read from ``wbits``), ``structure``
            and ``per_channel`` are used.
        structure: overrides the layer's own structure (None: the layer's, else ``entry``).
        code: the map code.

    Returns:
        ``{"name", "structure", "mix", **WeightStorage.to_dict()}``, or None for float weights.
    """
    if layer.wbits >= FLOAT_BITS:
        return None
    levels = tuple(sorted(layer.wmix)) if layer.wmix else mix_levels(layer.wbits)
    chosen = _layer_structure(layer, structure, levels)
    store = weight_storage(
        layer.rows, layer.cols, levels, chosen, code, average=layer.wbits, per_channel=layer.per_channel
    )
    return {"name": layer.name, "structure": chosen, "mix": [list(level) for level in levels], **store.to_dict()}


def network_storage(
    layers: Sequence[Any], structure: str | None = None, code: str = DEFAULT_MAP_CODE
) -> tuple[dict[str, Any] | None, list[dict[str, Any] | None]]:
    """Map-aware storage summed over a network's binarized weights, and per layer.

    Returns:
        ``(summary, per_layer)``: ``summary`` is None when no weight is binarized, else
        ``{"structure" (the one used, or "mixed"), "map_code", **WeightStorage.to_dict()}``
        over binarized layers (float layers are in neither); ``per_layer`` holds
        :func:`layer_storage` of each layer (None for float ones).
    """
    structure = None if structure is None else check_structure(structure)
    code = check_map_code(code)
    rows = [layer_storage(layer, structure, code) for layer in layers]
    used = [r for r in rows if r is not None]
    if not used:
        return None, rows
    total = WeightStorage(*(sum(r[f.name] for r in used) for f in fields(WeightStorage)))
    kinds = sorted({r["structure"] for r in used})
    summary = {"structure": kinds[0] if len(kinds) == 1 else "mixed", "map_code": code, **total.to_dict()}
    return summary, rows


def parse_shape(text: str) -> tuple[int, int]:
    """``"256x256x3x3"`` (O x I x kh x kw) or ``"512x256"`` (linear) -> ``(rows, cols) = (O, I*kh*kw)``."""
    parts = text.split("x") if isinstance(text, str) else []
    if len(parts) < 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"shape: invalid value {text!r}; allowed: OxI or OxIxKHxKW with positive integers, e.g. 256x256x3x3")
    return int(parts[0]), math.prod(int(p) for p in parts[1:])


def storage_table(
    rows: int, cols: int, mixes: Sequence[Any], structures: Sequence[str], *, per_channel: bool = False
) -> list[dict[str, Any]]:
    """Bits per weight of one ``rows x cols`` weight for each mix and structure, under every code.

    A homogeneous mix gives one row (structure ``none``); a heterogeneous one a row per
    structure. Each row: ``{"wbits", "mix", "structure", "weights", "map_units",
    "bits_per_weight": {"paper", "scales", "masked_planes", "map": {code: ...},
    "map_aware": {code: ...}}}``.
    """
    out = []
    for bits in mixes:
        levels = mix_levels(bits)
        for structure in ["none"] if len(levels) == 1 else [check_structure(s) for s in structures]:
            by_code = {code: weight_storage(rows, cols, levels, structure, code, per_channel=per_channel) for code in MAP_CODES}
            bpw = {code: store.bits_per_weight() for code, store in by_code.items()}
            first = bpw[MAP_CODES[0]]
            out.append({
                "wbits": sum(b * p for b, p in levels),
                "mix": [list(level) for level in levels],
                "structure": structure,
                "weights": rows * cols,
                "map_units": by_code[MAP_CODES[0]].map_units,
                "bits_per_weight": {
                    "paper": first["paper"],
                    "scales": first["scales"],
                    "masked_planes": first["masked_planes"],
                    "map": {code: v["map"] for code, v in bpw.items()},
                    "map_aware": {code: v["map_aware"] for code, v in bpw.items()},
                },
            })
    return out
