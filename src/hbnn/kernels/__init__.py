"""Bit-serial binary kernels behind one door (only ``hbnn.errors`` imported, nothing compiled at import).

Layout: :class:`PackedPlanes` (``layout``), built by ``packing``. Ground truth: ``reference``
(pure torch). Fast path: C kernels (``csrc/``), built with the machine's C compiler on
first use (or ahead of time by :func:`build`, ``hbnn kernels build``) and cached;
AVX-512 VPOPCNTDQ / AVX2 / portable variants picked at run time; pure-torch fallback (one
warning) when no compiler is available. ``$HBNN_KERNELS=auto|off|require`` decides
whether C runs (``toolchain``). The same library carries the bit-map selection passes
(``selection``, ``csrc/select_body.c``) that :mod:`hbnn.quant.select_c` drives.

Imports flow one way: ``layout``, ``epilogue`` and ``_build`` are leaves; ``_cbackend`` (ctypes
bindings) reads both; then ``packing``, ``prepared``, ``reference``, ``dispatch``, ``toolchain``
in that order; ``selection`` reads only ``_cbackend``; ``commands`` (the CLI) imports ``toolchain``
in its handlers. Outside this package only the names here and ``selection`` are public.

Example:
    >>> import torch
    >>> from hbnn.kernels import binary_linear, pack_planes
    >>> w = pack_planes(torch.rand(1, 4, 70) > 0.5, None, torch.ones(1), backend="torch")
    >>> x = pack_planes(torch.rand(1, 2, 70) > 0.5, None, torch.ones(1), backend="torch")
    >>> bool((binary_linear(x, w, backend="torch") == x.dequantize() @ w.dequantize().T).all())
    True
"""

from hbnn.kernels.dispatch import (
    available_backends,
    binary_conv2d,
    binary_conv2d_counts,
    binary_linear,
    binary_linear_counts,
    cpu_features,
)
from hbnn.kernels.epilogue import Epilogue
from hbnn.kernels.layout import PackedPlanes
from hbnn.kernels.packing import pack_activations, pack_conv_input, pack_conv_weight, pack_planes
from hbnn.kernels.prepared import PreparedWeight, prepare_weight
from hbnn.kernels.reference import conv_output_hw
from hbnn.kernels.toolchain import build, status

__all__ = [
    "Epilogue",
    "PackedPlanes",
    "PreparedWeight",
    "prepare_weight",
    "pack_planes",
    "pack_conv_input",
    "pack_conv_weight",
    "pack_activations",
    "binary_linear",
    "binary_linear_counts",
    "binary_conv2d",
    "binary_conv2d_counts",
    "conv_output_hw",
    "available_backends",
    "cpu_features",
    "build",
    "status",
]
