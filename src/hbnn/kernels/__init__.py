"""Bit-serial binary kernels behind one door (no hbnn dependencies, nothing compiled at import).

Layout: :class:`PackedPlanes` (``packing``). Ground truth: ``reference`` (pure torch).
Fast path: C kernels (``csrc/``), built with the machine's C compiler on first use and
cached; AVX-512 VPOPCNTDQ / AVX2 / portable variants picked at run time; pure-torch
fallback (one warning) when no compiler is available. The same library carries the
bit-map selection passes that :mod:`hbnn.quant.select_c` drives (``csrc/select_body.c``).

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
from hbnn.kernels.packing import PackedPlanes, pack_activations, pack_conv_input, pack_conv_weight, pack_planes

__all__ = [
    "PackedPlanes",
    "pack_planes",
    "pack_conv_input",
    "pack_conv_weight",
    "pack_activations",
    "binary_linear",
    "binary_linear_counts",
    "binary_conv2d",
    "binary_conv2d_counts",
    "available_backends",
    "cpu_features",
]
