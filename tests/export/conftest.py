"""Shared helpers for the export tests: small calibrated binarized models and a parity check."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from hbnn.convert import quantize_
from hbnn.models import build_model

REPO = Path(__file__).resolve().parents[2]


def calibrate(model: nn.Module, shape: tuple, batches: int = 3, seed: int = 0) -> nn.Module:
    """A few training-mode forwards (BN statistics, activation running estimates), then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(16, *shape, generator=gen))
    return model.eval()


def small_fc4(quant: dict | None, *, seed: int = 0, keep_first: bool = True, keep_last: bool = True,
              widths=(8, 16, 24), size: int = 12, channels: int = 1) -> nn.Module:
    """A narrow, calibrated cifar_fc4 (hardtanh) binarized by ``quant`` (``quant.default``)."""
    torch.manual_seed(seed)
    model = build_model("cifar_fc4", num_classes=10, in_channels=channels, image_size=size,
                        activation="hardtanh", widths=widths)
    if quant is not None:
        with warnings.catch_warnings():  # output_scale of a binarized last layer: nothing trains here
            warnings.filterwarnings("ignore", message="quantize_: new trainable parameters")
            quantize_(model, {"default": quant, "keep_first": keep_first, "keep_last": keep_last})
    return calibrate(model, (channels, size, size), seed=seed)


def assert_parity(ref: torch.Tensor, out: torch.Tensor, atol: float = 1e-4) -> None:
    """Same predictions and logits within ``atol`` (float summation order is the only difference).

    An activation sign can in principle flip where a pre-binarization value lies within
    float rounding of a threshold; with these seeds none does, so this is exact to ``atol``.
    """
    assert torch.equal(ref.argmax(1), out.argmax(1))
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-4)


@pytest.fixture
def meta() -> dict:
    """Export meta for the 1 x 12 x 12 models of :func:`small_fc4`."""
    return {"model": {"name": "cifar_fc4", "in_channels": 1, "image_size": 12, "num_classes": 10}}


@pytest.fixture(scope="session")
def fabricate_fashion_mnist():
    """The training tests' miniature Fashion-MNIST fabricator (reused, not copied)."""
    path = REPO / "tests" / "train" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_hbnn_train_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fabricate_fashion_mnist


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fabricate_fashion_mnist) -> Path:
    """A finished 1-epoch W1.4 A1.4 run of a narrow cifar_fc4 (hardtanh) on fabricated
    Fashion-MNIST (192 train / 64 test images), trained once per session through ``hbnn train``."""
    from hbnn.cli import main

    root = tmp_path_factory.mktemp("export_run")
    data = fabricate_fashion_mnist(root / "fmnist")
    out = root / "run"
    argv = ["train", "--data-dir", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32", "--quiet",
            "--set", "model.kwargs={widths: [8, 16, 16]}", "--set", "run.tensorboard=false",
            "--set", "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}", "--set", "model.activation=hardtanh"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="session")
def packed_run(trained_run, tmp_path_factory) -> Path:
    """:func:`trained_run` exported (``hbnn export``) to a packed file."""
    from hbnn.cli import main

    out = tmp_path_factory.mktemp("export_packed") / "run.hbnn"
    assert main(["export", str(trained_run), "--out", str(out), "--json"]) == 0
    return out


@pytest.fixture
def make_fc4():
    """The :func:`small_fc4` factory."""
    return small_fc4


@pytest.fixture(scope="session")
def fc4_factory():
    """:func:`small_fc4` for fixtures of a wider scope than ``make_fc4``."""
    return small_fc4


@pytest.fixture
def parity():
    """The :func:`assert_parity` check."""
    return assert_parity


@pytest.fixture
def calibrated():
    """The :func:`calibrate` helper."""
    return calibrate


@pytest.fixture(scope="session")
def calibrator():
    """:func:`calibrate` for fixtures of a wider scope than ``calibrated``."""
    return calibrate


def rewrite_packed(path: Path, edit_header=None, edit_tensors=None, *, resum: bool = True, reseal: bool = True) -> None:
    """Rewrite a packed file with an edited header/tensors, read raw (no validation).

    With ``resum`` the payload digest is recomputed and with ``reseal`` the header digest
    (:func:`hbnn.io.seal_header`), so only validation can refuse the edit; without them
    the digests must.
    """
    import json
    import struct

    from safetensors.torch import load, save

    from hbnn.export.format import META_KEY
    from hbnn.io import seal_header, tensors_sha256

    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(json.loads(data[8:8 + n])["__metadata__"][META_KEY])
    tensors = load(data)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    if resum:
        header["payload_sha256"] = tensors_sha256(tensors)
    if reseal:
        header = seal_header(header)
    Path(path).write_bytes(save(tensors, metadata={META_KEY: json.dumps(header)}))


@pytest.fixture
def rewrite():
    """The :func:`rewrite_packed` helper."""
    return rewrite_packed


def assert_refused(path, pattern: str, capsys) -> None:
    """Every reader refuses ``path`` with one FormatError line naming it and matching ``pattern``;
    ``hbnn infer`` and ``hbnn hw estimate --packed`` exit 2 with one stderr line."""
    import re

    from hbnn.cli import main
    from hbnn.errors import FormatError
    from hbnn.export import load, model_from_packed, read_packed, storage_report

    for reader in (load, read_packed, storage_report, model_from_packed):
        with pytest.raises(FormatError) as exc:
            reader(path)
        text = str(exc.value)
        assert "\n" not in text and str(path) in text, text
        assert re.search(pattern, text), (pattern, text)
    for argv in (["infer", str(path)], ["hw", "estimate", "--packed", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("hbnn: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(pattern, err), (pattern, err)


@pytest.fixture
def refused():
    """The :func:`assert_refused` check."""
    return assert_refused
