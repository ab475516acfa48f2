"""The maths of heterogeneous bitwidth binarization: mixes, bit maps, binarizers, quantizers."""

from hbnn.quant.bitmap import make_bitmap
from hbnn.quant.checks import HEURISTICS
from hbnn.quant.config import LayerQuant, QuantSpec
from hbnn.quant.functional import (
    binarize_planes,
    binarize_with_scales,
    dequantize_planes,
    hetero_binarize,
    residual_binarize,
)
from hbnn.quant.mix import PAPER_MIXES, BitMix
from hbnn.quant.modules import ActQuantizer, WeightQuantizer

__all__ = [
    "BitMix",
    "PAPER_MIXES",
    "HEURISTICS",
    "make_bitmap",
    "residual_binarize",
    "hetero_binarize",
    "binarize_planes",
    "dequantize_planes",
    "binarize_with_scales",
    "QuantSpec",
    "LayerQuant",
    "WeightQuantizer",
    "ActQuantizer",
]
