"""Layer-level mixing (the paper's Fig. 3a baseline): whole layers at 1, 2 or 3 bits.

Per-parameter HBNN mixes bitwidths *inside* every tensor. The baseline it is compared
with gives each layer one homogeneous bitwidth and reaches a fractional model average
only through the parameter counts: ``avg = sum_l n_l b_l / sum_l n_l``. Which averages
are reachable depends on the model, so :func:`solve_layer_bits` picks the assignment
whose average is closest to the target and the realized average is recorded with the run.

The model average is weighted by each binarized layer's own parameters (weight, bias and
output scale), exactly as :func:`hbnn.summarize` weighs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["LayerPlan", "solve_layer_bits", "layer_param_counts", "config_shape"]

#: Above this many distinct partial sums the search merges sums that differ by less than
#: ``total / MAX_STATES`` parameters (average error <= layers / MAX_STATES bits).
MAX_STATES = 50_000


@dataclass(frozen=True)
class LayerPlan:
    """A layer-level assignment.

    Attributes:
        bits: ``{layer name: bits}`` in the order of the counts given.
        average: the parameter-weighted average it realizes.
        target: the requested average.
    """

    bits: dict[str, int]
    average: float
    target: float

    @property
    def error(self) -> float:
        """``|average - target|``."""
        return abs(self.average - self.target)


def _check(counts: Mapping[str, int], target: float, choices: Sequence[int]) -> tuple[int, ...]:
    if not counts:
        raise ValueError("layer-level mixing: the model has no binarized layer to assign bits to")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts.values()):
        raise ValueError(f"layer-level mixing: parameter counts must be positive integers, got {dict(counts)!r}")
    choices = tuple(sorted(set(choices)))
    if not choices or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8 for b in choices):
        raise ValueError(f"layer_choices: expected integers in 1..8, got {list(choices)!r}")
    if not isinstance(target, (int, float)) or not choices[0] <= target <= choices[-1]:
        raise ValueError(f"layer_bits: {target!r} is outside the reachable range {choices[0]}..{choices[-1]}")
    return choices


def solve_layer_bits(counts: Mapping[str, int], target: float, choices: Sequence[int] = (1, 2, 3)) -> LayerPlan:
    """Per-layer bitwidths whose parameter-weighted average is closest to ``target``.

    Minimises ``|avg - target|``; ties go to the assignment with the least
    ``sum_l n_l |b_l - target|`` (bits as close to the target as possible, so 2.0 is "every
    layer at 2 bits", not a 1/3 split), then to the first found. Exact dynamic programming
    over the reachable parameter-bit sums (merged only beyond :data:`MAX_STATES` sums).

    Args:
        counts: ``{layer name: parameters}`` of the layers to assign.
        target: the average to approach.
        choices: the allowed bitwidths.

    Returns:
        The :class:`LayerPlan`.

    Example:
        >>> solve_layer_bits({"a": 100, "b": 300}, 1.25).bits
        {'a': 2, 'b': 1}
    """
    choices = _check(counts, target, choices)
    total = sum(counts.values())
    resolution = max(1, total * max(choices) // MAX_STATES)
    states: dict[int, tuple[int, float, tuple[int, ...]]] = {0: (0, 0.0, ())}  # key -> (sum, cost, bits)
    for n in counts.values():
        nxt: dict[int, tuple[int, float, tuple[int, ...]]] = {}
        for s, cost, bits in states.values():
            for b in choices:
                cand = (s + n * b, cost + n * abs(b - target), (*bits, b))
                key = cand[0] // resolution
                if key not in nxt or cand[1] < nxt[key][1]:
                    nxt[key] = cand
        states = nxt
    best = min(states.values(), key=lambda c: (abs(c[0] / total - target), c[1]))
    return LayerPlan(bits=dict(zip(counts, best[2])), average=best[0] / total, target=float(target))


def config_shape(data: Mapping[str, Any]) -> dict:
    """``{"num_classes", "in_channels", "image_size"}`` of a config's ``data`` section, without
    reading the data: the registry's shape (:func:`hbnn.train.rebuild.registry_shape`) with the
    section's ``image_size`` when it sets one."""
    from hbnn.train.rebuild import registry_shape

    shape = registry_shape(str(data.get("name", "fashion_mnist")))
    if data.get("image_size"):
        shape["image_size"] = int(data["image_size"])
    return shape


def layer_param_counts(config: Mapping[str, Any], layout_quant: Mapping[str, Any]) -> dict[str, int]:
    """``{layer name: parameters}`` of the layers whose weights ``layout_quant`` binarizes.

    Args:
        config: a config mapping with ``model`` and ``data`` sections.
        layout_quant: ``rules``/``keep_first``/``keep_last`` of the quant section.

    Returns:
        Counts in model order, as :func:`hbnn.summarize` counts them.
    """
    import warnings

    from hbnn.convert import quantize_
    from hbnn.models import build_model
    from hbnn.nn import HBLayerMixin

    model_cfg = dict(config.get("model") or {})
    shape = config_shape(dict(config.get("data") or {}))
    model = build_model(model_cfg.get("name", "cifar_fc4"), **shape,
                        activation=model_cfg.get("activation", "relu"), **dict(model_cfg.get("kwargs") or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(model, {**dict(layout_quant), "default": {"weight": {"bits": 1}}})
    return {name: sum(p.numel() for p in m.parameters(recurse=False))
            for name, m in model.named_modules()
            if isinstance(m, HBLayerMixin) and m.weight_quantizer is not None}
