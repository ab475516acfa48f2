"""Quantizer configurations: dataclasses that validate themselves and round-trip to dicts.

``QuantSpec`` says how one tensor (a layer's weight or its input activation) is binarized;
``LayerQuant`` pairs the weight and activation specs of one layer. Both accept the short
forms used in YAML recipes (``weight: 1.4`` means ``QuantSpec(bits=1.4)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from hbnn.errors import ConfigError
from hbnn.quant.checks import HEURISTICS
from hbnn.quant.mix import BitMix

__all__ = ["QuantSpec", "LayerQuant", "EVAL_MODES", "SELECT_MODES"]

EVAL_MODES = ("running", "exact")
SELECT_MODES = ("exact", "sampled")


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{field}: invalid value {value!r}; allowed: {allowed}")


def _check_keys(cls, data: Mapping, where: str) -> None:
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


@dataclass
class QuantSpec:
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
    """

    bits: Any = 1
    heuristic: str = "middle_out"
    block: int = 1
    per_channel: bool = False
    eval_mode: str = "running"
    momentum: float = 0.1
    seed: int = 0
    select: str = "exact"

    def __post_init__(self) -> None:
        try:
            self.bits = BitMix.coerce(self.bits)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from None
        if self.heuristic not in HEURISTICS:
            raise _fail("heuristic", self.heuristic, ", ".join(HEURISTICS))
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise _fail("block", self.block, "an integer >= 1")
        if not isinstance(self.per_channel, bool):
            raise _fail("per_channel", self.per_channel, "true or false")
        if self.eval_mode not in EVAL_MODES:
            raise _fail("eval_mode", self.eval_mode, ", ".join(EVAL_MODES))
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 < m <= 1:
            raise _fail("momentum", m, "a number in (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _fail("seed", self.seed, "an integer")
        if self.select not in SELECT_MODES:
            raise _fail("select", self.select, ", ".join(SELECT_MODES))

    @property
    def mix(self) -> BitMix:
        """The validated bit mix."""
        return self.bits

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict (bits as ``{"1": 0.7, ...}``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["bits"] = {str(b): p for b, p in self.bits.to_dict().items()}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "QuantSpec":
        """Build from a dict, or from a bare bits value (``1.4``, ``"70/20/10"``)."""
        if isinstance(data, QuantSpec):
            return data
        if not isinstance(data, Mapping):
            return cls(bits=data)
        _check_keys(cls, data, "quant spec")
        return cls(**data)


@dataclass
class LayerQuant:
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
            self.weight = QuantSpec.from_dict(self.weight)
            if self.weight.select != "exact":
                raise _fail("weight.select", self.weight.select, "exact (sampled selection applies to activations)")
        if self.act is not None:
            self.act = QuantSpec.from_dict(self.act)
            if self.act.block != 1:
                raise _fail("act.block", self.act.block, "1 (block granularity applies to weights only)")
        if not isinstance(self.output_scale, bool):
            raise _fail("output_scale", self.output_scale, "true or false")

    @property
    def is_float(self) -> bool:
        """True when nothing is quantized."""
        return self.weight is None and self.act is None

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict."""
        return {
            "weight": None if self.weight is None else self.weight.to_dict(),
            "act": None if self.act is None else self.act.to_dict(),
            "output_scale": self.output_scale,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "LayerQuant":
        """Build from a dict with keys weight/act/output_scale."""
        if isinstance(data, LayerQuant):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"layer quant: expected a mapping with weight/act/output_scale, got {data!r}")
        _check_keys(cls, data, "layer quant")
        return cls(**data)
