"""hbnn: Heterogeneous Bitwidth Binarization for PyTorch.

Importing ``hbnn`` is light: no compilation, no CUDA initialisation, no optional extras.
"""

from hbnn.calibration import calibrate
from hbnn.convert import QuantizeConfig, quantize_
from hbnn.nn import HBConv2d, HBLinear
from hbnn.quant import BitMix, LayerQuant, QuantSpec, hetero_binarize, make_bitmap, residual_binarize
from hbnn.summary import summarize

__all__ = [
    "BitMix",
    "make_bitmap",
    "residual_binarize",
    "hetero_binarize",
    "QuantSpec",
    "LayerQuant",
    "HBConv2d",
    "HBLinear",
    "QuantizeConfig",
    "quantize_",
    "calibrate",
    "summarize",
    "__version__",
]

__version__ = "0.1.0"
