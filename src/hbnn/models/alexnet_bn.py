"""``alexnet_bn``: AlexNet with batch norm after every conv and hidden FC layer (AlexNet-BN).

The paper's ImageNet baseline. Channels follow the single-tower AlexNet of
torchvision (64, 192, 384, 256, 256); each conv and each hidden linear layer is
followed by batch norm and the activation, pools come after the activation:

ImageNet variant (``small_input=False``; 224 px, any size >= 63 works):

    features.0-3    conv11x11/4 p2 (C -> 64), BN, act, maxpool 3/2    64 x 27^2
    features.4-7    conv5x5 p2 (64 -> 192), BN, act, maxpool 3/2      192 x 13^2
    features.8-10   conv3x3 p1 (192 -> 384), BN, act                   384 x 13^2
    features.11-13  conv3x3 p1 (384 -> 256), BN, act                   256 x 13^2
    features.14-17  conv3x3 p1 (256 -> 256), BN, act, maxpool 3/2      256 x 6^2
    avgpool         adaptive average pool to 6 x 6 (identity at 224 px)
    classifier      [dropout, linear(9216 -> H), BN1d, act] x 2 (H -> H), linear(H -> K)

Small-input variant (``small_input=True``; CIFAR/MNIST-sized inputs, >= 8 px): the
same five convs and channels, but conv1 is 5x5 stride 1 pad 2, conv2 5x5 pad 2, and the
three pools are 2x2, so a 32 px image leaves 256 x 4 x 4 (28 px: 3 x 3) and the first
linear layer takes ``256 * (S // 8)**2`` inputs; ``avgpool`` is the identity.

``small_input=None`` (default) picks the small variant when ``image_size <= 64``. The
hidden FC width ``hidden`` defaults to 4096 (ImageNet) or 1024 (small). Dropout
modules always exist (so layer names do not depend on it) and default to ``p=0``: batch
norm regularises these nets. Convs and hidden linears have no bias (BN follows); the
last linear has one. 224 px, K=1000, C=3: 61.1 M parameters; 32 px small, K=10: 7.7 M.
"""

from __future__ import annotations

import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models._layers import (
    check_common,
    check_int,
    conv_bn_act,
    final_size,
    make_activation,
    resolve_small_input,
)
from hbnn.models.registry import register_model

__all__ = ["AlexNetBN"]

_NAME = "alexnet_bn"
_CHANNELS = (64, 192, 384, 256, 256)
_POOL_AFTER = (0, 1, 4)  # conv indices followed by a max-pool


@register_model(_NAME)
class AlexNetBN(nn.Module):
    """AlexNet with batch norm after every conv and hidden linear layer.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        image_size: input side length (224 for ImageNet; 28/32 with the small variant).
        small_input: ``True`` for the small-input variant, ``False`` for the ImageNet
            one, ``None`` to choose by ``image_size <= 64``.
        hidden: width of the two hidden linear layers; ``None`` = 4096 (ImageNet) or
            1024 (small).
        dropout: dropout probability before each hidden linear layer, in ``[0, 1)``.
        activation: ``"relu"`` or ``"hardtanh"``.

    Raises:
        ConfigError: for any invalid argument, including an input too small for the variant.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        small_input: bool | None = None,
        hidden: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_common(_NAME, num_classes, in_channels, image_size, activation)
        small_input = resolve_small_input(_NAME, small_input, image_size)
        if hidden is None:
            hidden = 1024 if small_input else 4096
        check_int(_NAME, "hidden", hidden)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"{_NAME}: dropout must be a number in [0, 1), got {dropout!r}")
        self.small_input = small_input

        if small_input:
            convs = [(5, 1, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
            pool = (2, 2)
        else:
            convs = [(11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
            pool = (3, 2)
        final = final_size(image_size, convs, dict.fromkeys(_POOL_AFTER, pool))
        if final < 1:
            need = 8 if small_input else 63
            variant = "small-input" if small_input else "ImageNet"
            raise ConfigError(
                f"{_NAME}: image_size={image_size} is too small for the {variant} variant; need >= {need}"
            )

        layers: list[nn.Module] = []
        prev = in_channels
        for i, ((k, s, p), width) in enumerate(zip(convs, _CHANNELS)):
            layers += conv_bn_act(prev, width, k, stride=s, padding=p, activation=activation)
            if i in _POOL_AFTER:
                layers.append(nn.MaxPool2d(*pool))
            prev = width
        self.features = nn.Sequential(*layers)
        # ImageNet: a fixed 6x6 map for any input size (as torchvision); small: identity.
        side = final if small_input else 6
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        self.flatten = nn.Flatten(1)

        fc: list[nn.Module] = []
        prev = prev * side * side
        for _ in range(2):
            fc += [
                nn.Dropout(dropout),
                nn.Linear(prev, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                make_activation(activation),
            ]
            prev = hidden
        fc.append(nn.Linear(prev, num_classes, bias=True))
        self.classifier = nn.Sequential(*fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))
