"""Per-layer work of a network: MACs, weights and bitwidths, seen as matrix-vector products.

Every ``nn.Conv2d`` / ``nn.Linear`` call is one :class:`LayerProfile`. A layer is viewed
the way a dataflow accelerator sees it, as a ``rows x cols`` weight matrix applied at
``pixels`` output positions per image:

* conv: ``rows = out_channels``, ``cols = in_channels / groups * kh * kw``,
  ``pixels = H_out * W_out`` (a depthwise conv has ``cols = kh * kw``);
* linear: ``rows = out_features``, ``cols = in_features``, ``pixels`` = positions per
  sample (1 for a classifier head).

so ``MACs = rows * cols * pixels`` and ``weights = rows * cols``. Bits come from hbnn
layers (``weight_quantizer.realized_bits()`` / ``act_quantizer.realized_bits()``); a
layer without a quantizer is float (:data:`~hbnn.hw.validate.FLOAT_BITS` = 32 bits).
A weight quantizer's mix, bit-map structure and scale granularity are recorded too, for
the map-aware weight memory of :mod:`hbnn.hw.maps`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from hbnn.errors import ConfigError
from hbnn.hw.maps import check_structure
from hbnn.hw.validate import FLOAT_BITS, check_bits

__all__ = ["LayerProfile", "profile_model", "quantized_bits", "op_view", "spec_structure"]


@dataclass(frozen=True)
class LayerProfile:
    """One weight layer as a ``rows x cols`` matrix-vector product at ``pixels`` positions.

    Attributes:
        name: module name (``features.3``), ``#k`` appended for the k-th reuse of a module.
        kind: ``"conv"`` or ``"linear"``.
        rows, cols, pixels: matrix shape and output positions per image (see module doc).
        wbits, abits: average weight / input-activation bits (32.0 for float).
        quantized: True when both weights and input activations are binarized; only these
            layers define a network's "bits" in the paper's sense.
        wmix: the weight's bit mix ``((bits, fraction), ...)`` when known (None: read from
            ``wbits``, see :func:`hbnn.hw.maps.mix_levels`).
        structure: the weight's bit-map structure from its quant config (``entry``,
            ``channel``, ``block<k>``; None when the layer has no quant config).
        per_channel: one weight scale per output channel (else per tensor).
    """

    name: str
    kind: str
    rows: int
    cols: int
    pixels: int
    wbits: float = FLOAT_BITS
    abits: float = FLOAT_BITS
    quantized: bool = False
    wmix: tuple[tuple[int, float], ...] | None = None
    structure: str | None = None
    per_channel: bool = False

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image: ``rows * cols * pixels``."""
        return self.rows * self.cols * self.pixels

    @property
    def weights(self) -> int:
        """Weight entries: ``rows * cols``."""
        return self.rows * self.cols

    @property
    def weight_bits(self) -> float:
        """Weight memory in bits: ``weights * wbits``."""
        return self.weights * self.wbits

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``macs`` and ``weights``."""
        out = dataclasses.asdict(self)
        out["wmix"] = None if self.wmix is None else [list(level) for level in self.wmix]
        return {**out, "macs": self.macs, "weights": self.weights}


def _realized(quantizer: Any, what: str, layer: str) -> float:
    """Average bits of a quantizer: ``realized_bits()``, else its mix's average."""
    value = None
    if hasattr(quantizer, "realized_bits"):
        value = quantizer.realized_bits()
    if value is None and getattr(quantizer, "mix", None) is not None:
        value = quantizer.mix.average
    if value is None:
        raise ConfigError(f"{layer}: {what} quantizer reports no bits (realized_bits() is None and it has no mix)")
    return check_bits(float(value), f"{layer}.{what}_bits")


def spec_structure(spec: Any, where: str = "weight") -> str | None:
    """The bit-map structure of a ``QuantSpec``: its ``structure`` field when it has one,
    else ``block<k>`` from ``block: k`` (``entry`` for ``k = 1``); None without a spec.

    A ``structure`` left at ``entry`` while ``block > 1`` is read as ``block<k>``.
    """
    if spec is None:
        return None
    block = getattr(spec, "block", 1)
    structure = getattr(spec, "structure", None)
    if structure is None or (structure == "entry" and block != 1):
        structure = "entry" if block == 1 else f"block{block}"
    return check_structure(structure, f"{where}.structure")


def _unit_levels(quantizer: Any, weight: Any) -> tuple[tuple[int, float], ...]:
    """The mix's bitwidths with the realized fractions of a weight's units.

    Error allocation (``allocate: error``) spreads bits by Eq. 5 error, so its units'
    levels need not follow the mix's fractions (some may be absent, fraction 0); the map
    still codes the mix's bitwidths, as the packed format and ``hbnn summary`` do.
    """
    import torch

    bits = quantizer.unit_map(weight).bits.reshape(-1).long().cpu()
    total = bits.numel()
    return tuple((b, int(torch.count_nonzero(bits == b)) / total) for b in quantizer.mix.bits)


