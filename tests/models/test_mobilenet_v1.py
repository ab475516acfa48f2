"""mobilenet_v1: dw/pw naming, width multiplier, small input, pointwise-only preset."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models import POINTWISE_ONLY_QUANT, build_model

WIDTHS = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def _convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_dw_pw_naming_and_shapes():
    model = build_model("mobilenet_v1", image_size=32, width_mult=0.25)
    convs = _convs(model)
    dw = [n for n in convs if n.endswith(".dw")]
    pw = [n for n in convs if n.endswith(".pw")]
    assert dw == [f"features.{i}.dw" for i in range(3, 16)]
    assert pw == [f"features.{i}.pw" for i in range(3, 16)]
    assert set(convs) == {"features.0", *dw, *pw}
    for name in dw:
        conv = convs[name]
        assert conv.kernel_size == (3, 3) and conv.groups == conv.in_channels == conv.out_channels
    for name in pw:
        assert convs[name].kernel_size == (1, 1) and convs[name].groups == 1


def test_full_width_imagenet():
    model = build_model("mobilenet_v1", num_classes=1000).eval()
    assert model.small_input is False
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    assert [model.features[i].pw.out_channels for i in range(3, 16)] == WIDTHS
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


@pytest.mark.parametrize("mult", [0.25, 0.5, 0.75])
def test_width_multiplier(mult):
    model = build_model("mobilenet_v1", image_size=32, width_mult=mult)
    assert model.features[0].out_channels == max(8, int(32 * mult))
    assert [model.features[i].pw.out_channels for i in range(3, 16)] == [
        max(8, int(w * mult)) for w in WIDTHS
    ]
    assert model.classifier.in_features == int(1024 * mult)


def test_width_floor_of_eight():
    model = build_model("mobilenet_v1", image_size=32, width_mult=0.005)
    assert {m.out_channels for m in _convs(model).values()} == {8}
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("size, small, side", [(32, True, 2), (28, True, 2), (96, False, 3)])
def test_small_input_strides(size, small, side):
    model = build_model("mobilenet_v1", image_size=size, width_mult=0.25)
    assert model.small_input is small
    assert model.features[0].stride == ((1, 1) if small else (2, 2))
    assert model.features(torch.zeros(1, 3, size, size)).shape[-1] == side


def test_pointwise_only_preset_targets_depthwise_only():
    assert POINTWISE_ONLY_QUANT == {"rules": {r"(^|\.)dw$": None}}
    (pattern,) = POINTWISE_ONLY_QUANT["rules"]
    model = build_model("mobilenet_v1", image_size=32, width_mult=0.25)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    matched = {n for n in names if re.search(pattern, n)}
    assert matched == {n for n in names if n.endswith(".dw")} and len(matched) == 13


def test_pointwise_only_preset_with_quantize():
    convert = pytest.importorskip("hbnn.convert")
    model = build_model("mobilenet_v1", image_size=32, width_mult=0.25)
    cfg = {"default": {"weight": {"bits": 1}, "act": None}, **POINTWISE_ONLY_QUANT}
    convert.quantize_(model, cfg)
    for name, mod in model.named_modules():
        if name.endswith(".dw"):
            assert type(mod) is nn.Conv2d, name
        elif name.endswith(".pw"):
            assert type(mod) is not nn.Conv2d and isinstance(mod, nn.Conv2d), name
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_errors():
    with pytest.raises(ConfigError, match="width_mult"):
        build_model("mobilenet_v1", width_mult=0)
    with pytest.raises(ConfigError, match="small_input"):
        build_model("mobilenet_v1", small_input=1)
