"""Shipped recipes found from any directory, ``hbnn recipes``, and user models ``package.module:callable``."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from hbnn.cli import main
from hbnn.configs import find_config, list_recipes, recipes_root
from hbnn.errors import ConfigError
from hbnn.models import build_model, is_model_path
from hbnn.train.config import ModelConfig

USER_MODELS = '''
from torch import nn


def small_net(*, num_classes, in_channels, image_size, width=8):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def positional(num_classes, in_channels):
    return nn.Linear(in_channels, num_classes)


def not_a_module(*, num_classes, in_channels, image_size):
    return "a string"


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A module ``hbnn_user_models`` in ``tmp_path``, importable (tmp_path on sys.path)."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "hbnn_user_models.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.syspath_prepend(str(folder))
    return "hbnn_user_models"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- recipes

def test_recipes_are_found_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HBNN_CONFIGS", raising=False)
    path = find_config("fashion_mnist/w1.4a1.4")
    assert path == recipes_root() / "fashion_mnist" / "w1.4a1.4.yaml" and path.is_file()
    names = list_recipes()
    for name in ("fashion_mnist/w1.4a1.4", "cifar10/w2a2", "imagenet/mobilenet_v1/fp", "showcase/w1a1"):
        assert name in names
    assert not any(n.startswith(("experiments/", "_")) or "/_" in n for n in names)


def test_a_local_configs_folder_shadows_a_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "fashion_mnist").mkdir(parents=True)
    (tmp_path / "configs" / "fashion_mnist" / "w1.yaml").write_text("train: {epochs: 1}\n")
    assert find_config("fashion_mnist/w1").resolve() == (tmp_path / "configs" / "fashion_mnist" / "w1.yaml")
    assert find_config("fashion_mnist/w2") == recipes_root() / "fashion_mnist" / "w2.yaml"


def test_hbnn_recipes_lists_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == list_recipes() and "fashion_mnist/w1.4a1.4" in lines
    assert main(["recipes", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == lines
    assert all(e["path"].endswith(e["name"] + ".yaml") for e in entries)


def test_unknown_recipe_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "fashion_mnist/nope", "-q"]) == 2
    assert "config file not found: fashion_mnist/nope" in _error(capsys)


# ----------------------------------------------------------------------------- user models

def test_model_path_rule():
    assert is_model_path("a.b_c.d:fn") and is_model_path("m:Cls.build")
    for name in ("cifar_fc4", "a.b", ":fn", "a:", "a:b:c", "a-b:fn", "a.:fn", 3):
        assert not is_model_path(name)
    assert ModelConfig(name="pkg.mod:fn").name == "pkg.mod:fn"
    with pytest.raises(ConfigError, match="package.module:callable"):
        ModelConfig(name="pkg.mod:fn:x")


def test_user_model_trains_then_eval_summary_export_rebuild_it(user_models, fmnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fashion_mnist/w1", "--model", f"{user_models}:small_net", "--data-dir", str(fmnist_dir),
                 "--out", str(run), "--epochs", "1", "--batch-size", "64", "-q",
                 "--set", "run.tensorboard=false", "--set", "model.kwargs={width: 8}"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == f"{user_models}:small_net"
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == f"{user_models}:small_net"
    assert main(["summary", str(run)]) == 0
    assert "HBConv2d" in capsys.readouterr().out
    packed = tmp_path / "model.hbnn"
    assert main(["export", str(run), "--out", str(packed), "-q"]) == 0
    capsys.readouterr()
    assert main(["infer", str(packed), "--data-dir", str(fmnist_dir), "--json"]) == 0
    assert main(["hw", "estimate", "--model", f"{user_models}:small_net", "--wbits", "1"]) == 0
    assert main(["summary", f"{user_models}:small_net", "--json"]) == 0


def test_user_model_builds_like_a_registered_one(user_models):
    model = build_model(f"{user_models}:small_net", num_classes=3, in_channels=1, image_size=28, width=4)
    assert model[0].out_channels == 4 and model[-3].out_channels == 3
    with pytest.raises(ConfigError, match="unknown option 'depth'"):
        build_model(f"{user_models}:small_net", depth=2)


@pytest.mark.parametrize("name, message", [
    ("no_such_pkg_x.mod:fn", "cannot import no_such_pkg_x.mod (No module named 'no_such_pkg_x')"),
    ("{m}:missing", "module {m} has no attribute 'missing'"),
    ("{m}:NOT_CALLABLE", "int object is not callable"),
    ("{m}:not_a_module", "the builder returned a str, not a torch.nn.Module"),
    ("{m}:positional", "must take keyword argument(s) image_size"),
])
def test_bad_user_models_are_one_line(user_models, fmnist_dir, tmp_path, capsys, name, message):
    name, message = name.format(m=user_models), message.format(m=user_models)
    args = ["train", "--model", name, "--data-dir", str(fmnist_dir), "--out", str(tmp_path / "r"), "--epochs", "1",
            "-q", "--set", "run.tensorboard=false"]
    assert main(args) == 2
    line = _error(capsys)
    assert message in line and name in line
    assert not (tmp_path / "r" / "last.safetensors").exists()
    assert main(["hw", "estimate", "--model", name]) == 2
    line = _error(capsys)
    assert line.startswith("hbnn: error: --model") and message in line
    assert main(["summary", name]) == 2
    assert message in _error(capsys)
