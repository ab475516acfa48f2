"""Built-in layer tables of the paper's Table 2 networks, as :class:`LayerProfile` lists.

These are shape-only descriptions (no weights), so the hardware models can cost the
paper's nets without building them:

* ``finn_cnv``: FINN's CNV for CIFAR-10 (the paper's "VGG-8"): six 3x3 convs without
  padding (64, 64, pool, 128, 128, pool, 256, 256) and three FC layers (512, 512, 10) on
  32x32x3 inputs — Umuroglu et al., "FINN", FPGA 2017. 59.46 M MACs. As in FINN, the
  first layer reads 8-bit pixels (its weights follow the net's bits).
* ``mobilenet_v1_224``: MobileNet v1, width 1.0, 224x224x3 ImageNet inputs — Howard et
  al. 2017 (569 M mult-adds and 4.2 M weights in its Table 1; this table counts
  568.7 M MACs and 4.21 M weights, the 1000-way FC included).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from hbnn.errors import ConfigError
from hbnn.hw.profile import LayerProfile
from hbnn.hw.validate import check_bits

__all__ = ["WORKLOAD_LAYERS", "workload_layers", "finn_cnv", "mobilenet_v1_224"]

# Bits of the raw input pixels read by a network's first layer (FINN convention).
INPUT_BITS = 8.0


def _conv(name: str, cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> LayerProfile:
    """A conv as a matrix: ``rows = cout``, ``cols = cin/groups * k*k``, ``pixels = out_hw^2``."""
    return LayerProfile(name, "conv", cout, cin // groups * k * k, out_hw * out_hw)


def _fc(name: str, fin: int, fout: int) -> LayerProfile:
    return LayerProfile(name, "linear", fout, fin, 1)


def finn_cnv() -> list[LayerProfile]:
    """FINN CNV ("VGG-8") layer shapes, float bits (see :func:`workload_layers`)."""
    return [
        _conv("conv1", 3, 64, 3, 30),
        _conv("conv2", 64, 64, 3, 28),
        _conv("conv3", 64, 128, 3, 12),
        _conv("conv4", 128, 128, 3, 10),
        _conv("conv5", 128, 256, 3, 3),
        _conv("conv6", 256, 256, 3, 1),
        _fc("fc1", 256, 512),
        _fc("fc2", 512, 512),
        _fc("fc3", 512, 10),
    ]


def mobilenet_v1_224() -> list[LayerProfile]:
    """MobileNet v1 (1.0, 224) layer shapes: a stride-2 conv, 13 depthwise/pointwise pairs, FC."""
    layers = [_conv("conv0", 3, 32, 3, 112)]
    # (input channels, output channels, output resolution) of each dw/pw pair.
    pairs = [(32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28), (256, 512, 14)]
    pairs += [(512, 512, 14)] * 5 + [(512, 1024, 7), (1024, 1024, 7)]
    for i, (cin, cout, hw) in enumerate(pairs, start=1):
        layers.append(_conv(f"dw{i}", cin, cin, 3, hw, groups=cin))
        layers.append(_conv(f"pw{i}", cin, cout, 1, hw))
    layers.append(_fc("fc", 1024, 1000))
    return layers


WORKLOAD_LAYERS: dict[str, Callable[[], list[LayerProfile]]] = {
    "finn_cnv": finn_cnv,
    "mobilenet_v1_224": mobilenet_v1_224,
}


def workload_layers(
    name: str,
    wbits: float | None = None,
    abits: float | None = None,
    *,
    wmix: tuple[tuple[int, float], ...] | None = None,
) -> list[LayerProfile]:
    """Layer table ``name`` with ``wbits``-bit weights and ``abits``-bit activations.

    ``abits`` defaults to ``wbits``. The first layer keeps :data:`INPUT_BITS` activations
    (raw pixels) and is not counted as quantized, like FINN's CNV; ``wbits=None`` leaves
    every layer float. ``wmix`` (``((bits, fraction), ...)``) records the weights' bit mix
    for the map-aware weight memory (None: read from ``wbits``).

    Raises:
        ConfigError: unknown name (the message lists the known ones) or bits out of range.
    """
    if name not in WORKLOAD_LAYERS:
        raise ConfigError(f"layers: unknown layer table {name!r}; known: {', '.join(sorted(WORKLOAD_LAYERS))}")
    layers = WORKLOAD_LAYERS[name]()
    if wbits is None:
        return layers
    w = check_bits(wbits, "wbits")
    a = w if abits is None else check_bits(abits, "abits")
    out = [dataclasses.replace(layers[0], wbits=w, abits=INPUT_BITS, quantized=False, wmix=wmix)]
    out += [dataclasses.replace(layer, wbits=w, abits=a, quantized=True, wmix=wmix) for layer in layers[1:]]
    return out
