"""``resnet20`` and ``resnet18``: residual nets (He et al. 2016) in the binarization conventions.

Both are a stem, stages of :class:`~hbnn.models._resnet_blocks.BasicBlock` s, global
average pooling and one linear layer; ``a`` is ``width_mult`` and a scaled width is
``max(1, round(c * a))``. Every conv is bias-free and followed by batch norm.

``resnet20`` -- the CIFAR ResNet (He et al. 2016, Sec. 4.2, n = 3, 6n + 2 = 20 layers):

    features.stem, stem_bn, stem_act   conv3x3 (C -> 16a), BN, act                S
    features.layer1                    3 blocks, 16a                              S
    features.layer2                    3 blocks, 32a, first stride 2              S/2
    features.layer3                    3 blocks, 64a, first stride 2              S/4
    pool, flatten, classifier          global average pool, linear(64a -> K)

Shortcut option A by default (as the paper's CIFAR nets): 32 px, C=3, K=10, a=1 gives
269,722 parameters (the "0.27M" of the paper's Table 6); 28 px inputs work as well
(28 -> 14 -> 7).

``resnet18`` -- the ImageNet ResNet-18 (He et al. 2016, Table 1):

    features.stem, stem_bn, stem_act   conv7x7/2 p3 (C -> 64a), BN, act
    features.stem_pool                 maxpool 3/2 p1                             S/4
    features.layer1..layer4            2 blocks each, 64a, 128a/2, 256a/2, 512a/2 S/32
    pool, flatten, classifier          global average pool, linear(512a -> K)

Shortcut option B by default; 224 px, C=3, K=1000, a=1: 11,689,512 parameters (as
torchvision's). ``small_input=True`` -- the usual CIFAR adaptation of ResNet-18 -- makes
the stem a 3x3 stride-1 conv without the max-pool (32 px: 32 -> 4 at the last stage;
32 px, K=10: 11,173,962 parameters); ``small_input=None`` (default) picks it when
``image_size <= 64``, as ``alexnet_bn`` and ``mobilenet_v1`` do.

Binarization conventions (what ``hbnn.quantize_`` with the recipes' layout produces):

- the stem conv and the classifier stay float -- the practice of XNOR-Net (Rastegari
  et al. 2016), Bi-Real Net (Liu et al. 2018) and ReActNet (Liu et al. 2020), and of the
  rest of this zoo; they are named ``features.stem`` and ``classifier`` so a rule can
  target them (``keep_first``/``keep_last`` also cover them);
- batch norm follows every conv, including the option-B projection;
- the binarized activation sits at the input of each binarized conv (the HB layer's
  activation quantizer), while the residual add and the shortcut stay float;
- ``shortcut``: ``"A"`` (identity with zero-padded channels and stride-2 subsampling, no
  parameters) or ``"B"`` (1x1 conv + BN on the downsampling blocks, identity elsewhere);
  ``binarize_shortcut=False`` (default) keeps the 1x1 projection convs float, as Bi-Real
  Net does: they are named ``shortcut.float_conv`` and :data:`RESNET_QUANT` keeps them
  float; ``True`` names them ``shortcut.conv`` and they are binarized like the 3x3 convs.

:data:`RESNET_QUANT` is the ``rules`` part of the quantize config the ResNet recipes use
(``_quant/resnet.yaml``); merge it with a ``default`` spec::

    cfg = {"default": {"weight": {"bits": 1.4}, "act": {"bits": 1.4}}, **RESNET_QUANT}

The packed exporter (``hbnn export``) captures them as graphs (residual adds, option-A
subsampling and channel padding, projection shortcuts; ``docs/deploy.md``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hbnn.models._layers import (
    check_common,
    check_positive_float,
    make_activation,
    resolve_small_input,
)
from hbnn.models._resnet_blocks import ResNetBase, check_shortcut
from hbnn.models.registry import register_model

__all__ = ["RESNET_QUANT", "ResNet18", "ResNet20"]

#: Quant-config rules keeping float what the ResNets keep float: the stem conv, the
#: classifier and the projection convs named ``float_conv`` (``binarize_shortcut=False``).
#: The rule matches in every ResNet (the stem), so it is never reported as dead.
RESNET_QUANT = {"rules": {r"(^|\.)stem$|^classifier$|\.shortcut\.float_conv$": None}}


def _scaled(widths: tuple[int, ...], width_mult: float) -> list[int]:
    return [max(1, round(c * width_mult)) for c in widths]


def _stem(in_channels: int, out_channels: int, kernel: int, stride: int, activation: str,
          pool: bool) -> list[tuple[str, nn.Module]]:
    """``stem`` conv (padding ``kernel // 2``), ``stem_bn``, ``stem_act`` and, if ``pool``, a 3/2 p1 ``stem_pool``."""
    layers: list[tuple[str, nn.Module]] = [
        ("stem", nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)),
        ("stem_bn", nn.BatchNorm2d(out_channels)),
        ("stem_act", make_activation(activation)),
    ]
    if pool:
        layers.append(("stem_pool", nn.MaxPool2d(3, stride=2, padding=1)))
    return layers


