"""hbnn: Heterogeneous Bitwidth Binarization for PyTorch.

Importing ``hbnn`` is light: no compilation, no CUDA initialisation, no optional extras.
"""

from hbnn.quant import BitMix, hetero_binarize, make_bitmap, residual_binarize

__all__ = ["BitMix", "hetero_binarize", "make_bitmap", "residual_binarize", "__version__"]

__version__ = "0.1.0"
