"""Model conversion: swap float conv/linear layers for binarized ones by a name -> config map.

Heterogeneity is data: a :class:`QuantizeConfig` holds a default :class:`LayerQuant` and an
ordered map of regular expressions (matched with ``re.search`` against module names) to
per-layer configs (``None`` keeps a layer float). The first matching rule wins; layers no
rule matches get the default, except that by default the first and the last conv/linear
layers stay float (the paper's weight+activation setting). Rules that match nothing are
reported (and warned about), since a typo there silently changes an experiment; so are
conv/linear-like modules that cannot be converted (:attr:`ConversionReport.unsupported`).
Converted layers keep the float layers' ``weight``/``bias`` Parameter objects, so an
optimizer built before :func:`quantize_` keeps training them.

Example:
    >>> report = quantize_(model, {"default": {"weight": 1.4, "act": 1.4},
    ...                            "rules": {r"\\.dw$": None}})
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from hbnn.errors import ConfigError
from hbnn.nn import HBConv2d, HBLinear
from hbnn.quant.config import LayerQuant
from hbnn.schema import Schema, check
from hbnn.summary import summarize

__all__ = ["QuantizeConfig", "ConversionReport", "FilterFn", "quantize_", "dequantize_", "summarize"]

_SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: HBConv2d, nn.Linear: HBLinear}

FilterFn = Callable[[nn.Module, str], bool]


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
    """What :func:`quantize_` did with every conv/linear-like module it met.

    ``converted``, ``kept_float`` and ``unsupported`` partition the model's conv/linear-like
    modules (every ``nn.Linear``, ``nn.Bilinear`` and ``nn.Conv*d``/``nn.ConvTranspose*d``,
    subclasses included) by qualified name.

    Attributes:
        converted: ``{fqn: LayerQuant}`` of the layers swapped for HB layers.
        kept_float: ``{fqn: why}`` of modules left as they are: convertible layers a ``None``
            rule/default or ``keep_first``/``keep_last`` keeps float, and every module
            ``filter_fn`` rejected (why ``"filter_fn"``).
        unsupported: ``{fqn: "TypeName (why)"}`` of conv/linear-like modules ``quantize_``
            cannot convert (other conv kinds, subclasses, lazy or parametrized layers, HB layers).
        unmatched_rules: rules that matched no candidate layer.
    """

    converted: dict[str, LayerQuant] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    unmatched_rules: list[str] = field(default_factory=list)


_LIKE = (_ConvNd, nn.Linear, nn.Bilinear)


def _unsupported_reason(module: nn.Module) -> str | None:
    """Why a conv/linear-like ``module`` cannot be converted, or None when it can."""
    if isinstance(module, (HBConv2d, HBLinear)):
        return "already binarized; dequantize_ first to convert it again"
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return "uninitialized lazy module; run one forward pass first"
    if parametrize.is_parametrized(module):
        return "parametrized weight (torch.nn.utils.parametrize)"
    kind, base = type(module), next((b for b in _SWAPS if isinstance(module, b)), None)
    if base is None:
        return "no binarized counterpart; hbnn binarizes nn.Conv2d and nn.Linear"
    if kind is not base:
        if kind.forward is not base.forward:
            return f"subclass of nn.{base.__name__} with its own forward; converting would change what it computes"
        return f"subclass of nn.{base.__name__}; converting would drop its type and whatever its subclass adds"
    if not isinstance(module.weight, nn.Parameter):
        return "weight is not an nn.Parameter"
    return None


def _scan(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module, str]]]:
    """Conv/linear-like modules in ``named_modules`` order: convertible ones, and the others with why."""
    convertible, unsupported = [], []
    for name, module in model.named_modules():
        if not isinstance(module, _LIKE):
            continue
        reason = _unsupported_reason(module)
        if reason is None:
            convertible.append((name, module))
        else:
            unsupported.append((name, module, f"{type(module).__name__} ({reason})"))
    return convertible, unsupported


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


def _new_trainable(name: str, old: nn.Module, new: nn.Module) -> list[str]:
    """Qualified names of ``new``'s trainable Parameters that ``old`` did not hold."""
    kept = {id(p) for p in old.parameters()}
    return [f"{name}.{n}" for n, p in new.named_parameters() if p.requires_grad and id(p) not in kept]


def _report_unsupported(unsupported: list[tuple[str, nn.Module, str]], filter_fn: FilterFn | None,
                        report: ConversionReport) -> None:
    """File each unsupported module under ``report.unsupported``, or ``kept_float`` when ``filter_fn`` rejects it."""
    for name, module, why in unsupported:
        if filter_fn is not None and not filter_fn(module, name):
            report.kept_float[name] = "filter_fn"
        else:
            report.unsupported[name] = why