def _check(owner: str, num_classes: Any, in_channels: Any, image_size: Any, activation: Any,
           width_mult: Any, shortcut: Any, binarize_shortcut: Any) -> float:
    check_common(owner, num_classes, in_channels, image_size, activation)
    check_shortcut(owner, shortcut, binarize_shortcut)
    return check_positive_float(owner, "width_mult", width_mult)


@register_model("resnet20")
class ResNet20(ResNetBase):
    """CIFAR ResNet-20: 3x3 stem, 3 stages of 3 basic blocks (16, 32, 64 channels x ``width_mult``).

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        image_size: input side length (32 for CIFAR, 28 for (Fashion-)MNIST; any >= 1).
        width_mult: channel multiplier ``a`` (> 0); widths become ``max(1, round(c * a))``.
        shortcut: ``"A"`` (zero-pad, default) or ``"B"`` (1x1 conv + BN) on downsampling blocks.
        binarize_shortcut: option B only: name the projection convs ``conv`` (binarized by
            the recipes) instead of ``float_conv`` (kept float).
        activation: ``"relu"`` or ``"hardtanh"``.

    Raises:
        ConfigError: for any invalid argument.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 width_mult: float = 1.0, shortcut: str = "A", binarize_shortcut: bool = False,
                 activation: str = "relu") -> None:
        width_mult = _check("resnet20", num_classes, in_channels, image_size, activation, width_mult, shortcut,
                            binarize_shortcut)
        stem_width, *widths = _scaled((16, 16, 32, 64), width_mult)
        super().__init__(_stem(in_channels, stem_width, 3, 1, activation, pool=False), stem_width, widths,
                         (1, 2, 2), 3, num_classes=num_classes, activation=activation, shortcut=shortcut,
                         binarize_shortcut=binarize_shortcut)
        self.width_mult = width_mult


@register_model("resnet18")
class ResNet18(ResNetBase):
    """ImageNet ResNet-18: 7x7/2 stem + max-pool (or a 3x3/1 stem for small input), 4 stages of 2 blocks.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        image_size: input side length (224 for ImageNet; 28/32 with the small stem).
        width_mult: channel multiplier ``a`` (> 0); widths become ``max(1, round(c * a))``.
        small_input: 3x3 stride-1 stem without max-pool; ``None`` = ``image_size <= 64``.
        shortcut: ``"B"`` (1x1 conv + BN, default) or ``"A"`` (zero-pad) on downsampling blocks.
        binarize_shortcut: option B only: name the projection convs ``conv`` (binarized by
            the recipes) instead of ``float_conv`` (kept float).
        activation: ``"relu"`` or ``"hardtanh"``.

    Raises:
        ConfigError: for any invalid argument.
    """

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 width_mult: float = 1.0, small_input: bool | None = None, shortcut: str = "B",
                 binarize_shortcut: bool = False, activation: str = "relu") -> None:
        width_mult = _check("resnet18", num_classes, in_channels, image_size, activation, width_mult, shortcut,
                            binarize_shortcut)
        small_input = resolve_small_input("resnet18", small_input, image_size)
        stem_width, *widths = _scaled((64, 64, 128, 256, 512), width_mult)
        stem = (_stem(in_channels, stem_width, 3, 1, activation, pool=False) if small_input
                else _stem(in_channels, stem_width, 7, 2, activation, pool=True))
        super().__init__(stem, stem_width, widths, (1, 2, 2, 2), 2, num_classes=num_classes, activation=activation,
                         shortcut=shortcut, binarize_shortcut=binarize_shortcut)
        self.small_input = small_input
        self.width_mult = width_mult
