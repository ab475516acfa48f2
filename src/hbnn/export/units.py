"""Structured bit maps in a packed file: one fixed-width code per unit (format version 3).

A binarized weight whose map is structured (``QuantSpec.structure`` ``block<K>`` or
``channel``, :mod:`hbnn.quant.structure`) has ``U`` units (runs of ``K`` inputs of one
output row in OHWI order, or whole output rows) that share one bitwidth. Its record says
``"structure": "block64"`` (or ``"channel"``) and its ``map`` stream holds, for units
``u = 0..U-1`` in :class:`hbnn.quant.structure.Structure` order, the level ``l_u`` (the
index of the unit's bitwidth in the mix's ``bits``) as a ``w``-bit code,
``w = ceil(log2 K)`` for ``K = len(bits)`` bitwidths (2 bits for ``{1, 2, 3}``, 1 for two
bitwidths, 0 for a homogeneous mix), least significant bit first: bit ``u w + k`` of the
stream is bit ``k`` of ``l_u``. So ``map_bits = U w`` and every code is ``< K``.

The sign stream is the same as for per-entry maps (:mod:`hbnn.export.encode`): plane
``i``'s signs at ``A_i = {j : b_{l_u(j)} > i}`` in flatten order, i.e. plane ``i`` is stored
only for the entries whose unit has more than ``i`` bits, and
``|A_i| = sum_u |u| [b_{l_u} > i]`` (``plane_counts``). Per-entry maps (``"structure":
"entry"``, with the legacy ``block``) keep the nested-mask code of :mod:`hbnn.export.encode`.

Activations record their structure (``entry``, ``pixel``, ``group<G>``); the engine
rebuilds the quantizer with it and :func:`hbnn.quant.structure.threshold_unit_map`
compares each unit's mean key with the stored running thresholds (on the unit key), as
the model does in eval. Version-2 records have no ``structure`` field: they are
``entry`` (:func:`weight_structure`, :func:`act_structure`).
"""

from __future__ import annotations

import math

import torch

from hbnn.errors import ConfigError, FormatError
from hbnn.export.encode import unpack_stream
from hbnn.quant.structure import Structure, parse_structure

__all__ = [
    "code_width",
    "encode_codes",
    "decode_codes",
    "weight_structure",
    "act_structure",
    "parse_record_structure",
    "unit_plane_counts",
    "unit_masks",
    "decode_unit_levels",
]


def code_width(n_levels: int) -> int:
    """Bits of one unit code: ``ceil(log2 n_levels)`` (0 for a homogeneous mix)."""
    return math.ceil(math.log2(n_levels)) if n_levels > 1 else 0


def encode_codes(levels: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Fixed-width codes of unit levels as a bool stream (LSB first within a code).

    Example:
        >>> encode_codes(torch.tensor([0, 2, 1]), 3).int().tolist()  # 00, 01, 10 read LSB first
        [0, 0, 0, 1, 1, 0]
    """
    width = code_width(n_levels)
    shifts = torch.arange(width, dtype=torch.int64)
    return ((levels.reshape(-1, 1).to(torch.int64) >> shifts) & 1).bool().reshape(-1)


def decode_codes(stream: torch.Tensor, units: int, n_levels: int, what: str) -> torch.Tensor:
    """Inverse of :func:`encode_codes`: int64 levels ``[units]``.

    Raises:
        FormatError: the stream does not hold ``units`` codes, or a code is ``>= n_levels``.
    """
    width = code_width(n_levels)
    if stream.numel() != units * width:
        raise FormatError(f"{what}: unit-code stream has {stream.numel()} bits, {units} units of {width} bits "
                          f"need {units * width}")
    if width == 0:
        return torch.zeros(units, dtype=torch.int64)
    weights = torch.ones(width, dtype=torch.int64) << torch.arange(width, dtype=torch.int64)
    levels = (stream.reshape(units, width).to(torch.int64) * weights).sum(1)
    bad = torch.nonzero(levels >= n_levels)
    if bad.numel():
        u = int(bad[0, 0])
        raise FormatError(f"{what}: unit code {int(levels[u])} of unit {u} is out of range; allowed: "
                          f"0..{n_levels - 1} (one per bitwidth)")
    return levels


def parse_record_structure(name, role: str) -> Structure:
    """The :class:`Structure` of a record's ``structure`` field for a ``role`` tensor (``weight``/``act``).

    Raises:
        ValueError: not a structure name, or one of the other role (the message lists the forms).
    """
    try:
        structure = parse_structure(name)
    except ConfigError:
        structure = None
    if structure is None or structure.role not in ("any", role):
        forms = "entry, block<K>, channel" if role == "weight" else "entry, pixel, group<G>"
        raise ValueError(forms)
    return structure


def weight_structure(w: dict) -> Structure:
    """The map units of a validated ``planes`` weight record (v2: ``entry``; legacy ``block``: OIHW runs)."""
    structure = parse_structure(w.get("structure", "entry"))
    if structure.is_entry and w["block"] > 1:
        return Structure("oihw_block", w["block"])
    return structure


def act_structure(a: dict) -> Structure:
    """The map units of a validated activation record (v2: ``entry``)."""
    return parse_structure(a.get("structure", "entry"))


def unit_plane_counts(levels: torch.Tensor, bits: list[int], sizes: torch.Tensor) -> list[int]:
    """``|A_i| = sum_u |u| [bits[l_u] > i]`` for planes ``i = 0..bits[-1]-1``."""
    unit_bits = torch.tensor(bits, dtype=torch.int64)[levels]
    return [int(sizes[unit_bits > i].sum()) for i in range(bits[-1])]


def unit_masks(levels: torch.Tensor, bits: list[int], structure: Structure, shape: tuple[int, ...]) -> torch.Tensor:
    """Bool active sets ``[n, *shape]`` of unit levels: ``masks[i] = bits[l_u(j)] > i``."""
    bitmap = structure.expand(torch.tensor(bits, dtype=torch.int8)[levels], shape)
    return torch.stack([bitmap > i for i in range(bits[-1])])


def decode_unit_levels(w: dict, tensors: dict, p: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """The unit levels of a structured weight record, checked against its ``plane_counts``.

    Raises:
        FormatError: a code stream of the wrong length, a code out of range, or codes
            whose plane sizes differ from ``plane_counts`` (so from the sign stream's length).
    """
    bits, units = w["bits"], w["units"]
    levels = torch.zeros(units, dtype=torch.int64)
    if len(bits) > 1:
        levels = decode_codes(unpack_stream(tensors[f"{p}.map"], w["map_bits"], what), units, len(bits), what)
    counts = unit_plane_counts(levels, bits, weight_structure(w).unit_sizes(shape))
    if counts != w["plane_counts"]:
        raise FormatError(f"{what}: unit codes give plane sizes {counts}, plane_counts says {w['plane_counts']} "
                          "(the sign stream's planes)")
    return levels

