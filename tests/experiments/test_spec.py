"""Experiment YAML -> runs: names, seeds, overrides, the quant layout, hashes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbnn.errors import ConfigError
from hbnn.experiments.kinds import KIND_TABLE, expand
from hbnn.experiments.spec import KINDS, Layout, Point, config_sha, load_experiment, point_quant
from hbnn.quant import LayerQuant, QuantSpec

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("[!_]*.yaml"))

POINTS = [
    {"name": "fp"},
    {"name": "w1.4_mo", "weight": 1.4, "seeds": [0, 1, 2]},
    {"name": "w1.4_random", "weight": 1.4, "heuristic": "random"},
    {"name": "w2a2", "weight": 2, "act": 2, "set": {"optim.lr": 0.1}},
]


def test_expansion_names_seeds_and_order(write_experiment):
    runs = expand(load_experiment(write_experiment("tiny", POINTS)))
    assert [r.name for r in runs] == ["tiny/fp/seed0", "tiny/w1.4_mo/seed0", "tiny/w1.4_mo/seed1",
                                      "tiny/w1.4_mo/seed2", "tiny/w1.4_random/seed0", "tiny/w2a2/seed0"]
    assert [r.config["train"]["seed"] for r in runs] == [0, 0, 1, 2, 0, 0]
    assert runs[0].config["quant"] is None
    assert runs[-1].config["optim"]["lr"] == 0.1  # the point's own overrides
    assert len({r.sha for r in runs}) == len(runs)  # every run differs from every other
    again = expand(load_experiment(write_experiment("tiny", POINTS)))
    assert [r.sha for r in again] == [r.sha for r in runs]  # deterministic
    assert runs[1].run_dir("R") == Path("R/tiny/w1.4_mo") / f"seed0-{runs[1].sha[:8]}"


def test_seeds_flag_and_set_overrides(write_experiment):
    exp = load_experiment(write_experiment("tiny", POINTS))
    runs = expand(exp, seeds=[3, 4], overrides=["train.epochs=2"])
    assert [r.name for r in runs][:2] == ["tiny/fp/seed3", "tiny/fp/seed4"]
    assert all(r.config["train"]["epochs"] == 2 for r in runs)
    base = {r.name: r.sha for r in expand(exp, seeds=[3, 4])}
    assert all(base[r.name] != r.sha for r in runs)  # an override is a different config
    moved = expand(exp, seeds=[3, 4], overrides=["data.data_dir=/elsewhere", "run.out=x"])
    assert {r.name: r.sha for r in moved} == base  # where the data lives is not part of the hash


def test_weights_only_layout_binarizes_every_layer(write_experiment):
    run = expand(load_experiment(write_experiment("tiny", POINTS)))[1]
    quant = run.config["quant"]
    assert quant["keep_first"] is False and quant["keep_last"] is False
    assert quant["default"]["weight"]["bits"] == {"1": 0.7, "2": 0.2, "3": 0.1}  # normalised 1.4
    assert quant["default"]["act"] is None and quant["rules"] == {}


def test_act_layout_keeps_the_image_float(write_experiment):
    run = expand(load_experiment(write_experiment("tiny", POINTS)))[-1]
    rules = run.config["quant"]["rules"]
    assert rules["^features\\.0$"]["act"] is None
    assert rules["^features\\.0$"]["weight"]["bits"] == {"2": 1.0}
    assert run.config["quant"]["default"]["act"]["bits"] == {"2": 1.0}


def test_random_heuristic_is_seeded_by_the_run_seed():
    spec = Point.from_dict({"name": "p", "weight": 1.4, "heuristic": "random"})
    assert point_quant(spec, Layout(), 7).default.weight.seed == 7
    assert point_quant(Point(name="p", weight=1.4), Layout(), 7).default.weight.seed == 0  # the default


def test_fixed_rules_come_first_and_layer_plans_name_layers():
    layout = Layout.from_dict({"rules": {"dw$": None}, "with_act": {"float_input": ["^stem$"]}})
    q = point_quant(Point(name="p", act=1), layout, 0, layer_plan={"stem": 2, "b.pw": 1})
    assert list(q.rules) == ["dw$", "^stem$", "^b\\.pw$"]
    assert q.rules["^stem$"] == LayerQuant(weight=QuantSpec(bits=2), act=None)
    assert q.rules["^b\\.pw$"].act == QuantSpec(bits=1) and q.default is None


def test_every_kind_has_behaviour():
    assert tuple(KIND_TABLE) == KINDS


def test_layout_with_act_names_layout_keys():
    with pytest.raises(ConfigError, match="with_act"):
        Layout.from_dict({"with_act": {"keep": 1}}, "layout")
    with pytest.raises(ConfigError, match="with_act"):
        Layout.from_dict({"with_act": {"with_act": {}}}, "layout")


def test_config_sha_ignores_excluded_keys():
    a = {"train": {"seed": 0, "device": "cpu"}, "run": {"out": "x"}}
    b = {"train": {"seed": 0, "device": "cuda"}, "run": {"out": "y"}}
    assert config_sha(a) == config_sha(b) != config_sha({"train": {"seed": 1}})


@pytest.mark.parametrize("bad, message", [
    ({"points": [{"name": "a b"}]}, "invalid"),
    ({"points": [{"name": "a"}, {"name": "a"}]}, "twice"),
    ({"points": [{"name": "a", "wieght": 1}]}, "unknown key"),
    ({"points": [{"name": "a", "weight": 1, "layer_bits": 1.2}]}, "not both"),
    ({"points": []}, "non-empty"),
    ({"points": [{"name": "a"}], "seeds": [0, 0]}, "repeat"),
    ({"points": [{"name": "a"}], "figure": "fig9"}, "figure"),
    ({"points": [{"name": "a"}], "layout": {"keep": 1}}, "layout"),
    ({"points": [{"name": "a", "weight": 9}]}, "tiny/a"),
])
def test_bad_experiments_raise_config_errors(write_experiment, bad, message):
    points = bad.pop("points")
    with pytest.raises(ConfigError, match=message):
        expand(load_experiment(write_experiment("tiny", points, **bad)))


def test_missing_experiment_lists_the_available_ones(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="available: .*fig2b"):
        load_experiment("no_such_experiment")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_shipped_experiment_expands(path, monkeypatch):
    monkeypatch.chdir(REPO)
    exp = load_experiment(path)
    runs = expand(exp)
    assert runs and len({r.name for r in runs}) == len(runs)
    assert all(r.name.startswith(f"{path.stem}/") for r in runs)


FMNIST_EXPERIMENTS = [p for p in EXPERIMENTS if "_" not in p.stem and p.stem != "fig2a"]


@pytest.mark.parametrize("path", FMNIST_EXPERIMENTS, ids=[p.stem for p in FMNIST_EXPERIMENTS])
def test_every_fashion_mnist_run_builds_and_runs_forward(path, monkeypatch):
    """Each distinct config converts cleanly (no dead rules) and trains one step."""
    import torch

    from hbnn.experiments.layerwise import config_shape
    from hbnn.train.config import config_from_dict
    from hbnn.train.rebuild import build_model_for

    monkeypatch.chdir(REPO)
    seen = set()
    for run in expand(load_experiment(path)):
        key = config_sha({**run.config, "train": {**run.config["train"], "seed": 0}})  # seeds build alike
        if key in seen:
            continue
        seen.add(key)
        cfg = config_from_dict(run.config)
        model, report = build_model_for(cfg.model, config_shape(run.config["data"]), cfg.quant)
        assert report is None or not report.unmatched_rules, run.name
        model(torch.randn(4, 1, 28, 28)).sum().backward()
