"""Fixtures for the experiment tests: tiny experiments (synthetic result lines: tests/research)."""

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

