"""Shared fixtures for the training tests: a fabricated miniature Fashion-MNIST and tiny runs."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000080N)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fabricate_fashion_mnist(folder: Path, n_train: int = 192, n_test: int = 64, seed: int = 0) -> Path:
    """A learnable 28x28, 10-class IDX dataset: class c lights up a 7x7 block at a c-dependent spot."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            images[i, 2 + 7 * r: 9 + 7 * r, 2 + 6 * q: 9 + 6 * q] += 180
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    """Folder with a fabricated miniature Fashion-MNIST (192 train / 64 test images)."""
    return fabricate_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def _tiny_args(data_dir: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs),
            "--batch-size", "32", "--quiet",
            "--set", "model.kwargs={widths: [8, 16, 16]}",
            "--set", "run.tensorboard=false", *extra]


@pytest.fixture
def tiny_args(fmnist_dir):
    """``tiny_args(out, *extra, epochs=2)``: ``hbnn train`` arguments for a few batches of a
    narrow cifar_fc4 on the fabricated data."""
    return lambda out, *extra, epochs=2: _tiny_args(fmnist_dir, out, *extra, epochs=epochs)


@pytest.fixture
def child_env() -> dict:
    """Environment for ``python -m hbnn.cli`` children: one thread (same numerics in every run)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads mostly wait for each other."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
