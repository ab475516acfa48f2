"""resnet20 / resnet18: shapes, parameter counts, shortcut options, the quantization layout, training."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from torch import nn

from hbnn.configs import find_config, list_recipes, recipes_root
from hbnn.convert import quantize_
from hbnn.errors import ConfigError
from hbnn.models import RESNET_QUANT, build_model
from hbnn.models._resnet_blocks import ProjectionShortcut, ZeroPadShortcut
from hbnn.nn import HBConv2d
from hbnn.train.config import load_config
from hbnn.train.rebuild import build_model_for

QUANT_14 = {"default": {"weight": {"bits": 1.4, "heuristic": "middle_out"}, "act": {"bits": 1.4}}, **RESNET_QUANT}


def _convs(model, kind=nn.Conv2d):
    return {n: m for n, m in model.named_modules() if isinstance(m, kind)}


def _nparams(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name, channels, size, options, feature_shape", [
    ("resnet20", 3, 32, {}, (64, 8, 8)),                                  # CIFAR
    ("resnet20", 1, 28, {}, (64, 7, 7)),                                  # Fashion-MNIST: 28 -> 14 -> 7
    ("resnet20", 3, 32, {"width_mult": 0.5, "shortcut": "B"}, (32, 8, 8)),
    ("resnet18", 3, 32, {"width_mult": 0.25}, (128, 4, 4)),               # small stem: 32 -> 4
    ("resnet18", 1, 28, {"width_mult": 0.25}, (128, 4, 4)),               # 28 -> 14 -> 7 -> 4
    ("resnet18", 3, 224, {"width_mult": 0.125}, (64, 7, 7)),              # ImageNet: 224 / 32
    ("resnet18", 3, 64, {"width_mult": 0.125, "small_input": False}, (64, 2, 2)),
])
def test_output_and_feature_shapes(name, channels, size, options, feature_shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size, **options).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model.features(x).shape == (2, *feature_shape)
        assert model(x).shape == (2, 7)


def test_resnet18_stem_variants():
    imagenet = build_model("resnet18", num_classes=10, width_mult=0.25)
    assert imagenet.small_input is False
    assert imagenet.features.stem.kernel_size == (7, 7) and imagenet.features.stem.stride == (2, 2)
    assert isinstance(imagenet.features.stem_pool, nn.MaxPool2d)
    small = build_model("resnet18", image_size=32, width_mult=0.25)
    assert small.small_input is True
    assert small.features.stem.kernel_size == (3, 3) and small.features.stem.stride == (1, 1)
    assert not hasattr(small.features, "stem_pool")
    assert build_model("resnet18", image_size=65, width_mult=0.25).small_input is False
    assert build_model("resnet18", image_size=32, small_input=False, width_mult=0.25).small_input is False


def test_layer_names_and_widths():
    model = build_model("resnet20", width_mult=0.5)
    convs = _convs(model)
    blocks = [f"features.layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
    assert list(convs) == ["features.stem", *blocks]
    assert [convs[n].out_channels for n in blocks[::6]] == [8, 16, 32]
    assert [convs[n].stride for n in blocks[::6]] == [(1, 1), (2, 2), (2, 2)]
    assert all(m.bias is None for m in convs.values())
    assert model.classifier.in_features == 32 and model.classifier.bias is not None
    # BN after every conv.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(convs)


# ----------------------------------------------------------------------------- parameter counts


def _hand_count_resnet20(c, k):
    """He et al.'s CIFAR net by hand: 3x3 convs (no bias) + BN (2 per channel), option A, linear + bias."""
    stem = 9 * c * 16 + 2 * 16
    stage1 = 6 * (9 * 16 * 16 + 2 * 16)
    stage2 = (9 * 16 * 32 + 2 * 32) + 5 * (9 * 32 * 32 + 2 * 32)
    stage3 = (9 * 32 * 64 + 2 * 64) + 5 * (9 * 64 * 64 + 2 * 64)
    return stem + stage1 + stage2 + stage3 + 64 * k + k


def test_resnet20_parameter_count():
    assert _hand_count_resnet20(3, 10) == 269_722  # the paper's "0.27M" (Table 6)
    assert _nparams(build_model("resnet20")) == 269_722
    assert _nparams(build_model("resnet20", in_channels=1, image_size=28)) == _hand_count_resnet20(1, 10)
    # Option B adds the two downsampling projections: 1x1 convs + BN.
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert _nparams(build_model("resnet20", shortcut="B")) == 269_722 + projections


