"""Fixtures for the experiment tests: tiny experiments and synthetic result lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

FMNIST = Path("/usr/share/datasets/fashion-mnist")

#: A run small enough for tests: 256 training images, 1 epoch, widths 4-8-8 (a few seconds).
TINY_RECIPE = {
    "model": {"name": "cifar_fc4", "activation": "hardtanh", "kwargs": {"widths": [4, 8, 8]}},
    "data": {"name": "fashion_mnist", "train_limit": 256, "test_limit": 128},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "sched": {"name": "constant"},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "log_every_steps": 1000},
    "run": {"tensorboard": False, "progress": False},
}
LAYOUT = {"keep_first": False, "keep_last": False, "with_act": {"float_input": ["^features\\.0$"]}}


def _write_experiment(folder: Path, name: str, points: list, seeds=(0,), **extra) -> Path:
    data = {"description": f"test experiment {name}", "figure": extra.pop("figure", "fig2b"),
            "recipe": [TINY_RECIPE], "layout": LAYOUT, "seeds": list(seeds), "points": points, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def write_experiment(tmp_path):
    """``write_experiment(name, points, seeds=(0,), **keys)`` -> path of a tiny experiment YAML."""
    return lambda name, points, seeds=(0,), **extra: _write_experiment(tmp_path, name, points, seeds, **extra)


@pytest.fixture
def needs_fmnist():
    """Skip unless the Fashion-MNIST files are installed (``make data``)."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists() and not (FMNIST / "train-images-idx3-ubyte").exists():
        pytest.skip("Fashion-MNIST not installed (make data)")


def _line(experiment: str, point: str, seed: int, top1: float, spec: dict, *, figure: str | None = None,
          weight_bits: float | None = None, act_bits: float = 32.0, sha: str = "x") -> dict:
    w = spec.get("weight")
    if weight_bits is None:
        weight_bits = 32.0 if w is None else float(w) if isinstance(w, (int, float)) else 1.4
    return {"schema": 1, "kind": "train", "experiment": experiment, "figure": figure or experiment,
            "point": point, "run": f"{experiment}/{point}/seed{seed}", "seed": seed, "spec": dict(spec),
            "config": {}, "config_sha": sha, "top1": top1, "top5": min(1.0, top1 + 0.05), "loss": 1.0,
            "weight_bits": weight_bits, "act_bits": act_bits}


@pytest.fixture
def make_lines():
    """``make_lines(experiment, {point: (spec, [top1 per seed])}, **kw)`` -> synthetic result lines.

    Accuracies are fractions (as fit reports them); ``spec`` may carry ``_bits`` to set the
    realized weight bits of that point.
    """

    def make(experiment: str, points: dict, **kw) -> list[dict]:
        out = []
        for name, (spec, values) in points.items():
            spec = dict(spec)
            bits = spec.pop("_bits", None)
            for seed, top1 in enumerate(values):
                out.append(_line(experiment, name, seed, top1, spec, weight_bits=bits, **kw))
        return out

    return make
