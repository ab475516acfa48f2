"""cifar_fc4: the documented 4-conv, fully convolutional design."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.models import build_model
from hbnn.models.cifar_fc4 import DEFAULT_WIDTHS


def _convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_four_convs_no_linear():
    model = build_model("cifar_fc4")
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    convs = _convs(model)
    assert [n for n, _ in convs] == ["features.0", "features.4", "features.8", "classifier"]
    assert [tuple(m.weight.shape) for _, m in convs] == [
        (32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (10, 128, 3, 3),
    ]  # fmt: skip
    assert [m.bias is not None for _, m in convs] == [False, False, False, True]


def test_default_parameter_counts():
    assert DEFAULT_WIDTHS == (32, 64, 128)
    model = build_model("cifar_fc4")
    assert sum(m.weight.numel() for _, m in _convs(model)) == 104_544
    assert sum(p.numel() for p in model.parameters()) == 105_002
    fmnist = build_model("cifar_fc4", in_channels=1, image_size=28)
    assert sum(p.numel() for p in fmnist.parameters()) == 104_426


def test_block_order_conv_bn_act_pool():
    model = build_model("cifar_fc4", activation="hardtanh")
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.Hardtanh, nn.MaxPool2d] * 3


@pytest.mark.parametrize("size, side", [(32, 4), (28, 3), (8, 1)])
def test_feature_map_sizes(size, side):
    model = build_model("cifar_fc4", in_channels=1, image_size=size)
    fmap = model.classifier(model.features(torch.zeros(1, 1, size, size)))
    assert fmap.shape == (1, 10, side, side)


def test_widths_and_multiplier():
    narrow = build_model("cifar_fc4", widths=[16, 32, 64])  # YAML gives lists
    assert narrow.widths == (16, 32, 64)
    assert [m.out_channels for _, m in _convs(narrow)] == [16, 32, 64, 10]
    half = build_model("cifar_fc4", width_mult=0.5)
    assert half.widths == (16, 32, 64)
    both = build_model("cifar_fc4", widths=(10, 20, 30), width_mult=0.25)
    assert both.widths == (2, 5, 8)  # round(2.5) = 2 (banker's rounding), floor 1 channel
    tiny = build_model("cifar_fc4", widths=(1, 1, 1), width_mult=0.1)
    assert tiny.widths == (1, 1, 1)
    assert tiny(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