def _layer_bits(module: Any, name: str) -> dict[str, Any]:
    """Bits, quantized flag and weight-map fields of a module; missing quantizers mean float."""
    wq = getattr(module, "weight_quantizer", None)
    aq = getattr(module, "act_quantizer", None)
    out: dict[str, Any] = {
        "wbits": _realized(wq, "weight", name) if wq is not None else FLOAT_BITS,
        "abits": _realized(aq, "act", name) if aq is not None else FLOAT_BITS,
        "quantized": wq is not None and aq is not None,
    }
    mix = getattr(wq, "mix", None)
    spec = getattr(wq, "spec", None)
    if mix is not None and hasattr(mix, "bits") and hasattr(mix, "fractions"):
        out["wmix"] = tuple(zip(mix.bits, mix.fractions))
        if getattr(spec, "allocate", "key") != "key" and len(mix.bits) > 1:
            out["wmix"] = _unit_levels(wq, module.weight)
    out["structure"] = spec_structure(spec, f"{name}.weight")
    out["per_channel"] = bool(getattr(spec, "per_channel", False))
    return out


def _shape_of(module: Any, output: Any) -> tuple[str, int, int, int]:
    """``(kind, rows, cols, pixels)`` from a conv/linear module and its batch-1 output."""
    import torch.nn as nn

    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        cols = module.in_channels // module.groups * kh * kw
        return "conv", module.out_channels, cols, int(output.shape[-2] * output.shape[-1])
    pixels = int(output.numel() // module.out_features)
    return "linear", module.out_features, module.in_features, pixels


def profile_model(model: Any, input_shape: Sequence[int]) -> list[LayerProfile]:
    """Profile every ``nn.Conv2d`` / ``nn.Linear`` call of one forward pass.

    Runs ``model`` in eval mode, without gradients, on one random image of
    ``input_shape`` (``C, H, W``) with forward hooks on all conv/linear modules
    (hbnn's ``HBConv2d``/``HBLinear`` subclass them), then restores the training flag.

    Args:
        model: an ``nn.Module``.
        input_shape: per-image input shape, e.g. ``(3, 32, 32)``.

    Returns:
        One profile per call, in execution order.

    Example:
        >>> import torch.nn as nn
        >>> [p.macs for p in profile_model(nn.Conv2d(3, 8, 3), (3, 10, 10))]
        [13824]
    """
    import torch
    import torch.nn as nn

    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape: expected positive sizes such as (3, 32, 32), got {tuple(input_shape)!r}")
    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    calls: list[tuple[Any, Any]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: calls.append((mod, out.detach())))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model(torch.randn((1, *shape), generator=gen))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return _to_profiles(calls, names)


def _to_profiles(calls: list[tuple[Any, Any]], names: dict[int, str]) -> list[LayerProfile]:
    """Turn recorded ``(module, output)`` calls into profiles, naming module reuses ``name#k``."""
    seen: dict[int, int] = {}
    profiles = []
    for module, output in calls:
        k = seen.get(id(module), 0)
        seen[id(module)] = k + 1
        name = names.get(id(module), type(module).__name__) + (f"#{k}" if k else "")
        kind, rows, cols, pixels = _shape_of(module, output)
        profiles.append(LayerProfile(name, kind, rows, cols, pixels, **_layer_bits(module, name)))
    return profiles


def quantized_bits(layers: Iterable[LayerProfile]) -> float | None:
    """The network's bits in the paper's sense: MAC-weighted ``sqrt(wbits * abits)``.

    ``b = sum_l MACs_l * sqrt(m_l * n_l) / sum_l MACs_l`` over quantized layers only; it
    equals the common bitwidth when ``m = n = b`` everywhere (the paper's setting), and
    the geometric mean keeps ``b^2 = m * n`` (the xnor-popcount passes, §4.5) when
    weights and activations differ. ``None`` when no layer is quantized.
    """
    total = weighted = 0.0
    for layer in layers:
        if layer.quantized:
            total += layer.macs
            weighted += layer.macs * math.sqrt(layer.wbits * layer.abits)
    return weighted / total if total else None


def op_view(layers: Sequence[LayerProfile]) -> dict[str, Any]:
    """The paper's §4.5 op count: ``m * n`` xnor-popcount passes instead of float MACs.

    A quantized layer with ``m``-bit weights and ``n``-bit activations does ``m * n``
    binary passes per MAC, packed 64 to a word op, so its cost in word ops is
    ``MACs * m * n / 64`` and its speedup over float is ``64 / (m * n)``. Float layers
    cost one op per MAC. The network speedup is ``sum MACs / sum word_ops``.

    Returns:
        ``{"layers": [...], "macs", "float_macs", "binary_passes", "word_ops", "speedup"}``
        where ``binary_passes = sum MACs * m * n`` over quantized layers.
    """
    rows, passes, word_ops, float_macs = [], 0.0, 0.0, 0
    for layer in layers:
        if layer.quantized:
            mn = layer.wbits * layer.abits
            ops = layer.macs * mn / 64
            passes += layer.macs * mn
            rows.append({"name": layer.name, "passes_per_mac": mn, "word_ops": ops, "speedup": 64 / mn})
        else:
            ops = float(layer.macs)
            float_macs += layer.macs
            rows.append({"name": layer.name, "passes_per_mac": None, "word_ops": ops, "speedup": 1.0})
        word_ops += ops
    macs = sum(layer.macs for layer in layers)
    return {
        "layers": rows,
        "macs": macs,
        "float_macs": float_macs,
        "binary_passes": passes,
        "word_ops": word_ops,
        "speedup": macs / word_ops if word_ops else None,
    }
