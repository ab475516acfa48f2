"""Contracts every registered model keeps (small inputs so the suite stays fast).

- forward maps ``[B, C, S, S]`` to ``[B, num_classes]`` for the supported sizes;
- learnable layers are only ``nn.Conv2d``/``nn.Linear``/batch norm, so ``quantize_`` can
  swap them by name and hooks can count MACs; no module works in place;
- blocks are conv -> BN -> act: with ``"hardtanh"`` every conv/linear after the first
  sees a signed input in ``[-1, 1]``;
- initialisation is fixed by ``torch.manual_seed``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models import build_model, list_models

# (name, in_channels, image_size, options): small but representative configurations.
CASES = [
    ("cifar_fc4", 3, 32, {}),
    ("cifar_fc4", 1, 28, {}),
    ("cifar_fc4", 1, 32, {"widths": (8, 16, 32)}),
    ("cifar_fc4", 3, 28, {"width_mult": 0.5}),
    ("alexnet_bn", 3, 32, {"hidden": 64}),
    ("alexnet_bn", 1, 28, {"hidden": 64}),
    ("mobilenet_v1", 3, 32, {"width_mult": 0.25}),
    ("mobilenet_v1", 1, 28, {"width_mult": 0.25}),
    ("vgg8_cnv", 3, 32, {}),
    ("vgg8_cnv", 1, 32, {}),
    ("resnet20", 3, 32, {"width_mult": 0.5}),
    ("resnet20", 1, 28, {"width_mult": 0.5, "shortcut": "B"}),
    ("resnet18", 3, 32, {"width_mult": 0.125}),
    ("resnet18", 1, 28, {"width_mult": 0.125, "shortcut": "A"}),
]
IDS = [f"{n}-{c}x{s}-{'_'.join(o) or 'default'}" for n, c, s, o in CASES]
LEARNABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def _build(name, channels, size, options, **extra):
    return build_model(name, num_classes=7, in_channels=channels, image_size=size, **options, **extra)


def test_cases_cover_every_model():
    assert {case[0] for case in CASES} == set(list_models())


@pytest.mark.parametrize("name, channels, size, options", CASES, ids=IDS)
def test_forward_shape_and_backward(name, channels, size, options):
    torch.manual_seed(0)
    model = _build(name, channels, size, options)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x[:1]).shape == (1, 7)


@pytest.mark.parametrize("name, channels, size, options", CASES, ids=IDS)
def test_plain_modules_only(name, channels, size, options):
    model = _build(name, channels, size, options)
    for mod_name, mod in model.named_modules():
        if any(True for _ in mod.parameters(recurse=False)):
            assert isinstance(mod, LEARNABLE), f"{mod_name} is {type(mod).__name__}"
        assert not getattr(mod, "inplace", False), f"{mod_name} works in place"
    # Every conv/linear has a dotted, stable name under a meaningful parent.
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names[0].startswith("features.") and names[-1].startswith("classifier")


@pytest.mark.parametrize("name, channels, size, options", CASES[::2], ids=IDS[::2])
def test_hardtanh_feeds_signed_unit_inputs(name, channels, size, options):
    torch.manual_seed(1)
    model = _build(name, channels, size, options, activation="hardtanh")
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    seen = []

    def hook(mod, args):
        seen.append(args[0].detach())

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers[1:]:
        layer.register_forward_pre_hook(hook)
    model(torch.randn(4, channels, size, size))
    assert len(seen) == len(layers) - 1
    for x in seen:
        assert x.min() >= -1 and x.max() <= 1
        assert (x < 0).any() and (x > 0).any()


@pytest.mark.parametrize("name, channels, size, options", CASES[::2], ids=IDS[::2])
def test_relu_feeds_nonnegative_inputs(name, channels, size, options):
    model = _build(name, channels, size, options)
    assert not any(isinstance(m, nn.Hardtanh) for m in model.modules())
    seen = []
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers[1:]:
        layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    model(torch.randn(2, channels, size, size))
    assert len(seen) == len(layers) - 1 and all(x.min() >= 0 for x in seen)


@pytest.mark.parametrize("name, channels, size, options", CASES[::2], ids=IDS[::2])
def test_init_deterministic_under_seed(name, channels, size, options):
    torch.manual_seed(123)
    a = _build(name, channels, size, options).state_dict()
    torch.manual_seed(123)
    b = _build(name, channels, size, options).state_dict()
    torch.manual_seed(124)
    c = _build(name, channels, size, options).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", ["cifar_fc4", "alexnet_bn", "mobilenet_v1", "vgg8_cnv", "resnet20", "resnet18"])
def test_invalid_activation(name):
    with pytest.raises(ConfigError, match=rf"{name}: unknown activation 'tanh'; allowed: relu, hardtanh"):
        build_model(name, activation="tanh")


@pytest.mark.parametrize("name, channels, size, options", CASES[::2], ids=IDS[::2])
def test_convertible_with_quantize(name, channels, size, options):
    convert = pytest.importorskip("hbnn.convert")
    torch.manual_seed(2)
    model = _build(name, channels, size, options, activation="hardtanh")
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    cfg = {"default": {"weight": {"bits": 1.4, "heuristic": "middle_out"}, "act": {"bits": 1.4}}}
    convert.quantize_(model, cfg)
    modules = dict(model.named_modules())
    swapped = [n for n in layers if type(modules[n]) not in (nn.Conv2d, nn.Linear)]
    assert swapped == layers[1:-1]  # first and last stay float by default
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
