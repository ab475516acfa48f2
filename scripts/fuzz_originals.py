"""The fuzzer's valid originals (see ``scripts/fuzz_files.py``): a fabricated dataset, tiny runs, packed files.

:func:`build_originals` writes, under a scratch folder: a fabricated 28x28 10-class IDX
dataset; three tiny ``hbnn train`` runs (a W1.4 A1.4 cifar_fc4 run checkpointed after
epoch 1 and 2, the same recipe with another seed, a float run), normalised to be
byte-stable apart from their random ``run_id``; a packed file exported from the first
(``hbnn export``) and one from a hand-built chain of every layer kind the format holds.
Also the safetensors header helpers the mutation operators use.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import struct
from pathlib import Path

__all__ = ["REPO", "TRAIN", "QUANT", "LIMIT", "fabricate_dataset", "run_cli", "split_safetensors",
           "join_safetensors", "sidecar", "build_originals"]

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--epochs", "1", "--batch-size", "32", "--quiet", "--set", "model.kwargs={widths: [8, 16, 16]}",
         "--set", "run.tensorboard=false", "--set", "model.activation=hardtanh"]
QUANT = "quant={default: {weight: {bits: 1.4}, act: {bits: 1.4}}}"
LIMIT = ["--limit", "32"]


def _write_idx(path: Path, array) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(header + array.astype("uint8").tobytes())


def fabricate_dataset(folder: Path, n_train: int = 128, n_test: int = 64) -> Path:
    """A learnable 28x28 10-class Fashion-MNIST-like IDX dataset: class c brightens a c-dependent block."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            images[i, 2 + 7 * r: 9 + 7 * r, 2 + 6 * q: 9 + 6 * q] += 180
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


def run_cli(argv: list[str]) -> tuple[int, str, str, BaseException | None]:
    """``hbnn.cli.main(argv)`` in-process: ``(exit code, stdout, stderr, escaped exception)``."""
    from hbnn.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    exc = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv)
        except SystemExit as stop:
            rc = stop.code if isinstance(stop.code, int) else 1
        except BaseException as error:  # noqa: BLE001 - what escapes main is a traceback
            rc, exc = 1, error
    return rc, out.getvalue(), err.getvalue(), exc


def _must(argv: list[str]) -> None:
    rc, _, err, exc = run_cli(argv)
    if rc != 0:
        raise RuntimeError(f"building originals: hbnn {' '.join(argv)} failed ({rc}): {err.strip() or exc!r}")


def split_safetensors(data: bytes) -> tuple[dict, str, dict, bytes]:
    """``(outer header, metadata key, inner JSON header, tensor bytes)`` of an hbnn safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    outer = json.loads(data[8:8 + n])
    (key,) = outer["__metadata__"]
    return outer, key, json.loads(outer["__metadata__"][key]), data[8 + n:]


def join_safetensors(outer: dict, key: str, inner: dict, rest: bytes) -> bytes:
    """Inverse of :func:`split_safetensors` (the header padded with spaces to 8 bytes, as writers do)."""
    outer = dict(outer, __metadata__={key: json.dumps(inner, sort_keys=True)})
    text = json.dumps(outer, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + rest


def sidecar(meta: dict, data: bytes, old: dict | None = None) -> bytes:
    """A ``last.json`` for tensor-file bytes ``data``: ``old`` updated with ``meta``, new sha256."""
    from hbnn.io import seal_header

    side = dict(old or {}, **meta)
    side["sha256"] = hashlib.sha256(data).hexdigest()
    return (json.dumps(seal_header(side), indent=2, sort_keys=True) + "\n").encode()


def _normalise_run(run: Path) -> None:
    """Drop ``best.*`` (every tool reads ``last``); zero the checkpoint's wall time (resealed): stable originals."""
    from hbnn.io import seal_header

    for p in run.glob("best.*"):
        p.unlink()
    st = run / "last.safetensors"
    outer, key, inner, rest = split_safetensors(st.read_bytes())
    inner["wall_time_s"] = 0.0
    data = join_safetensors(outer, key, seal_header(inner), rest)
    st.write_bytes(data)
    old = json.loads((run / "last.json").read_text())
    (run / "last.json").write_bytes(sidecar(json.loads(split_safetensors(data)[0]["__metadata__"][key]), data, old))


def _chain_model():
    """A calibrated chain of every layer kind the packed format holds (input 1 x 28 x 28, 10 classes),
    one binarized conv with a structured weight map (block8 unit codes) and a pixel input map."""
    import torch
    from torch import nn

    from hbnn.nn import HBConv2d, HBLinear

    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        HBConv2d(4, 8, 3, padding=1, bias=True, weight_quant=1.4, act_quant=1.4, output_scale=True),
        nn.BatchNorm2d(8), nn.Hardtanh(), nn.MaxPool2d(2), nn.BatchNorm2d(8),
        HBConv2d(8, 8, 3, stride=2, padding=1, weight_quant={"bits": 1.4, "structure": "block8", "per_channel": True},
                 act_quant={"bits": 1.4, "structure": "pixel"}),  # v3 unit codes and a structured input map
        nn.Hardtanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.1),
        HBLinear(72, 16, weight_quant=1, act_quant=2), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28, generator=gen))
    return model.eval()


def build_originals(work: Path) -> dict:
    """Build the originals under ``work``; ``{name: {"kind", "path", ...}}`` (also saved as originals.json)."""
    from hbnn.export import export_model

    data = fabricate_dataset(work / "data")
    base = ["train", "--data-dir", str(data), *TRAIN]
    _must([*base, "--out", str(work / "run_a"), "--seed", "1", "--set", QUANT])
    _normalise_run(work / "run_a")
    shutil.copytree(work / "run_a", work / "run_a_step1")
    _must(["train", "--resume", str(work / "run_a"), "--epochs", "2", "--quiet"])
    _must([*base, "--out", str(work / "run_b"), "--seed", "2", "--set", QUANT])
    _must([*base, "--out", str(work / "run_fp"), "--seed", "1"])
    for run in ("run_a", "run_b", "run_fp"):
        _normalise_run(work / run)
    _must(["export", str(work / "run_a"), "--which", "last", "--out", str(work / "fc4.hbnn"), "--json"])
    export_model(_chain_model(), work / "chain.hbnn", fold_bn=False, input_shape=[1, 28, 28],
                 meta={"data": {"name": "fashion_mnist", "data_dir": str(data), "image_size": None}})
    originals = {
        "fc4.hbnn": {"kind": "packed", "path": str(work / "fc4.hbnn"), "cli": ["infer", "hw"]},
        "chain.hbnn": {"kind": "packed", "path": str(work / "chain.hbnn"), "cli": ["infer"]},
        "run_a": {"kind": "checkpoint", "path": str(work / "run_a"), "cli": ["summary", "eval"],
                  "older": str(work / "run_a_step1"), "other": str(work / "run_b"), "float": str(work / "run_fp")},
    }
    (work / "originals.json").write_text(json.dumps(originals, indent=2))
    return originals
