#!/usr/bin/env python3
"""Packed-file sizes of 1.4-bit weights per map structure (entry, channel, block64), as JSON.

A freshly initialised (seeded, untrained) ``cifar_fc4`` 64-128-256 for 3 x 32 x 32 inputs,
quantized with 1.4-bit weights (70/20/10, key allocation, per-tensor scales) of each
structure and 1.4-bit activations (first and last layers float), its activation
quantizers calibrated on a few batches of N(0, 1) data (:func:`hbnn.calibrate`), exported
with :func:`hbnn.export.export_model` into a temporary folder; homogeneous 1- and 2-bit
weights for reference. Per case: the file size and, per binarized layer and in all, the
stored bits per binarized weight split into planes (signs), map and scales (whole 64-bit
words, as :func:`hbnn.export.storage_report` counts them). Sizes do not depend on
training: the map's unit counts and the bit mix fix them (up to < 64 bits of padding).

    python scripts/export_sizes.py > results/export_sizes.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

import hbnn
from hbnn.export import FORMAT, VERSION, export_model
from hbnn.models import build_model

SEED = 0
WIDTHS = (64, 128, 256)
SHAPE = (3, 32, 32)
CASES = {  # name -> weight spec
    "W1.4 entry": {"bits": 1.4},
    "W1.4 channel": {"bits": 1.4, "structure": "channel"},
    "W1.4 block64": {"bits": 1.4, "structure": "block64"},
    "W1 (reference)": {"bits": 1},
    "W2 (reference)": {"bits": 2},
}


def build(weight: dict) -> torch.nn.Module:
    """The seeded, calibrated model of one case (eval mode)."""
    torch.manual_seed(SEED)
    model = build_model("cifar_fc4", num_classes=10, in_channels=SHAPE[0], image_size=SHAPE[1],
                        activation="hardtanh", widths=WIDTHS)
    hbnn.quantize_(model, {"default": {"weight": weight, "act": 1.4}})
    gen = torch.Generator().manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hbnn.calibrate(model, [torch.randn(32, *SHAPE, generator=gen) for _ in range(4)])
    return model.eval()


def _rounded(split: dict) -> dict:
    return {k: round(v, 4) for k, v in split.items()}


def case(weight: dict, folder: Path) -> dict:
    """Export one case; its file size and bits per binarized weight (planes, map, scales)."""
    report = export_model(build(weight), folder / "m.hbnn", input_shape=list(SHAPE),
                          meta={"model": {"name": "cifar_fc4"}})
    m = report["model"]
    layers = [{"name": r["name"], "structure": r["structure"], "weights": r["weights"], "map_units": r["map_units"],
               "bits_per_weight": round(r["bits_per_weight"], 4), "split": _rounded(r["bits_per_weight_split"])}
              for r in report["layers"] if r["binarized"]]
    return {"weight": weight, "file_bytes": m["file_bytes"], "header_bytes": m["header_bytes"],
            "binarized_weights": m["binarized_weights"],
            "bits_per_binarized_weight": round(m["bits_per_binarized_weight"], 4),
            "split": _rounded(m["bits_per_binarized_weight_split"]), "layers": layers}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cases = {name: case(spec, Path(tmp)) for name, spec in CASES.items()}
    out = {"command": "python scripts/export_sizes.py > results/export_sizes.json",
           "format": f"{FORMAT} version {VERSION}", "model": f"cifar_fc4 {'-'.join(map(str, WIDTHS))}, input "
                                                            f"{list(SHAPE)}, 1.4-bit activations, seed {SEED}",
           "cases": cases}
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
