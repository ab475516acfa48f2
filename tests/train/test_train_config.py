"""Config tree: defaults (the paper's recipe), validation, YAML extends, overrides, recipes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from hbnn.convert import QuantizeConfig
from hbnn.errors import ConfigError
from hbnn.quant import LayerQuant, QuantSpec
from hbnn.train.config import (
    Config,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    save_config,
)
from hbnn.train.recipes import apply_overrides, load_yaml_recipe, set_dotted

REPO = Path(__file__).resolve().parents[2]
# Training recipes ship in the package (src/hbnn/recipes); configs/experiments/ holds sweep specs.
RECIPE_DIRS = ("fashion_mnist", "cifar10", "imagenet")
RECIPES = sorted(p for d in RECIPE_DIRS for p in (REPO / "src" / "hbnn" / "recipes" / d).rglob("*.yaml"))


def test_defaults_are_the_paper_recipe():
    cfg = Config()
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert (cfg.sched.name, cfg.sched.step_size, cfg.sched.gamma) == ("step", 30, 0.1)
    assert (cfg.train.epochs, cfg.train.batch_size) == (90, 256)
    assert cfg.quant is None


def test_round_trip_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["quant={default: {weight: {bits: 1.4}}}", "optim.name=adam", "train.epochs=3"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg
    assert config_to_yaml(cfg).splitlines()[0] == "model:"


@pytest.mark.parametrize("data, words", [
    ({"trian": {}}, ["trian", "model", "quant", "train"]),
    ({"train": {"epoch": 3}}, ["train.epoch", "epochs", "batch_size"]),
    ({"optim": {"name": "rmsprop"}}, ["optim.name", "rmsprop", "sgd", "adam"]),
    ({"data": {"name": "svhn"}}, ["data.name", "svhn", "fashion_mnist", "cifar10"]),
    ({"train": {"epochs": 0}}, ["train.epochs", "0", ">= 1"]),
    ({"train": {"epochs": "many"}}, ["train.epochs", "many", "integer"]),
    ({"optim": {"lr": -1}}, ["optim.lr", "-1", "> 0"]),
    ({"sched": {"name": "poly"}}, ["sched.name", "poly", "cosine"]),
    ({"train": {"deterministic": "yes"}}, ["train.deterministic", "yes", "true or false"]),
    ({"model": {"activation": "gelu"}}, ["model.activation", "gelu", "hardtanh"]),
    ({"quant": {"default": {"weight": {"bits": 1.4, "heuristic": "inside_out"}}}}, ["quant", "inside_out"]),
    ({"quant": {"defaults": {}}}, ["quant", "defaults", "rules"]),
    ({"quant": 3}, ["quant", "3"]),
    ({"train": 5}, ["train", "mapping"]),
])
def test_bad_values_name_key_value_and_allowed(data, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_numeric_strings_and_ints_are_coerced():
    cfg = config_from_dict({"optim": {"lr": "1e-3", "weight_decay": 0}, "train": {"epochs": 3.0}})
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.weight_decay, float) and cfg.train.epochs == 3


def test_extends_merges_in_order_and_file_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 5, batch_size: 64}\noptim: {lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("quant: {default: {weight: {bits: 2}}}\noptim: {lr: 0.2}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("extends: [../a.yaml, ../b.yaml]\ntrain: {epochs: 7}\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml", ["train.seed=3"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed, cfg.optim.lr) == (7, 64, 3, 0.2)
    assert cfg.quant == QuantizeConfig(default=LayerQuant(weight=QuantSpec(bits=2)))
    assert config_to_dict(cfg)["quant"] == {"default": {"weight": {"bits": 2}}}  # recorded as written


def test_extends_cycle_and_missing_and_bad_yaml(tmp_path):
    (tmp_path / "x.yaml").write_text("extends: y.yaml\n")
    (tmp_path / "y.yaml").write_text("extends: x.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_yaml_recipe(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: {epochs: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_overrides_parse_yaml_values_and_create_free_form_sections():
    data = apply_overrides({}, ["quant.default.weight.bits=1.4", "model.kwargs.widths=[8, 16, 16]",
                                "data.data_dir=null", "run.out=runs/x"])
    assert data["quant"] == {"default": {"weight": {"bits": 1.4}}}
    assert data["model"]["kwargs"]["widths"] == [8, 16, 16]
    assert data["data"]["data_dir"] is None
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])
    with pytest.raises(ConfigError, match="unknown key train.epoch; allowed in train: epochs"):
        load_config(None, ["train.epoch=3"])


def test_set_dotted_sets_values_directly_in_order():
    data = set_dotted({"train": {"epochs": 3}}, [("quant.default", {"weight": 2}), ("quant.default.act", 1e-5),
                                                 ("train.epochs", 4)])
    assert data == {"train": {"epochs": 4}, "quant": {"default": {"weight": 2, "act": 1e-5}}}
    with pytest.raises(ConfigError, match="bad key"):
        set_dotted({}, [("train..epochs", 1)])


def test_quant_is_typed_and_recorded_as_written():
    cfg = load_config(None, ["quant.default.weight=1.4", "quant.keep_last=false"])
    assert cfg.quant.default.weight == QuantSpec(bits=1.4) and cfg.quant.keep_last is False
    assert config_to_dict(cfg)["quant"] == {"default": {"weight": 1.4}, "keep_last": False}
    explicit = config_from_dict({**config_to_dict(cfg), "quant": cfg.quant.to_dict()})
    assert explicit == cfg and config_to_dict(explicit)["quant"] == cfg.quant.to_dict()


def test_there_is_a_recipe_per_paper_experiment():
    names = {str(p.relative_to(REPO / "src" / "hbnn" / "recipes")) for p in RECIPES}
    for folder in ("fashion_mnist", "cifar10", "imagenet/alexnet_bn", "imagenet/mobilenet_v1"):
        for exp in ("fp", "w1.4_mo", "w2a2", "w1.4a1.4"):
            assert f"{folder}/{exp}.yaml" in names
    for exp in ("w1", "w2", "w1a1"):
        assert f"fashion_mnist/{exp}.yaml" in names and f"cifar10/{exp}.yaml" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "src" / "hbnn" / "recipes")))
def test_every_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.01, 0.9, 1e-4)
    if cfg.quant is not None and cfg.quant.default is not None and cfg.quant.default.act is not None:
        assert cfg.model.activation == "hardtanh"


@pytest.mark.parametrize("recipe", [p for p in RECIPES if "fashion_mnist" in p.parts or "mobilenet_v1" in p.parts],
                         ids=lambda p: str(p.relative_to(REPO / "src" / "hbnn" / "recipes")))
def test_recipes_build_and_their_rules_match(recipe):
    from hbnn.train.rebuild import build_model_for

    cfg = load_config(recipe, ["model.kwargs.width_mult=0.25"] if "mobilenet_v1" in recipe.parts else [])
    shape = {"num_classes": 10, "in_channels": 1 if cfg.data.name == "fashion_mnist" else 3,
             "image_size": 28 if cfg.data.name == "fashion_mnist" else 32}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, report = build_model_for(cfg.model, shape, cfg.quant)
    if cfg.quant is None:
        assert report is None
    else:
        assert report.converted and not report.unmatched_rules
        if "mobilenet_v1" in recipe.parts:
            assert not any(name.endswith("dw") for name in report.converted)
