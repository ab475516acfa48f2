"""alexnet_bn: ImageNet and small-input variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models import build_model


def _weights(model):
    return [
        (n, tuple(m.weight.shape))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


def test_imagenet_variant_224():
    torch.manual_seed(0)
    model = build_model("alexnet_bn", num_classes=1000).eval()
    assert model.small_input is False
    assert _weights(model) == [
        ("features.0", (64, 3, 11, 11)),
        ("features.4", (192, 64, 5, 5)),
        ("features.8", (384, 192, 3, 3)),
        ("features.11", (256, 384, 3, 3)),
        ("features.14", (256, 256, 3, 3)),
        ("classifier.1", (4096, 9216)),
        ("classifier.5", (4096, 4096)),
        ("classifier.8", (1000, 4096)),
    ]
    assert sum(p.numel() for p in model.parameters()) == 61_110_184
    # BN after every conv and hidden FC.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2
    with torch.no_grad():
        feats = model.features(torch.zeros(1, 3, 224, 224))
        assert feats.shape == (1, 256, 6, 6)
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("size, side", [(32, 4), (28, 3)])
def test_small_variant_auto(size, side):
    model = build_model("alexnet_bn", in_channels=1, image_size=size, hidden=32)
    assert model.small_input is True
    weights = _weights(model)
    assert weights[0] == ("features.0", (64, 1, 5, 5))
    assert weights[5] == ("classifier.1", (32, 256 * side * side))
    assert model.features(torch.zeros(1, 1, size, size)).shape == (1, 256, side, side)


def test_small_variant_default_hidden_and_count():
    model = build_model("alexnet_bn", image_size=32)
    assert model.classifier[1].out_features == 1024
    assert sum(p.numel() for p in model.parameters()) == 7_709_642


def test_dropout_modules_keep_names_stable():
    a = build_model("alexnet_bn", image_size=32, hidden=16)
    b = build_model("alexnet_bn", image_size=32, hidden=16, dropout=0.5)
    assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
    assert b.classifier[0].p == 0.5 and a.classifier[0].p == 0.0


def test_errors():
    with pytest.raises(ConfigError, match="too small for the ImageNet variant; need >= 63"):
        build_model("alexnet_bn", image_size=32, small_input=False)
    with pytest.raises(ConfigError, match="small_input"):
        build_model("alexnet_bn", small_input="yes")
    with pytest.raises(ConfigError, match="dropout"):
        build_model("alexnet_bn", image_size=32, dropout=1.0)
    with pytest.raises(ConfigError, match="hidden"):
        build_model("alexnet_bn", image_size=32, hidden=0)
