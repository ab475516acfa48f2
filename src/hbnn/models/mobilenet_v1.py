"""``mobilenet_v1``: MobileNet v1 (Howard et al. 2017) with a width multiplier.

A 3x3 stem conv followed by 13 depthwise-separable blocks, global average pooling and
one linear layer. Each block is a :class:`DepthwiseSeparable` module whose two convs
are named ``dw`` (3x3 depthwise, ``groups = channels``) and ``pw`` (1x1 pointwise), so
quantization rules can target them by regex (``features.3.dw``, ``features.3.pw``, ...):

    features.0-2   conv3x3/s (C -> 32a), BN, act            (s = 2, or 1 for small input)
    features.3-15  13 blocks: dw3x3/s_i, BN, act, pw1x1, BN, act
                   out channels x a: 64, 128/2, 128, 256/2, 256, 512/2, 512 x 5, 1024/2, 1024
    pool, flatten  global average pool                       1024a
    classifier     linear(1024a -> K) + bias

``a`` is ``width_mult``; a scaled width is ``max(8, int(c * a))``, as in the reference
TensorFlow implementation. ImageNet (224 px) halves the resolution five times
(224 -> 7). ``small_input=True`` uses stride 1 in the stem, so a 32 px image halves four
times (32 -> 2; 28 -> 2); ``small_input=None`` (default) picks it when
``image_size <= 64``. 224 px, K=1000, a=1: 4.23 M parameters.

:data:`POINTWISE_ONLY_QUANT` is the paper's MobileNet preset **[reading]**: only the 1x1
convs are binarized, the depthwise 3x3 convs stay float. It is the ``rules`` part of
the quantize config (see docs/architecture.md); merge it with a ``default`` spec, and
``keep_first``/``keep_last`` keep the stem conv and the classifier float::

    cfg = {"default": {"weight": {"bits": 1.4}}, **POINTWISE_ONLY_QUANT}
"""

from __future__ import annotations

import torch
from torch import nn

from hbnn.models._layers import (
    check_common,
    check_positive_float,
    conv_bn_act,
    resolve_small_input,
)
from hbnn.models.registry import register_model

__all__ = ["DepthwiseSeparable", "MobileNetV1", "POINTWISE_ONLY_QUANT"]

_NAME = "mobilenet_v1"
_STEM = 32
#: ``(out_channels, stride)`` of the 13 depthwise-separable blocks at ``width_mult=1``.
_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

#: Quant-config rules that keep every depthwise conv (name ending in ``dw``) float, so
#: only the 1x1 pointwise convs are binarized -- the paper's MobileNet setting.
POINTWISE_ONLY_QUANT = {"rules": {r"(^|\.)dw$": None}}


class DepthwiseSeparable(nn.Module):
    """``dw`` 3x3 depthwise conv -> BN -> act -> ``pw`` 1x1 conv -> BN -> act.

    Args:
        in_channels: input (= depthwise) channels.
        out_channels: output channels of the pointwise conv.
        stride: stride of the depthwise conv.
        activation: ``"relu"`` or ``"hardtanh"``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str) -> None:
        super().__init__()
        self.dw, self.dw_bn, self.dw_act = conv_bn_act(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels,
            activation=activation,
        )  # fmt: skip
        self.pw, self.pw_bn, self.pw_act = conv_bn_act(
            in_channels, out_channels, 1, activation=activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise then pointwise, each followed by BN and the activation."""
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


@register_model(_NAME)
class MobileNetV1(nn.Module):
    """MobileNet v1 with width multiplier and named depthwise (``dw``) / pointwise (``pw``) convs.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        image_size: input side length (224 for ImageNet, 28/32 with small input).
        width_mult: channel multiplier ``a`` (> 0); widths become ``max(8, int(c * a))``.
        small_input: stem stride 1 instead of 2; ``None`` = ``image_size <= 64``.
        activation: ``"relu"`` or ``"hardtanh"``.

    Raises:
        ConfigError: for any invalid argument.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        width_mult: float = 1.0,
        small_input: bool | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_common(_NAME, num_classes, in_channels, image_size, activation)
        width_mult = check_positive_float(_NAME, "width_mult", width_mult)
        self.small_input = small_input = resolve_small_input(_NAME, small_input, image_size)
        self.width_mult = width_mult

        def scaled(c: int) -> int:
            return max(8, int(c * width_mult))

        prev = scaled(_STEM)
        layers: list[nn.Module] = conv_bn_act(
            in_channels, prev, 3, stride=1 if small_input else 2, padding=1, activation=activation
        )
        for out, stride in _BLOCKS:
            layers.append(DepthwiseSeparable(prev, scaled(out), stride, activation))
            prev = scaled(out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(prev, num_classes, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.classifier(self.flatten(self.pool(self.features(x))))
