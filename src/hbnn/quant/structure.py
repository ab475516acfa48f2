"""Structured bit maps: one bitwidth per *unit* of entries aligned with the kernels' loops.

A per-entry map (the paper) cannot make a CPU kernel skip work (a masked bit plane costs
as much as a full one) and costs ~1.16 bits of entropy per entry to store. A structured
map gives every entry of a unit the same bitwidth. Units (``QuantSpec.structure``):

=================  =======  ==================================================================
name               tensor   unit
=================  =======  ==================================================================
``entry``          any      one entry (the paper; the default)
``block<K>``       weight   ``K`` consecutive inputs of one output row in the kernels' K order:
                            rows of ``w.permute(0, 2, 3, 1).reshape(O, -1)`` (OHWI) for a conv
                            weight ``[O, C, kh, kw]``, ``w`` itself for a linear ``[O, K]``;
                            the last run of a row may be shorter
``channel``        weight   one output channel (a whole row)
``pixel``          act      one input position: the ``C`` channels of ``x[b, :, h, w]``
``group<G>``       act      ``G`` consecutive channels at one pixel (conv ``[B, C, H, W]``) or
                            features of one sample (linear ``[B, K]``, features on the last dim);
                            the last group may be shorter
=================  =======  ==================================================================

Every structure is one recipe: view the tensor as rows of ``L`` entries (channels last),
cut each row into runs of ``k`` (:func:`hbnn.quant.bitmap.block_view_shape`); a run is a
unit, numbered row-major. Weight rows are output rows (``R = O``, ``L`` = inputs per
output); activation rows are positions (``R = B*H*W`` or ``B``, ``L = C``). ``pixel`` and
``channel`` are ``k = L``. On an activation already in its ``[N, C]`` rows view (what the
packed engine binarizes) ``pixel`` is one unit per row and ``group<G>`` the same groups.

Allocation (``QuantSpec.allocate``):

* ``key`` -- Algorithm 1 on units: a unit's key is the mean of its entries' heuristic keys
  (``random``: a seeded permutation of the units); the mix's counts apply to units
  (``BitMix.counts(n_units)``).
* ``error`` -- greedy Eq. 5 error allocation (:func:`error_allocation` on
  :func:`unit_errors`): every unit starts at ``b_min``; ``round((avg - b_min) * n_units)``
  extra unit-bits go, one step at a time, to the largest error drop per extra bit.

API for quantizers, the packed export and kernels:

* :func:`parse_structure` (``"block64"`` -> :class:`Structure`), :func:`structure_of`
  (a ``QuantSpec`` -> its structure, the legacy ``block`` included);
* :class:`Structure`: ``n_units(shape)``, ``unit_sizes(shape)``, ``unit_means(values)``,
  ``unit_sums(values)``, ``expand(unit_values, shape)`` (unit -> entries);
* :func:`unit_bitmap` -> :class:`UnitMap` (``bits`` ``[n_units]`` int8, ``levels(mix)``
  codes ``0..len(mix.bits)-1``, ``expand()`` the int8 entry map); ``WeightQuantizer.unit_map``
  and ``ActQuantizer.running_unit_map`` return one;
* :func:`threshold_unit_map`: activations at inference (the unit key against running
  thresholds), the function a packed engine calls;
* :func:`check_fit`: the layer-level checks (a block longer than a row, ...).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from hbnn.errors import ConfigError
from hbnn.quant.bitmap import (
    block_reduce,
    block_view_shape,
    expand_blocks,
    keyed_bitmap,
    map_from_thresholds,
    random_ranks,
    select_slices,
    threshold_bitmap,
    thresholds_from_sample,
)
from hbnn.quant.functional import residual_forward
from hbnn.quant.keys import heuristic_key
from hbnn.quant.mix import BitMix
from hbnn.quant.select import SAMPLE_SIZE, sample_index

__all__ = [
    "Structure",
    "UnitMap",
    "ALLOCATIONS",
    "STRUCTURE_FORMS",
    "WEIGHT_FORMS",
    "ACT_FORMS",
    "parse_structure",
    "structure_of",
    "unit_bitmap",
    "unit_select",
    "threshold_unit_map",
    "unit_errors",
    "error_allocation",
    "error_budget",
    "check_fit",
]

ALLOCATIONS = ("key", "error")
WEIGHT_FORMS = "entry, block<K> (e.g. block64), channel"
ACT_FORMS = "entry, pixel, group<G> (e.g. group8)"
STRUCTURE_FORMS = f"{WEIGHT_FORMS} for weights; pixel, group<G> (e.g. group8) for activations"

_ROLES = {"entry": "any", "block": "weight", "channel": "weight", "oihw_block": "weight",
          "pixel": "act", "group": "act"}
_SIZED = ("block", "group", "oihw_block")


@dataclass(frozen=True)
class Structure:
    """A bit-map unit structure (see the module docstring).

    Attributes:
        kind: ``entry``, ``block``, ``channel``, ``pixel``, ``group``, or ``oihw_block`` (the
            legacy ``QuantSpec.block``: runs along ``weight.reshape(O, -1)``, OIHW order).
        size: ``K`` of ``block<K>``/``oihw_block``, ``G`` of ``group<G>``; 1 otherwise.
    """

    kind: str = "entry"
    size: int = 1

    @property
    def name(self) -> str:
        """The config name: ``entry``, ``block64``, ``channel``, ``pixel``, ``group8``."""
        return f"{self.kind}{self.size}" if self.kind in _SIZED else self.kind

    @property
    def role(self) -> str:
        """``any`` (entry), ``weight`` or ``act``."""
        return _ROLES[self.kind]

    @property
    def is_entry(self) -> bool:
        """True for per-entry maps (every unit one entry)."""
        return self.kind == "entry"

    # ------------------------------------------------------------------ the row view
    def rows(self, shape, feature_dim: int = 1) -> tuple[int, int]:
        """``(R, L)``: the row view of a tensor of ``shape`` (see the module docstring)."""
        shape = tuple(shape)
        if self.kind == "entry":
            return 1, math.prod(shape)
        if self.role == "weight":
            return (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, math.prod(shape))
        _check_act_dims(shape, feature_dim)
        channels = shape[feature_dim]
        return math.prod(shape) // channels if channels else 0, channels

    def run(self, shape, feature_dim: int = 1) -> int:
        """Entries per unit (the last unit of a row may hold fewer).

        Raises:
            ConfigError: ``block<K>``/``group<G>`` longer than a row (it would silently be a
                whole row: use ``channel``/``pixel`` or a smaller size).
        """
        length = self.rows(shape, feature_dim)[1]
        if self.kind == "entry":
            return 1
        if self.kind in ("channel", "pixel"):
            return max(length, 1)
        if self.size > length and self.kind != "oihw_block":
            whole = "channel" if self.kind == "block" else "pixel"
            raise ConfigError(f"structure: {self.name} is longer than a row of {length} entries of a tensor of "
                              f"shape {list(shape)}; use {self.kind}<N> with N <= {length}, or {whole}")
        return self.size

    def view_shape(self, shape, feature_dim: int = 1) -> tuple[int, int, int]:
        """``(R, units per row, L)``."""
        r, length = self.rows(shape, feature_dim)
        return block_view_shape((r, length), self.run(shape, feature_dim))

    def n_units(self, shape, feature_dim: int = 1) -> int:
        """Number of units of a tensor of ``shape``."""
        r, per_row, _ = self.view_shape(shape, feature_dim)
        return r * per_row

    def to_rows(self, x: torch.Tensor, feature_dim: int = 1) -> torch.Tensor:
        """``x`` as ``[R, L]`` rows (a copy when the channels move last)."""
        if self.kind in ("entry", "oihw_block") or (self.role == "weight" and x.dim() <= 2):
            return x.reshape(self.rows(x.shape, feature_dim))
        if self.role == "weight":
            return x.movedim(1, -1).reshape(x.shape[0], -1)
        return x.movedim(feature_dim, -1).reshape(self.rows(x.shape, feature_dim))

    def from_rows(self, rows: torch.Tensor, shape, feature_dim: int = 1) -> torch.Tensor:
        """The inverse of :meth:`to_rows`: ``[R, L]`` rows back to a contiguous tensor of ``shape``."""
        shape = tuple(shape)
        if self.kind in ("entry", "oihw_block") or (self.role == "weight" and len(shape) <= 2):
            return rows.reshape(shape)
        dim = 1 if self.role == "weight" else feature_dim % len(shape)
        moved = shape[:dim] + shape[dim + 1:] + (shape[dim],)
        return rows.reshape(moved).movedim(-1, dim).contiguous()

    # ------------------------------------------------------------ units <-> entries
    def unit_means(self, values: torch.Tensor, feature_dim: int = 1) -> torch.Tensor:
        """``[n_units]``: the mean of ``values`` (a tensor of the mapped shape) over each unit."""
        return self._reduce(values, feature_dim, mean=True)

    def unit_sums(self, values: torch.Tensor, feature_dim: int = 1) -> torch.Tensor:
        """``[n_units]``: the sum of ``values`` over each unit."""
        return self._reduce(values, feature_dim, mean=False)

    def _reduce(self, values: torch.Tensor, feature_dim: int, mean: bool) -> torch.Tensor:
        if self.kind == "entry":
            return values.reshape(-1)
        rows = self.to_rows(values, feature_dim)
        return block_reduce(rows, tuple(rows.shape), self.run(values.shape, feature_dim), mean)

    def unit_sizes(self, shape, feature_dim: int = 1) -> torch.Tensor:
        """``[n_units]`` int64: entries per unit."""
        r, per_row, length = self.view_shape(shape, feature_dim)
        run = self.run(shape, feature_dim)
        sizes = torch.full((r, per_row), run, dtype=torch.int64)
        if per_row:
            sizes[:, -1] = length - (per_row - 1) * run
        return sizes.reshape(-1)

    def expand(self, values: torch.Tensor, shape, feature_dim: int = 1) -> torch.Tensor:
        """Per-unit ``values`` ``[n_units]`` -> per-entry values of ``shape`` (every entry of a
        unit takes the unit's value)."""
        if self.kind == "entry":
            return values.reshape(tuple(shape))
        r, length = self.rows(shape, feature_dim)
        rows = expand_blocks(values, (r, length), self.run(shape, feature_dim))
        return self.from_rows(rows, shape, feature_dim)


def _check_act_dims(shape: tuple, feature_dim: int) -> None:
    if len(shape) < 2 or not -len(shape) <= feature_dim < len(shape):
        raise ConfigError(f"structure: activation structures need an input of at least 2 dims with features on "
                          f"dim {feature_dim}, got shape {list(shape)}")


_PATTERN = re.compile(r"(entry|channel|pixel)|(block|group)(\d+)")


def parse_structure(name: object, key: str = "structure") -> Structure:
    """``"entry"``, ``"channel"``, ``"pixel"``, ``"block<K>"``, ``"group<G>"`` -> a :class:`Structure`.

    Raises:
        ConfigError: anything else (one line listing the forms), or ``K``/``G`` < 1.
    """
    match = _PATTERN.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ConfigError(f"{key}: invalid value {name!r}; allowed: {STRUCTURE_FORMS}")
    if match.group(1):
        return Structure(match.group(1))
    size = int(match.group(3))
    if size < 1:
        letter = "K" if match.group(2) == "block" else "G"
        raise ConfigError(f"{key}: invalid value {name!r}; allowed: {match.group(2)}<{letter}> with {letter} >= 1")
    return Structure(match.group(2), size)


def structure_of(spec) -> Structure:
    """The structure of a :class:`hbnn.quant.QuantSpec`: its ``structure``, or the legacy ``block``."""
    if spec.block > 1:
        return Structure("oihw_block", spec.block)
    return parse_structure(spec.structure)


# ------------------------------------------------------------------------ unit maps
@dataclass(frozen=True)
class UnitMap:
    """A structured bit map: one bitwidth per unit.

    Attributes:
        bits: ``[n_units]`` int8 bitwidths, units numbered as in :class:`Structure`.
        structure: the unit structure.
        shape: the shape of the mapped tensor.
        feature_dim: the activations' feature dim (1: conv ``[B, C, H, W]`` / linear ``[B, K]``).
    """

    bits: torch.Tensor
    structure: Structure
    shape: tuple
    feature_dim: int = 1

    def expand(self) -> torch.Tensor:
        """The int8 per-entry map of ``shape``."""
        return self.structure.expand(self.bits, self.shape, self.feature_dim)

    def levels(self, mix: BitMix) -> torch.Tensor:
        """``[n_units]`` int64 codes: the index of each unit's bitwidth in ``mix.bits``."""
        table = torch.full((mix.max_bits + 1,), -1, dtype=torch.int64)
        table[list(mix.bits)] = torch.arange(len(mix.bits))
        return table[self.bits.long().cpu()].to(self.bits.device)


def unit_select(x: torch.Tensor, mix: BitMix, structure: Structure, heuristic: str = "middle_out",
                allocate: str = "key", generator: torch.Generator | None = None,
                mean_abs: torch.Tensor | None = None, channel_dim: int | None = None,
                feature_dim: int = 1, sampled: bool = False) -> tuple[UnitMap, list[float]]:
    """The unit map of ``x`` and, for a keyed heuristic, the unit-key thresholds at its cuts.

    Args:
        x: the tensor (detached, finite).
        mix: the bit mix.
        structure: the units.
        heuristic: Algorithm 1's key (unused by ``allocate="error"``).
        allocate: ``key`` (Algorithm 1 on unit keys) or ``error`` (:func:`error_allocation`).
        generator: seeds ``random``'s permutation of the units.
        mean_abs: middle-out's reference magnitude (default: of ``x``).
        channel_dim: per-channel scales of the homogeneous binarization (``error`` only).
        feature_dim: the activations' feature dim.
        sampled: cut thresholds from the keys of a fixed sample of the units
            (:func:`hbnn.quant.bitmap.thresholds_from_sample`) instead of exactly.

    Returns:
        ``(UnitMap, thresholds)``; thresholds are empty for ``random``, ``error`` and homogeneous mixes.
    """
    shape = tuple(x.shape)
    n = structure.n_units(shape, feature_dim)

    def done(bits: torch.Tensor, thresholds: list[float]) -> tuple[UnitMap, list[float]]:
        return UnitMap(bits.reshape(-1), structure, shape, feature_dim), thresholds

    if mix.is_homogeneous:
        return done(torch.full((n,), mix.bits[0], dtype=torch.int8, device=x.device), [])
    if allocate == "error":
        levels = error_allocation(unit_errors(x, mix, structure, channel_dim, feature_dim), mix.bits,
                                  error_budget(mix, n))
        return done(torch.tensor(mix.bits, dtype=torch.int8, device=x.device)[levels], [])
    if heuristic == "random":
        return done(select_slices(random_ranks(n, generator, x.device), mix)[0], [])
    if structure.is_entry and not sampled:  # the fused C selection
        return done(*keyed_bitmap(x, mix, heuristic, mean_abs))
    keys = structure.unit_means(heuristic_key(x, heuristic, mean_abs), feature_dim)
    if sampled:
        thresholds = _sampled_unit_thresholds(keys, mix)
        return done(map_from_thresholds(keys, mix, thresholds), thresholds)
    return done(*select_slices(keys, mix))


def _sampled_unit_thresholds(keys: torch.Tensor, mix: BitMix) -> list[float]:
    n = keys.numel()
    sample = keys[torch.from_numpy(sample_index(n)).to(keys.device)] if n > SAMPLE_SIZE else keys
    return thresholds_from_sample(sample.cpu().numpy(), n, mix)


def unit_bitmap(x: torch.Tensor, mix: BitMix, structure: Structure, heuristic: str = "middle_out",
                allocate: str = "key", generator: torch.Generator | None = None,
                channel_dim: int | None = None, feature_dim: int = 1) -> UnitMap:
    """The structured map of ``x`` (:func:`unit_select` without thresholds).

    Example:
        >>> w = torch.randn(4, 2, 3, 3)
        >>> m = unit_bitmap(w, BitMix.from_average(1.4), parse_structure("block6"))
        >>> m.bits.shape, m.expand().shape
        (torch.Size([12]), torch.Size([4, 2, 3, 3]))
    """
    return unit_select(x, mix, structure, heuristic, allocate, generator, None, channel_dim, feature_dim)[0]


def threshold_unit_map(x: torch.Tensor, mix: BitMix, heuristic: str, thresholds: list[float],
                       mean_abs: torch.Tensor | None, structure: Structure, feature_dim: int = 1) -> UnitMap:
    """Activations at inference: ``M_u = b_0 + sum_j (b_{j+1} - b_j) [key_u > t_j]``.

    ``key_u`` is the mean over unit ``u`` of the heuristic key (middle-out measured from
    ``mean_abs``, the running estimate) -- the same unit key the training selection cut
    -- so the map is a function of each unit's own entries (no per-input selection). For
    ``entry`` this is :func:`hbnn.quant.bitmap.threshold_bitmap` (fused in C).
    """
    shape = tuple(x.shape)
    if structure.is_entry:
        bits = threshold_bitmap(x, mix, heuristic, thresholds, mean_abs)
        return UnitMap(bits.reshape(-1), structure, shape, feature_dim)
    keys = structure.unit_means(heuristic_key(x, heuristic, mean_abs), feature_dim)
    return UnitMap(map_from_thresholds(keys, mix, thresholds), structure, shape, feature_dim)


# ------------------------------------------------------------------ error allocation
def unit_errors(x: torch.Tensor, mix: BitMix, structure: Structure, channel_dim: int | None = None,
                feature_dim: int = 1) -> torch.Tensor:
    """``[n_units, len(mix.bits)]`` float64: ``E_u(b) = sum_{j in u} (x_j - x_hat^(b)_j)^2``.

    ``x_hat^(b)`` is the homogeneous ``b``-bit residual binarization (Eq. 4) of the whole
    tensor -- per tensor, or per slice of ``channel_dim`` as the quantizer's scales are --
    for each bitwidth ``b`` of the mix; the differences are squared and summed in float64.
    """
    x64 = x.detach().double()
    columns = []
    for b in mix.bits:
        x_hat = residual_forward(x.detach(), None, b, channel_dim)[0].double()
        columns.append(structure.unit_sums((x64 - x_hat).square_(), feature_dim))
    return torch.stack(columns, dim=1)


def error_budget(mix: BitMix, n_units: int) -> int:
    """Extra unit-bits above ``b_min``: ``round((avg - b_min) * n_units)`` (half up)."""
    return int(math.floor((mix.average - mix.min_bits) * n_units + 0.5 + 1e-9))


def error_allocation(errors: torch.Tensor, bits: tuple[int, ...], budget: int) -> torch.Tensor:
    """Greedy unit bitwidths minimising the summed error at a budget of extra unit-bits.

    Every unit starts at level 0 (``bits[0]``). Step ``j`` of a unit (level ``j`` ->
    ``j + 1``) costs ``d_j = bits[j+1] - bits[j]`` unit-bits and lowers its error by
    ``D_uj = errors[u, j] - errors[u, j+1]``, a gain ``g_uj = D_uj / d_j`` per extra bit.
    The greedy repeatedly takes, among each unit's *next* step (step ``j`` only after step
    ``j - 1``: the prefix rule), the one with the largest ``g`` (ties: the lowest unit), and
    stops before the first step that would exceed the budget. Equivalently (what runs,
    vectorised): sort all steps by their prefix-minimum gain ``p_uj = min_{i<=j} g_ui``,
    descending, ties by (unit, step); take the longest prefix whose costs sum to at most
    ``budget``. When gains are concave (``g_uj`` non-increasing in ``j``) the result
    minimises ``sum_u errors[u, level_u]`` over all level assignments of the same cost.
    The spent budget is short of ``budget`` by less than one step (``< bits[-1] - bits[0]``).

    Args:
        errors: ``[n_units, len(bits)]`` error of each unit at each bitwidth.
        bits: the mix's bitwidths, ascending.
        budget: extra unit-bits to spend (:func:`error_budget`).

    Returns:
        ``[n_units]`` int64 levels (indices into ``bits``).
    """
    n, width = errors.shape
    if width < 2 or n == 0:
        return torch.zeros(n, dtype=torch.int64, device=errors.device)
    steps = torch.tensor(np.diff(bits), dtype=errors.dtype, device=errors.device)
    gains = (errors[:, :-1] - errors[:, 1:]) / steps
    priority = torch.cummin(gains, dim=1).values.reshape(-1)
    order = torch.sort(priority, descending=True, stable=True).indices
    costs = steps.repeat(n)[order]
    taken = order[torch.cumsum(costs, 0) <= budget]
    return torch.bincount(taken // (width - 1), minlength=n)


# ------------------------------------------------------------------------ fit checks
def check_fit(structure: Structure, role: str, layer: str, *, row_length: int | None = None,
              channels: int | None = None, conv: bool = True) -> None:
    """The checks where a spec meets a layer (one-line :class:`ConfigError` naming layer and fix).

    Args:
        structure: the spec's structure.
        role: ``weight`` or ``act``.
        layer: how to name the layer in the message (e.g. ``HBConv2d with weight [8, 3, 3, 3]``).
        row_length: inputs per output row of the weight (``C/groups * kh * kw`` or ``K``).
        channels: the input's channels / features.
        conv: the layer is a convolution (``pixel`` applies to conv inputs only).
    """
    if role == "weight" and structure.kind == "block" and structure.size > row_length:
        raise ConfigError(f"weight.structure: {structure.name} does not fit {layer}: its rows have {row_length} "
                          f"inputs; use block<K> with K <= {row_length}, or channel")
    if role != "act":
        return
    if structure.kind == "pixel" and not conv:
        raise ConfigError(f"act.structure: pixel does not fit {layer}: pixel applies to conv inputs; use "
                          f"group<G> with G <= {channels} (or group{channels} for one unit per sample)")
    if structure.kind == "group" and structure.size > channels:
        what = "channels" if conv else "features"
        raise ConfigError(f"act.structure: {structure.name} does not fit {layer}: its input has {channels} {what}; "
                          f"use group<G> with G <= {channels}" + (", or pixel" if conv else ""))
