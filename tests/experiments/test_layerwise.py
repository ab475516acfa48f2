"""Layer-level mixing solver: optimal against brute force, realized averages, model counts."""

from __future__ import annotations

import itertools
import random

import pytest

from hbnn.experiments.layerwise import layer_param_counts, solve_layer_bits


def brute_force_error(counts: dict, target: float, choices=(1, 2, 3)) -> float:
    total = sum(counts.values())
    return min(abs(sum(n * b for n, b in zip(counts.values(), bits)) / total - target)
               for bits in itertools.product(choices, repeat=len(counts)))


@pytest.mark.parametrize("trial", range(20))
def test_solver_is_optimal_on_random_toys(trial):
    rng = random.Random(trial)
    counts = {f"l{i}": rng.randint(1, 5000) for i in range(rng.randint(1, 6))}
    target = round(rng.uniform(1.0, 3.0), 2)
    plan = solve_layer_bits(counts, target)
    total = sum(counts.values())
    assert plan.average == sum(counts[k] * b for k, b in plan.bits.items()) / total  # realized, exactly
    assert list(plan.bits) == list(counts)
    assert set(plan.bits.values()) <= {1, 2, 3}
    assert plan.error == pytest.approx(brute_force_error(counts, target), abs=1e-12)


def test_integer_targets_are_homogeneous():
    counts = {"a": 100, "b": 300, "c": 200}  # 2.0 could also be a 1/3 split; ties prefer 2 everywhere
    assert solve_layer_bits(counts, 1.0).bits == {"a": 1, "b": 1, "c": 1}
    assert solve_layer_bits(counts, 2.0).bits == {"a": 2, "b": 2, "c": 2}
    assert solve_layer_bits(counts, 3.0).bits == {"a": 3, "b": 3, "c": 3}


def test_exact_toy_solution():
    plan = solve_layer_bits({"a": 100, "b": 300}, 1.25)
    assert plan.bits == {"a": 2, "b": 1} and plan.average == 1.25 and plan.error == 0


def test_choices_restrict_bits():
    plan = solve_layer_bits({"a": 1, "b": 1}, 1.5, choices=(1, 2))
    assert sorted(plan.bits.values()) == [1, 2]


@pytest.mark.parametrize("counts, target, choices", [
    ({}, 1.5, (1, 2, 3)),
    ({"a": 0}, 1.5, (1, 2, 3)),
    ({"a": 10}, 3.5, (1, 2, 3)),
    ({"a": 10}, 1.5, (0, 2)),
])
def test_bad_inputs(counts, target, choices):
    with pytest.raises(ValueError):
        solve_layer_bits(counts, target, choices)


def test_model_counts_match_summarize_weighting():
    """The plan's average is what hbnn.summarize realizes on the converted model."""
    from hbnn.convert import quantize_, summarize
    from hbnn.models import build_model

    config = {"model": {"name": "cifar_fc4", "kwargs": {"widths": [4, 8, 8]}}, "data": {"name": "fashion_mnist"}}
    layout = {"keep_first": False, "keep_last": False, "rules": {}}
    counts = layer_param_counts(config, layout)
    assert list(counts) == ["features.0", "features.4", "features.8", "classifier"]
    plan = solve_layer_bits(counts, 1.5)
    model = build_model("cifar_fc4", num_classes=10, in_channels=1, image_size=28, widths=(4, 8, 8))
    with pytest.warns(UserWarning, match="new trainable parameters .*classifier.output_scale"):
        quantize_(model, {"rules": {f"^{k}$": {"weight": {"bits": b}} for k, b in plan.bits.items()},
                          "keep_first": False, "keep_last": False})
    assert summarize(model)["model"]["avg_weight_bits"] == pytest.approx(plan.average, abs=1e-12)


def test_layout_rules_exclude_float_layers():
    config = {"model": {"name": "cifar_fc4", "kwargs": {"widths": [4, 8, 8]}}, "data": {"name": "fashion_mnist"}}
    counts = layer_param_counts(config, {"keep_first": True, "keep_last": True, "rules": {}})
    assert list(counts) == ["features.4", "features.8"]
