"""vgg8_cnv: exact FINN CNV layer shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models import build_model

# FINN CNV (Brevitas bnn_pynq): convs 64, 64, pool, 128, 128, pool, 256, 256 (3x3, valid),
# FC 256 -> 512 -> 512 -> K. Written out here, independent of the module's constants.
FINN_CNV_WEIGHTS = [
    ("features.0", nn.Conv2d, (64, 3, 3, 3)),
    ("features.3", nn.Conv2d, (64, 64, 3, 3)),
    ("features.7", nn.Conv2d, (128, 64, 3, 3)),
    ("features.10", nn.Conv2d, (128, 128, 3, 3)),
    ("features.14", nn.Conv2d, (256, 128, 3, 3)),
    ("features.17", nn.Conv2d, (256, 256, 3, 3)),
    ("classifier.0", nn.Linear, (512, 256)),
    ("classifier.3", nn.Linear, (512, 512)),
    ("classifier.6", nn.Linear, (10, 512)),
]


def test_layer_shapes_match_finn_cnv():
    model = build_model("vgg8_cnv")
    layers = [
        (n, type(m), tuple(m.weight.shape))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    assert layers == FINN_CNV_WEIGHTS
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            assert mod.padding == (0, 0) and mod.stride == (1, 1) and mod.bias is None
    assert model.classifier[0].bias is None and model.classifier[3].bias is None
    assert model.classifier[6].bias is not None


def test_parameter_counts():
    model = build_model("vgg8_cnv")
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights == 1_542_848
    assert sum(p.numel() for p in model.parameters()) == 1_546_698


def test_pools_and_batch_norms():
    model = build_model("vgg8_cnv")
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [6, 13]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 6
    assert [type(m) for m in model.classifier] == [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 256, 1, 1)


def test_larger_input_widens_first_fc():
    model = build_model("vgg8_cnv", image_size=36, num_classes=3)
    assert model.classifier[0].in_features == 256 * 2 * 2
    assert model(torch.zeros(2, 3, 36, 36)).shape == (2, 3)


@pytest.mark.parametrize("size", [28, 31])
def test_too_small_input(size):
    with pytest.raises(ConfigError, match=rf"image_size={size} is too small.*>= 32"):
        build_model("vgg8_cnv", image_size=size)
