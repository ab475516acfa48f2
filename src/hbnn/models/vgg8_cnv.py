"""``vgg8_cnv``: FINN's CNV CIFAR-10 topology ("VGG-8"), the net of the paper's Table 2.

Six 3x3 convs with *valid* (no) padding and two 2x2 max-pools, then three fully
connected layers, as in FINN's CNV (Umuroglu et al. 2017; Brevitas ``bnn_pynq`` CNV).
Every hidden conv/FC is followed by batch norm and the activation. For a 32 px input:

    features.0-2    conv3x3(C -> 64), BN, act              64 x 30 x 30
    features.3-6    conv3x3(64 -> 64), BN, act, maxpool 2   64 x 14 x 14
    features.7-9    conv3x3(64 -> 128), BN, act             128 x 12 x 12
    features.10-13  conv3x3(128 -> 128), BN, act, maxpool 2 128 x 5 x 5
    features.14-16  conv3x3(128 -> 256), BN, act            256 x 3 x 3
    features.17-19  conv3x3(256 -> 256), BN, act            256 x 1 x 1
    flatten                                                 256
    classifier.0-2  linear(256 -> 512), BN1d, act           512
    classifier.3-5  linear(512 -> 512), BN1d, act           512
    classifier.6    linear(512 -> K) + bias                 K

That is 1,144,512 conv weights and 393,216 + 512*K FC weights (1,542,848 weights and
1,546,698 parameters with BN and the final bias for K=10, C=3). Differences from
FINN, on purpose: FINN ends with a ``TensorNorm`` (a learnable scalar affine); we use a
bias on the last linear layer instead, and a binarized last layer gets its scalar scale
from the quantized layer's ``output_scale``. FINN's layers have no bias; ours neither,
except the last. FINN feeds the first conv 8-bit pixels; quantization is not this
module's concern.

Valid padding needs ``image_size >= 32``; larger inputs widen the first FC layer
(``256 * f * f`` inputs for a final ``f x f`` map). Pad 28 px images to 32 to use it on
(Fashion-)MNIST.
"""

from __future__ import annotations

import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models._layers import check_common, conv_bn_act, final_size, make_activation
from hbnn.models.registry import register_model

__all__ = ["CNV_CONVS", "CNV_FCS", "VGG8CNV"]

_NAME = "vgg8_cnv"

#: ``(out_channels, max-pool after)`` of the six 3x3 valid-padding convs.
CNV_CONVS = ((64, False), (64, True), (128, False), (128, True), (256, False), (256, False))
#: Widths of the two hidden fully connected layers.
CNV_FCS = (512, 512)


@register_model(_NAME)
class VGG8CNV(nn.Module):
    """FINN's CNV: six valid 3x3 convs (64, 64, pool, 128, 128, pool, 256, 256), FC 512, 512, K.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        image_size: input side length, at least 32.
        activation: ``"relu"`` or ``"hardtanh"``.

    Raises:
        ConfigError: for any invalid argument, including inputs too small for valid padding.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_common(_NAME, num_classes, in_channels, image_size, activation)
        pools = {i: (2, 2) for i, (_, pool) in enumerate(CNV_CONVS) if pool}
        final = final_size(image_size, [(3, 1, 0)] * len(CNV_CONVS), pools)
        if final < 1:
            raise ConfigError(
                f"{_NAME}: image_size={image_size} is too small for its valid-padding convs; "
                "need >= 32 (pad smaller images)"
            )

        layers: list[nn.Module] = []
        prev = in_channels
        for width, pool in CNV_CONVS:
            layers += conv_bn_act(prev, width, 3, activation=activation)
            if pool:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)

        fc: list[nn.Module] = []
        prev = prev * final * final
        for width in CNV_FCS:
            fc += [nn.Linear(prev, width, bias=False), nn.BatchNorm1d(width), make_activation(activation)]
            prev = width
        fc.append(nn.Linear(prev, num_classes, bias=True))
        self.classifier = nn.Sequential(*fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, num_classes]`` logits."""
        return self.classifier(self.flatten(self.features(x)))
