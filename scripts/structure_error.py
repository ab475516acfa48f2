#!/usr/bin/env python3
"""Eq. 5 error of structured bit maps on a N(0, 1) tensor, printed as JSON.

For a seeded N(0, 1) conv weight ``[128, 64, 3, 3]`` at 1.4 bits (70/20/10) and every
weight structure x allocation, the relative error ``||x - x_hat|| / ||x||`` of the
heterogeneous residual binarization (Eq. 5, per-tensor scales) with that map, the realized
average bits and the number of map units; homogeneous 1 and 2 bits for reference. Then
the same for activation structures on a N(0, 1) input ``[16, 64, 16, 16]`` (key allocation:
error allocation applies to weights only).

    python scripts/structure_error.py > results/structure_error.json
"""

from __future__ import annotations

import json
import sys

import torch

from hbnn.quant import BitMix, hetero_binarize, residual_binarize
from hbnn.quant.structure import Structure, parse_structure, unit_bitmap

SEED = 0
WEIGHT_SHAPE = (128, 64, 3, 3)
ACT_SHAPE = (16, 64, 16, 16)
BITS = 1.4
WEIGHT_CASES = [  # (structure, allocate, heuristic)
    ("entry", "key", "middle_out"), ("entry", "key", "random"), ("entry", "error", "middle_out"),
    ("block8", "key", "middle_out"), ("block8", "error", "middle_out"),
    ("block64", "key", "middle_out"), ("block64", "key", "random"), ("block64", "error", "middle_out"),
    ("oihw_block64", "key", "middle_out"),
    ("channel", "key", "middle_out"), ("channel", "error", "middle_out"),
]
ACT_CASES = [("entry", "middle_out"), ("pixel", "middle_out"), ("group8", "middle_out"), ("group16", "middle_out")]


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``||x - x_hat|| / ||x||`` in float64."""
    x = x.double()
    return float((x - x_hat.double()).norm() / x.norm())


def _structure(name: str) -> Structure:
    return Structure("oihw_block", 64) if name == "oihw_block64" else parse_structure(name)


def case(x: torch.Tensor, mix: BitMix, name: str, allocate: str, heuristic: str) -> dict:
    """One row: the map of ``x`` for a structure and allocation, its error and bits."""
    structure = _structure(name)
    units = unit_bitmap(x, mix, structure, heuristic, allocate, torch.Generator().manual_seed(SEED))
    bitmap = units.expand()
    return {"structure": name, "allocate": allocate, "heuristic": None if allocate == "error" else heuristic,
            "units": int(units.bits.numel()), "realized_bits": float(bitmap.float().mean()),
            "relative_error": relative_error(x, hetero_binarize(x, bitmap))}


def main() -> dict:
    """All rows (weights, activations, homogeneous references)."""
    gen = torch.Generator().manual_seed(SEED)
    w = torch.randn(WEIGHT_SHAPE, generator=gen)
    a = torch.randn(ACT_SHAPE, generator=gen)
    mix = BitMix.from_average(BITS)
    weights = [case(w, mix, *c) for c in WEIGHT_CASES]
    acts = [case(a, mix, s, "key", h) for s, h in ACT_CASES]
    reference = {f"homogeneous_{b}bit": relative_error(w, residual_binarize(w, b)) for b in (1, 2)}
    return {"seed": SEED, "bits": BITS, "mix": str(mix), "weight_shape": list(WEIGHT_SHAPE),
            "act_shape": list(ACT_SHAPE), "metric": "||x - x_hat|| / ||x||, Eq. 5, per-tensor scales",
            "weights": weights, "acts": acts, "reference": reference}


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=1)
    sys.stdout.write("\n")