def test_resnet18_parameter_count():
    # torchvision's resnet18 (224 px, 1000 classes) and the usual CIFAR adaptation (3x3 stem, 10 classes).
    assert _nparams(build_model("resnet18", num_classes=1000)) == 11_689_512
    imagenet_stem, small_stem = 7 * 7 * 3 * 64, 3 * 3 * 3 * 64
    expected_small = 11_689_512 - imagenet_stem + small_stem - (512 * 1000 + 1000) + (512 * 10 + 10)
    assert expected_small == 11_173_962
    assert _nparams(build_model("resnet18", num_classes=10, image_size=32)) == expected_small


# ----------------------------------------------------------------------------- shortcuts


def test_zero_pad_shortcut_exact():
    x = torch.arange(1.0, 19.0).reshape(1, 2, 3, 3)  # channel 0: 1..9, channel 1: 10..18
    out = ZeroPadShortcut(2, 4, 2)(x)
    expected = torch.tensor([[[[1.0, 3.0], [7.0, 9.0]],
                              [[10.0, 12.0], [16.0, 18.0]],
                              [[0.0, 0.0], [0.0, 0.0]],
                              [[0.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(out, expected)
    assert not list(ZeroPadShortcut(2, 4, 2).parameters())


def test_shortcut_a_has_no_parameters_and_adds_the_padded_input():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    shortcuts = {n: m for n, m in model.named_modules() if n.endswith(".shortcut")}
    assert [n for n, m in shortcuts.items() if isinstance(m, ZeroPadShortcut)] == [
        "features.layer2.0.shortcut", "features.layer3.0.shortcut"]
    assert all(isinstance(m, (ZeroPadShortcut, nn.Identity)) for m in shortcuts.values())
    assert not any(".shortcut" in n for n, _ in model.named_parameters())
    # With the residual branch silenced (bn2 = 0), a relu block outputs exactly relu(shortcut(x)).
    block = model.features.layer2[0]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.rand(2, 16, 5, 5)
    with torch.no_grad():
        out = block(x)
    expected = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 3, 3)], dim=1)
    assert out.shape == (2, 32, 3, 3) and torch.equal(out, expected)


@pytest.mark.parametrize("name, downsampling", [
    ("resnet20", ["features.layer2.0", "features.layer3.0"]),
    ("resnet18", ["features.layer2.0", "features.layer3.0", "features.layer4.0"]),
])
@pytest.mark.parametrize("binarize", [False, True])
def test_shortcut_b_projections(name, downsampling, binarize):
    options = {"width_mult": 0.25, "image_size": 32, "binarize_shortcut": binarize}
    model = build_model(name, shortcut="B", **options)
    conv_name = "conv" if binarize else "float_conv"
    projections = {n[: -len(".shortcut")]: m for n, m in model.named_modules()
                   if n.endswith(".shortcut") and isinstance(m, ProjectionShortcut)}
    assert list(projections) == downsampling
    identities = [n for n, m in model.named_modules() if n.endswith(".shortcut") and isinstance(m, nn.Identity)]
    assert len(identities) == (9 if name == "resnet20" else 8) - len(downsampling)
    for block_name, shortcut in projections.items():
        block = model.get_submodule(block_name)
        conv = getattr(shortcut, conv_name)
        assert [n for n, _ in shortcut.named_children()] == [conv_name, "bn"]
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
        assert (conv.in_channels, conv.out_channels) == (block.conv1.in_channels, block.conv1.out_channels)
        assert isinstance(shortcut.bn, nn.BatchNorm2d)
        x = torch.randn(2, conv.in_channels, 6, 6)
        shortcut.eval()
        assert torch.equal(shortcut(x), shortcut.bn(conv(x)))


def test_resnet18_defaults_to_b_and_resnet20_to_a():
    assert any(isinstance(m, ProjectionShortcut) for m in build_model("resnet18", width_mult=0.25).modules())
    assert any(isinstance(m, ZeroPadShortcut) for m in build_model("resnet20").modules())


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
@pytest.mark.parametrize("options, match", [
    ({"shortcut": "C"}, r"unknown shortcut 'C'; allowed: A, B"),
    ({"shortcut": "a"}, r"unknown shortcut 'a'"),
    ({"binarize_shortcut": 1}, r"binarize_shortcut must be true or false, got 1"),
    ({"shortcut": "A", "binarize_shortcut": True}, r"binarize_shortcut=true needs shortcut 'B'"),
    ({"width_mult": 0}, r"width_mult must be a finite number > 0"),
    ({"activation": "gelu"}, r"unknown activation 'gelu'; allowed: relu, hardtanh"),
    ({"image_size": 0}, r"image_size must be an integer >= 1"),
])
def test_bad_options(name, options, match):
    with pytest.raises(ConfigError, match=rf"^{name}: {match}"):
        build_model(name, **options)


def test_small_input_must_be_bool_or_none():
    with pytest.raises(ConfigError, match="resnet18: small_input must be true, false or null"):
        build_model("resnet18", small_input="yes")


# ----------------------------------------------------------------------------- quantization layout


def test_layout_yaml_is_resnet_quant():
    data = yaml.safe_load((recipes_root() / "_quant" / "resnet.yaml").read_text())
    assert data == {"quant": RESNET_QUANT}


@pytest.mark.parametrize("name, options, n_float_shortcuts, n_binarized_shortcuts", [
    ("resnet20", {}, 0, 0),                                               # option A: no shortcut convs
    ("resnet20", {"shortcut": "B"}, 2, 0),
    ("resnet20", {"shortcut": "B", "binarize_shortcut": True}, 0, 2),
    ("resnet18", {}, 3, 0),                                               # option B by default
    ("resnet18", {"binarize_shortcut": True}, 0, 3),
    ("resnet18", {"shortcut": "A"}, 0, 0),
])
@pytest.mark.parametrize("keep_ends", [True, False])
def test_layout_binarizes_every_block_conv(name, options, n_float_shortcuts, n_binarized_shortcuts, keep_ends):
    model = build_model(name, image_size=32, activation="hardtanh", **({"width_mult": 0.25} | options))
    convs = list(_convs(model))
    float_shortcuts = [n for n in convs if n.endswith(".shortcut.float_conv")]
    binarized_shortcuts = [n for n in convs if n.endswith(".shortcut.conv")]
    assert (len(float_shortcuts), len(binarized_shortcuts)) == (n_float_shortcuts, n_binarized_shortcuts)
    block_convs = [n for n in convs if n.endswith((".conv1", ".conv2"))]
    assert len(block_convs) == (18 if name == "resnet20" else 16)
    # keep_first/keep_last off: the layout's rule alone keeps stem, classifier and float shortcuts float.
    report = quantize_(model, {**QUANT_14, "keep_first": keep_ends, "keep_last": keep_ends})
    expected = [n for n in convs if n in block_convs or n in binarized_shortcuts]
    assert list(report.converted) == expected and not report.unmatched_rules and not report.unsupported
    assert set(report.kept_float) == {"features.stem", "classifier", *float_shortcuts}
    assert {n for n, m in model.named_modules() if isinstance(m, HBConv2d)} == set(expected)
    assert type(model.classifier) is nn.Linear and type(model.features.stem) is nn.Conv2d
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in float_shortcuts)
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def _resnet_recipes():
    return [r for r in list_recipes() if "resnet" in r]


def test_recipes_listed():
    names = set(_resnet_recipes())
    for exp in ("fp", "w1a1", "w2a2", "w1.4a1.4"):
        assert f"fashion_mnist/resnet20_{exp}" in names and f"cifar10/resnet20_{exp}" in names
        assert f"imagenet/resnet18/{exp}" in names


@pytest.mark.parametrize("recipe", _resnet_recipes())
def test_recipe_builds_with_float_stem_classifier_and_shortcuts(recipe):
    cfg = load_config(find_config(recipe), ["model.kwargs.width_mult=0.25"])
    assert cfg.model.name == ("resnet18" if recipe.startswith("imagenet/") else "resnet20")
    shape = {"num_classes": 10, "in_channels": 1 if cfg.data.name == "fashion_mnist" else 3, "image_size": 32}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, report = build_model_for(cfg.model, shape, cfg.quant)
    if recipe.endswith("fp"):
        assert report is None
        return
    convs = list(_convs(model, (nn.Conv2d, HBConv2d)))
    assert list(report.converted) == [n for n in convs if n != "features.stem" and "float_conv" not in n]
    assert "features.stem" in report.kept_float and "classifier" in report.kept_float
    assert not report.unmatched_rules
    if cfg.quant.default.act is not None:
        assert cfg.model.activation == "hardtanh"


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name, options", [
    ("resnet20", {"width_mult": 0.25}),
    ("resnet20", {"width_mult": 0.25, "shortcut": "B"}),
    ("resnet18", {"width_mult": 0.125, "binarize_shortcut": True}),
])
def test_training_step_reaches_every_parameter(name, options):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=28, activation="hardtanh", **options)
    quantize_(model, QUANT_14)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == list(before)
