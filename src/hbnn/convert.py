"""Model conversion: swap float conv/linear layers for binarized ones by a name -> config map.

Heterogeneity is data: a :class:`QuantizeConfig` holds a default :class:`LayerQuant` and an
ordered map of regular expressions (matched with ``re.search`` against module names) to
per-layer configs (``None`` keeps a layer float). The first matching rule wins; layers no
rule matches get the default, except that by default the first and the last conv/linear
layers stay float (the paper's weight+activation setting). Rules that match nothing are
reported (and warned about), since a typo there silently changes an experiment.

Example:
    >>> report = quantize_(model, {"default": {"weight": 1.4, "act": 1.4},
    ...                            "rules": {r"\\.dw$": None}})
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from hbnn.errors import ConfigError
from hbnn.nn import HBConv2d, HBLinear
from hbnn.quant.config import LayerQuant
from hbnn.schema import Schema, check
from hbnn.summary import summarize

__all__ = ["QuantizeConfig", "ConversionReport", "quantize_", "dequantize_", "summarize"]

_SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: HBConv2d, nn.Linear: HBLinear}


@dataclass
class QuantizeConfig(Schema):
    """Which layers to binarize, and how (a :class:`hbnn.schema.Schema`: ``from_dict``/``to_dict``).

    Attributes:
        default: config for layers no rule matches (``None``: keep them float).
        rules: ordered ``{regex: LayerQuant | None}``; first match wins; ``None`` = float.
        keep_first: keep the first conv/linear float unless a rule names it.
        keep_last: keep the last conv/linear float unless a rule names it.
        last_output_scale: when the last layer's weights are binarized, give it a learnable
            output scale (the paper's choice).
    """

    default: LayerQuant | None = None
    rules: dict[str, LayerQuant | None] = field(default_factory=dict)
    keep_first: bool = True
    keep_last: bool = True
    last_output_scale: bool = True

    def __post_init__(self) -> None:
        if self.default is not None:
            self.default = LayerQuant.from_dict(self.default, "default")
        check(isinstance(self.rules, Mapping), "rules", self.rules, "a mapping of regex -> layer config")
        rules = {}
        for pattern, cfg in self.rules.items():
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ConfigError(f"rules: invalid regular expression {pattern!r} ({exc})") from None
            rules[pattern] = None if cfg is None else LayerQuant.from_dict(cfg, f"rules.{pattern}")
        self.rules = rules
        for name in ("keep_first", "keep_last", "last_output_scale"):
            check(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")


@dataclass
class ConversionReport:
    """What :func:`quantize_` did: converted layers, layers kept float (with why), dead rules."""

    converted: dict[str, LayerQuant] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)
    unmatched_rules: list[str] = field(default_factory=list)


def _eligible(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m) in _SWAPS]


def _choose(name: str, position: str, cfg: QuantizeConfig, used: set[str]) -> tuple[LayerQuant | None, str]:
    for pattern, layer_cfg in cfg.rules.items():
        if re.search(pattern, name):
            used.add(pattern)
            return layer_cfg, f"rule {pattern!r}"
    if position == "first" and cfg.keep_first:
        return None, "first layer (keep_first)"
    if position == "last" and cfg.keep_last:
        return None, "last layer (keep_last)"
    return cfg.default, "default"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_(model: nn.Module, config: QuantizeConfig | Mapping) -> ConversionReport:
    """Replace ``nn.Conv2d``/``nn.Linear`` layers of ``model`` in place by HB layers.

    Args:
        model: any module tree.
        config: a :class:`QuantizeConfig` or its dict form.

    Returns:
        A :class:`ConversionReport`; rules that matched no layer are also warned about.
    """
    cfg = QuantizeConfig.from_dict(config)
    layers = _eligible(model)
    report, used = ConversionReport(), set()
    for index, (name, layer) in enumerate(layers):
        position = "first" if index == 0 else "last" if index == len(layers) - 1 else "middle"
        layer_cfg, why = _choose(name, position, cfg, used)
        if layer_cfg is None or layer_cfg.is_float:
            report.kept_float[name] = why
            continue
        if position == "last" and cfg.last_output_scale and layer_cfg.weight is not None:
            layer_cfg = LayerQuant(layer_cfg.weight, layer_cfg.act, output_scale=True)
        _set_module(model, name, _SWAPS[type(layer)].from_float(layer, layer_cfg))
        report.converted[name] = layer_cfg
    report.unmatched_rules = [p for p in cfg.rules if p not in used]
    if report.unmatched_rules:
        warnings.warn(f"quantize_: rules matched no layer: {report.unmatched_rules}", stacklevel=2)
    return report


def dequantize_(model: nn.Module) -> list[str]:
    """Replace every HB layer of ``model`` by its float twin (latent weights); returns the names."""
    names = [n for n, m in model.named_modules() if isinstance(m, (HBConv2d, HBLinear))]
    for name in names:
        _set_module(model, name, model.get_submodule(name).to_float())
    return names