def _warn(report: ConversionReport, new_params: list[str]) -> None:
    if report.unmatched_rules:
        warnings.warn(f"quantize_: rules matched no layer: {report.unmatched_rules}", stacklevel=3)
    if report.unsupported:
        listed = "; ".join(f"{n}: {why}" for n, why in report.unsupported.items())
        warnings.warn(f"quantize_: left {len(report.unsupported)} conv/linear-like module(s) unconverted "
                      f"(ConversionReport.unsupported; filter_fn can exclude them): {listed}", stacklevel=3)
    if new_params:
        warnings.warn(f"quantize_: new trainable parameters {new_params} are in no optimizer built before "
                      "quantize_; build the optimizer after quantize_ if they should train", stacklevel=3)


def quantize_(model: nn.Module, config: QuantizeConfig | Mapping, *,
              filter_fn: FilterFn | None = None) -> ConversionReport:
    """Replace ``nn.Conv2d``/``nn.Linear`` layers of ``model`` in place by HB layers.

    Converted layers keep their float layer's ``weight``/``bias`` Parameter objects (see
    :meth:`hbnn.nn.HBLayerMixin.from_float`), so an optimizer built before ``quantize_`` still
    trains the binarized weights; new Parameters (a binarized last layer's ``output_scale``)
    are warned about once, since such an optimizer misses them. ``named_parameters()`` and
    ``state_dict()`` order is that of the converted model built from scratch.

    Only exact ``nn.Conv2d``/``nn.Linear`` instances are converted; every other conv/linear-like
    module (subclasses such as timm's ``StdConv2d``, ``nn.Conv1d``/``nn.Conv3d``,
    ``nn.ConvTranspose*d``, ``nn.Bilinear``, uninitialized lazy layers) lands in
    ``report.unsupported`` with the reason and is warned about once. ``keep_first``/``keep_last``
    refer to the first/last convertible layer in ``named_modules`` order, whatever
    ``filter_fn`` says.

    Args:
        model: any module tree.
        config: a :class:`QuantizeConfig` or its dict form.
        filter_fn: ``filter_fn(module, fqn) -> bool``, called on every conv/linear-like module;
            only those it returns True for are candidates (rules and default apply to them),
            the others go to ``report.kept_float`` with reason ``"filter_fn"``. None: all are.

    Returns:
        A :class:`ConversionReport` covering every conv/linear-like module.

    Raises:
        ConfigError: a bad ``config``, ``filter_fn`` is neither callable nor None, or a layer's
            config does not fit it (e.g. ``structure: block64`` on rows of 27 inputs; the
            message names the layer).
    """
    cfg = QuantizeConfig.from_dict(config)
    check(filter_fn is None or callable(filter_fn), "filter_fn", filter_fn, "a callable (module, fqn) -> bool, or None")
    layers, unsupported = _scan(model)
    report, used, new_params = ConversionReport(), set(), []
    for index, (name, layer) in enumerate(layers):
        if filter_fn is not None and not filter_fn(layer, name):
            report.kept_float[name] = "filter_fn"
            continue
        position = "first" if index == 0 else "last" if index == len(layers) - 1 else "middle"
        layer_cfg, why = _choose(name, position, cfg, used)
        if layer_cfg is None or layer_cfg.is_float:
            report.kept_float[name] = why
            continue
        if position == "last" and cfg.last_output_scale and layer_cfg.weight is not None:
            layer_cfg = LayerQuant(layer_cfg.weight, layer_cfg.act, output_scale=True)
        try:
            new = _SWAPS[type(layer)].from_float(layer, layer_cfg)
        except ConfigError as exc:  # a spec that does not fit this layer (hbnn.quant.structure.check_fit)
            raise ConfigError(f"layer {name}: {exc}") from None
        new_params += _new_trainable(name, layer, new)
        _set_module(model, name, new)
        report.converted[name] = layer_cfg
    _report_unsupported(unsupported, filter_fn, report)
    report.unmatched_rules = [p for p in cfg.rules if p not in used]
    _warn(report, new_params)
    return report


def dequantize_(model: nn.Module) -> list[str]:
    """Replace every HB layer of ``model`` by its float twin; returns the names.

    The float layers keep the HB layers' ``weight``/``bias`` Parameter objects (the latent
    weights); quantizers and ``output_scale`` are dropped.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, (HBConv2d, HBLinear))]
    for name in names:
        _set_module(model, name, model.get_submodule(name).to_float())
    return names
