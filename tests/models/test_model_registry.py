"""Registry: registration, lookup, option checking and error messages."""

from __future__ import annotations

import pytest
from torch import nn

from hbnn.errors import ConfigError
from hbnn.models import build_model, list_models, model_options, register_model
from hbnn.models import registry


@pytest.fixture
def isolated_registry(monkeypatch):
    """A private copy of the registry so test registrations do not leak."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


class _Tiny(nn.Module):
    def __init__(self, *, num_classes=10, in_channels=3, image_size=32, depth=1):
        super().__init__()
        self.args = (num_classes, in_channels, image_size, depth)


def test_all_architectures_registered():
    assert list_models() == ["alexnet_bn", "cifar_fc4", "mobilenet_v1", "resnet18", "resnet20", "vgg8_cnv"]


def test_register_and_build_passes_arguments(isolated_registry):
    register_model("tiny")(_Tiny)
    assert "tiny" in list_models()
    model = build_model("tiny", num_classes=5, in_channels=1, depth=3)
    # image_size=None means "the builder's default".
    assert model.args == (5, 1, 32, 3)
    assert model_options("tiny") == {"depth": 1}


def test_register_returns_builder_unchanged(isolated_registry):
    assert register_model("tiny")(_Tiny) is _Tiny


def test_duplicate_name_raises(isolated_registry):
    register_model("tiny")(_Tiny)
    with pytest.raises(ValueError, match="'tiny' is already registered"):
        register_model("tiny")(_Tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_model("cifar_fc4")(_Tiny)


def test_register_rejects_bad_names_and_builders(isolated_registry):
    with pytest.raises(TypeError, match="name must be a str"):
        register_model(3)
    with pytest.raises(ValueError, match="non-empty"):
        register_model("")
    with pytest.raises(TypeError, match="callable"):
        register_model("thing")(42)

    def no_image_size(*, num_classes=10, in_channels=3):
        return nn.Identity()

    with pytest.raises(ValueError, match="image_size"):
        register_model("thing")(no_image_size)
    assert "thing" not in list_models()


def test_unknown_model_lists_registered():
    with pytest.raises(ConfigError) as err:
        build_model("resnet50")
    msg = str(err.value)
    assert "'resnet50'" in msg
    for name in list_models():
        assert name in msg
    with pytest.raises(ConfigError, match="unknown model"):
        model_options("resnet50")


def test_unknown_option_names_key_and_allowed():
    with pytest.raises(ConfigError) as err:
        build_model("cifar_fc4", widht_mult=0.5)
    msg = str(err.value)
    assert "'widht_mult'" in msg and "width_mult" in msg and "activation" in msg
    assert "\n" not in msg


def test_option_of_other_model_rejected():
    with pytest.raises(ConfigError, match="'small_input'"):
        build_model("vgg8_cnv", small_input=True)


@pytest.mark.parametrize("name", ["cifar_fc4", "alexnet_bn", "mobilenet_v1", "vgg8_cnv", "resnet20", "resnet18"])
def test_options_documented_per_model(name):
    opts = model_options(name)
    assert opts["activation"] == "relu"
    assert not {"num_classes", "in_channels", "image_size"} & set(opts)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"image_size": "32"}, "image_size"),
        ({"image_size": 4}, "image_size"),
        ({"activation": "gelu"}, "relu, hardtanh"),
        ({"activation": None}, "activation"),
        ({"widths": (8, 16)}, "widths"),
        ({"widths": "abc"}, "widths"),
        ({"widths": (8, 0, 16)}, "widths"),
        ({"width_mult": 0}, "width_mult"),
        ({"width_mult": -1.0}, "width_mult"),
        ({"width_mult": float("inf")}, "width_mult"),
        ({"width_mult": float("nan")}, "width_mult"),
    ],
)
def test_bad_values_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_model("cifar_fc4", **kwargs)
