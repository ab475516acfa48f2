"""Quantizer configurations: dataclasses that validate themselves and round-trip to dicts.

``QuantSpec`` says how one tensor (a layer's weight or its input activation) is binarized;
``LayerQuant`` pairs the weight and activation specs of one layer. Both are
:class:`hbnn.schema.Schema` classes (``from_dict``/``to_dict``); a spec also accepts the
short form used in YAML recipes (``weight: 1.4`` means ``QuantSpec(bits=1.4)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hbnn.errors import ConfigError
from hbnn.quant.checks import HEURISTICS
from hbnn.quant.mix import BitMix
from hbnn.quant.structure import ACT_FORMS, ALLOCATIONS, WEIGHT_FORMS, parse_structure
from hbnn.schema import Schema, check, check_choice, invalid, is_int, is_number

__all__ = ["QuantSpec", "LayerQuant", "EVAL_MODES", "SELECT_MODES"]

EVAL_MODES = ("running", "exact")
SELECT_MODES = ("exact", "sampled")


@dataclass
class QuantSpec(Schema):
    """How to binarize one tensor.

    Attributes:
        bits: the bit mix (anything :meth:`BitMix.coerce` takes: ``1``, ``1.4``, ``"80/0/20"``,
            ``{1: 0.7, 2: 0.2, 3: 0.1}``); stored as a :class:`BitMix`.
        heuristic: Algorithm 1's ranking key: middle_out, top_down, bottom_up, random.
        block: bit-map granularity; ``1`` per entry (the paper), ``k`` runs of k inputs.
        per_channel: one scale per output channel (weights) instead of per tensor.
        eval_mode: activations at inference: ``running`` (calibrated scales and thresholds,
            elementwise) or ``exact`` (per-input statistics, the paper's behaviour).
        momentum: running-estimate update rate for activations (as in batch norm).
        seed: seed of the ``random`` heuristic's fixed permutation.
        select: activations in training: ``exact`` (Algorithm 1 on every batch, exact counts;
            the paper) or ``sampled`` (cut thresholds from a fixed pseudo-random sample of
            16384 entries, then one comparison per cut; counts match the mix only up to
            sampling error, ~0.3% of N). Weights are always selected exactly.
        structure: bit-map units (:mod:`hbnn.quant.structure`): ``entry`` (the paper);
            weights ``block<K>`` (K consecutive inputs of an output row, OHWI order for
            convs) or ``channel``; activations ``pixel`` or ``group<G>``.
        allocate: ``key`` (Algorithm 1 on unit keys) or ``error`` (weights only: greedy
            Eq. 5 error allocation at the target average; the heuristic is then unused and
            must stay ``middle_out``, the default).

    ``structure`` and ``allocate`` appear in :meth:`to_dict` only when set (so configs,
    checkpoints and sweep hashes recorded before they existed are unchanged).
    """

    bits: Any = 1
    heuristic: str = "middle_out"
    block: int = 1
    per_channel: bool = False
    eval_mode: str = "running"
    momentum: float = 0.1
    seed: int = 0
    select: str = "exact"
    structure: str = "entry"
    allocate: str = "key"

    def __post_init__(self) -> None:
        try:
            self.bits = BitMix.coerce(self.bits)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from None
        check_choice("heuristic", self.heuristic, HEURISTICS)
        check(is_int(self.block) and self.block >= 1, "block", self.block, "an integer >= 1")
        check(isinstance(self.per_channel, bool), "per_channel", self.per_channel, "true or false")
        check_choice("eval_mode", self.eval_mode, EVAL_MODES)
        m = self.momentum
        check(is_number(m) and math.isfinite(m) and 0 < m <= 1, "momentum", m, "a number in (0, 1]")
        check(is_int(self.seed), "seed", self.seed, "an integer")
        check_choice("select", self.select, SELECT_MODES)
        structure = parse_structure(self.structure)
        check_choice("allocate", self.allocate, ALLOCATIONS)
        check(structure.is_entry or self.block == 1, "block", self.block,
              f"1 together with structure {self.structure!r} (block<K> replaces the legacy block)")
        if self.allocate == "error":
            check(self.block == 1, "block", self.block, "1 with allocate 'error' (use structure: block<K>)")
            check(self.heuristic == "middle_out", "heuristic", self.heuristic,
                  "middle_out (the default; allocate 'error' ranks units by Eq. 5 error, not by a heuristic)")

    def check_role(self, role: str) -> None:
        """Require a structure and allocation that apply to a ``role`` (``weight``/``act``) tensor.

        Raises:
            ConfigError: ``<role>.structure``/``<role>.allocate`` with the allowed values.
        """
        kind = parse_structure(self.structure).role
        if kind not in ("any", role):
            raise invalid(f"{role}.structure", self.structure,
                          f"{WEIGHT_FORMS if role == 'weight' else ACT_FORMS} ({role} structures)")
        if role == "act":
            check(self.allocate == "key", "act.allocate", self.allocate,
                  "key (error allocation needs the whole tensor; activations are binarized "
                  "elementwise per unit at inference)")
    @property
    def mix(self) -> BitMix:
        """The validated bit mix."""
        return self.bits

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict (bits as ``{"1": 0.7, ...}``)."""
        out = {**super().to_dict(), "bits": {str(b): p for b, p in self.bits.to_dict().items()}}
        for key, default in (("structure", "entry"), ("allocate", "key")):
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_value(cls, value: Any, where: str) -> "QuantSpec":
        """The short form: a bare bits value (``1.4``, ``"70/20/10"``)."""
        return cls(bits=value)


@dataclass
class LayerQuant(Schema):
    """The quantization of one layer: its weight, its input activation, an output scale.

    Attributes:
        weight: spec for the weight, or ``None`` to keep float weights.
        act: spec for the layer's input activation, or ``None`` to keep it float.
        output_scale: add a learnable scalar after the layer (the paper's choice when the
            output layer's weights are binarized).
    """

    weight: QuantSpec | None = None
    act: QuantSpec | None = None
    output_scale: bool = False

    def __post_init__(self) -> None:
        if self.weight is not None:
            self.weight = QuantSpec.from_dict(self.weight, "weight")
            self.weight.check_role("weight")
            check(self.weight.select == "exact", "weight.select", self.weight.select,
                  "exact (sampled selection applies to activations)")
        if self.act is not None:
            self.act = QuantSpec.from_dict(self.act, "act")
            check(self.act.block == 1, "act.block", self.act.block, "1 (block granularity applies to weights only)")
            self.act.check_role("act")
        check(isinstance(self.output_scale, bool), "output_scale", self.output_scale, "true or false")

    @property
    def is_float(self) -> bool:
        """True when nothing is quantized."""
        return self.weight is None and self.act is None




