"""``cifar_fc4``: the paper's "deliberately hobbled" 4-layer fully convolutional CIFAR net.

The paper reports ~78% full-precision top-1 on CIFAR-10 for this net but gives no
layers **[reading]**. Our choice: four 3x3 convs, no fully connected layer. The first
three are ``conv -> BN -> activation -> 2x2 max-pool`` blocks; the fourth maps to one
channel per class and a global average pool turns that map into the logits:

    features.0-3   conv3x3(C -> w1, pad 1), BN, act, maxpool 2   -> w1 x S/2
    features.4-7   conv3x3(w1 -> w2, pad 1), BN, act, maxpool 2  -> w2 x S/4
    features.8-11  conv3x3(w2 -> w3, pad 1), BN, act, maxpool 2  -> w3 x S/8
    classifier     conv3x3(w3 -> K, pad 1) + bias                -> K x S/8
    pool, flatten  global average pool                           -> K logits

With the default ``widths=(32, 64, 128)`` and K=10 classes, C=3 channels that is
104,544 conv weights and 105,002 parameters in all (BN affine included); a 28 px
single-channel input (Fashion-MNIST) gives 28 -> 14 -> 7 -> 3 px maps and 104,426
parameters. Convs followed by BN carry no bias (BN's shift replaces it); the classifier
conv keeps one, and when its weights are binarized the quantized layer's output scale
supplies the paper's learnable scalar.

The net is small on purpose: the showcase must separate FP, 2-bit and 1-bit. Pass a
narrower ``widths`` (e.g. ``(16, 32, 64)``) or ``width_mult < 1`` to hobble it further.
Any input of at least 8 px works (three pools need 8 -> 1); 28 and 32 px are the tested
sizes. Weights use PyTorch's default initialisation, so ``torch.manual_seed`` fixes them.

Example:
    >>> model = CifarFC4(num_classes=10, in_channels=1, image_size=28, widths=(16, 32, 64))
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models._layers import check_common, check_int, check_positive_float, conv_bn_act
from hbnn.models.registry import register_model

__all__ = ["CifarFC4", "DEFAULT_WIDTHS"]

#: Output channels of the three hidden convs at ``width_mult=1``.
DEFAULT_WIDTHS = (32, 64, 128)

_NAME = "cifar_fc4"


def _check_widths(widths: Sequence[int], width_mult: float) -> tuple[int, int, int]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) != 3:
        raise ConfigError(
            f"{_NAME}: widths must be 3 integers (the hidden convs' channels), got {widths!r}"
        )
    for w in widths:
        check_int(_NAME, "widths entry", w)
    return tuple(max(1, round(w * width_mult)) for w in widths)  # type: ignore[return-value]


@register_model(_NAME)
class CifarFC4(nn.Module):
    """Four 3x3 convs, three max-pools, global average pool; no fully connected layer.

    Args:
        num_classes: number of logits (= channels of the last conv).
        in_channels: input channels (1 for (Fashion-)MNIST, 3 for CIFAR).
        image_size: input side length, at least 8 (28 and 32 are the intended sizes).
        widths: output channels of the three hidden convs.
        width_mult: multiplier applied to ``widths`` (rounded, at least 1 channel).
        activation: ``"relu"`` or ``"hardtanh"`` (for binarized activations).

    Raises:
        ConfigError: for any invalid argument.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        width_mult: float = 1.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_common(_NAME, num_classes, in_channels, image_size, activation)
        if image_size < 8:
            raise ConfigError(f"{_NAME}: image_size must be >= 8 (three 2x2 pools), got {image_size}")
        width_mult = check_positive_float(_NAME, "width_mult", width_mult)
        self.widths = _check_widths(widths, width_mult)

        layers: list[nn.Module] = []
        prev = in_channels
        for width in self.widths:
            layers += conv_bn_act(prev, width, 3, padding=1, activation=activation)
            layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(prev, num_classes, 3, padding=1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.flatten(self.pool(self.classifier(self.features(x))))
