"""The packed bit-serial kernels as ``torch.library`` custom ops (namespace ``hbnn``).

:func:`hbnn.kernels.pack_activations`, :func:`hbnn.kernels.binary_linear` and
:func:`hbnn.kernels.binary_conv2d` take and return :class:`~hbnn.kernels.PackedPlanes` /
:class:`~hbnn.kernels.PreparedWeight` objects and call C through ctypes, which
``torch.compile`` cannot trace (a graph break per call) and ``torch.export`` refuses. The
ops below are the same calls with tensors, lists and strings at the boundary; each body
rebuilds the objects and calls the public function (same bits, same backend choice), and
each fake (meta) implementation gives the output's shape, dtype and strides, so a compiler
sees one op per call:

===============================  ==========================================================
op                               result
===============================  ==========================================================
``hbnn::pack_activations``       ``(signs, masks, full)`` of ``pack_activations(x, scales,
                                 bitmap)``: int64 ``[n, R, W]``, int64 ``[n, R, W]`` (``[0]``
                                 without a bitmap: no masks), bool ``[n]``
``hbnn::binary_linear``          float32 ``[*x_shape[:-1], O]`` (contiguous)
``hbnn::binary_conv2d``          float32 ``[B, O, OH, OW]``, channels-last strides
===============================  ==========================================================

with ``n = scales.numel()`` planes, ``K`` entries per packed row (``x.shape[1]``: features
or channels), ``W = ceil(K / 64)`` words, ``R = B`` rows for ``x = [B, K]`` and ``R = B H W``
for ``x = [B, C, H, W]`` (packed NHWC), and for the convolution
``OH = floor((H + 2 p_0 - d_0 (kh - 1) - 1) / s_0) + 1`` (likewise ``OW``).

A packed operand crosses the boundary as the five values of :func:`planes_args`
``(signs, masks, full, scales, shape)``; a prepared weight as the eight of
:func:`weight_args` (its planes, then the names and tensors of its panels and whether
they are permuted), built once, outside the graph. ``full`` is a bool tensor (for packed
activations it depends on the data: an op output, never read in Python inside a graph).

Importing this module registers the ops; ``import hbnn`` does not import it (nothing here
is compiled or loaded before the first call).

Example:
    >>> import torch
    >>> from hbnn.kernels import pack_planes, prepare_weight
    >>> from hbnn.kernels.library import weight_args
    >>> w = prepare_weight(pack_planes(torch.rand(1, 3, 70) > 0.5, None, torch.ones(1)))
    >>> x = torch.randn(2, 70)
    >>> signs, masks, full = torch.ops.hbnn.pack_activations(x, torch.ones(1), None, "auto")
    >>> y = torch.ops.hbnn.binary_linear(signs, masks, full, torch.ones(1), [2, 70], *weight_args(w), "auto", None)
    >>> y.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from hbnn.kernels import PackedPlanes, PreparedWeight, binary_conv2d, binary_linear, pack_activations
from hbnn.kernels.layout import WORD_BITS, valid_words
from hbnn.kernels.reference import conv_output_hw

__all__ = ["pack_activations_op", "binary_linear_op", "binary_conv2d_op", "planes_args", "weight_args",
           "as_planes", "as_weight"]


# ------------------------------------------------------------------ crossing the boundary
def planes_args(p: PackedPlanes) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """``(signs, masks, full, scales, shape)`` of ``p`` as the ops take them (masks ``[0]`` if None)."""
    masks = p.signs.new_empty((0,)) if p.masks is None else p.masks
    return p.signs, masks, torch.tensor(p.full, dtype=torch.bool), p.scales, list(p.shape)


def weight_args(w: PreparedWeight | PackedPlanes) -> tuple:
    """:func:`planes_args` of the weight's planes, then ``(panel names joined by commas, panel
    tensors, permuted)``.

    Without C panels (``$HBNN_KERNELS=off``, no compiler, or plain :class:`PackedPlanes`)
    the panel lists are empty and the kernels prepare (C) or read the planes (reference).
    """
    planes, panels = (w.planes, w.panels) if isinstance(w, PreparedWeight) else (w, None)
    names = [] if panels is None else sorted(k for k in panels if k != "permuted")
    tensors = [panels[k] for k in names]
    return (*planes_args(planes), ",".join(names), tensors, bool(panels and panels["permuted"]))


def as_planes(signs: Tensor, masks: Tensor, full: Tensor, scales: Tensor, shape: list[int]) -> PackedPlanes:
    """The :class:`PackedPlanes` of :func:`planes_args` values (masks dropped when every plane is full)."""
    full_t = tuple(bool(f) for f in full.tolist())
    return PackedPlanes(signs, None if all(full_t) else masks, full_t, scales, tuple(int(s) for s in shape))


def as_weight(signs, masks, full, scales, shape, names: str, tensors: list, permuted: bool) -> PreparedWeight:
    """The :class:`PreparedWeight` of :func:`weight_args` values (planes only when there are no panels)."""
    panels = None if not names else {**dict(zip(names.split(","), tensors)), "permuted": permuted}
    return PreparedWeight(as_planes(signs, masks, full, scales, shape), panels)


# ---------------------------------------------------------------------- pack_activations
@torch.library.custom_op("hbnn::pack_activations", mutates_args=())
def pack_activations_op(x: Tensor, scales: Tensor, bitmap: Tensor | None, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`hbnn.kernels.pack_activations` as ``(signs, masks, full)`` (see the module docstring).

    With a bitmap the masks are always returned (also when every plane came out full, when
    the packer keeps none: then they are every plane's valid words); without one, ``[0]``.
    """
    p = pack_activations(x, scales, bitmap, backend=backend)
    if bitmap is None:
        masks = p.signs.new_empty((0,))
    elif p.masks is None:
        masks = valid_words(p.k).to(p.signs.device).expand(p.signs.shape).contiguous()
    else:
        masks = p.masks
    return p.signs, masks, torch.tensor(p.full, dtype=torch.bool, device=p.signs.device)


@pack_activations_op.register_fake
def _(x, scales, bitmap, backend):
    n, k = scales.numel(), x.shape[1]
    rows = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[2] * x.shape[3]
    words = (k + WORD_BITS - 1) // WORD_BITS
    signs = x.new_empty((n, rows, words), dtype=torch.int64)
    masks = x.new_empty((0,) if bitmap is None else (n, rows, words), dtype=torch.int64)
    return signs, masks, x.new_empty((n,), dtype=torch.bool)


# -------------------------------------------------------------------------- binary_linear
@torch.library.custom_op("hbnn::binary_linear", mutates_args=())
def binary_linear_op(x_signs: Tensor, x_masks: Tensor, x_full: Tensor, x_scales: Tensor, x_shape: list[int],
                     w_signs: Tensor, w_masks: Tensor, w_full: Tensor, w_scales: Tensor, w_shape: list[int],
                     panel_names: str, panels: list[Optional[Tensor]], permuted: bool,
                     backend: str, variant: str | None) -> Tensor:
    """:func:`hbnn.kernels.binary_linear` of packed planes ``x`` (``(..., K)``) and a weight ``(O, K)``."""
    x = as_planes(x_signs, x_masks, x_full, x_scales, x_shape)
    w = as_weight(w_signs, w_masks, w_full, w_scales, w_shape, panel_names, panels, permuted)
    return binary_linear(x, w, backend=backend, variant=variant).contiguous()


@binary_linear_op.register_fake
def _(x_signs, x_masks, x_full, x_scales, x_shape, w_signs, w_masks, w_full, w_scales, w_shape, panel_names, panels,
      permuted, backend, variant):
    return x_signs.new_empty((*x_shape[:-1], w_shape[0]), dtype=torch.float32)


# -------------------------------------------------------------------------- binary_conv2d
@torch.library.custom_op("hbnn::binary_conv2d", mutates_args=())
def binary_conv2d_op(x_signs: Tensor, x_masks: Tensor, x_full: Tensor, x_scales: Tensor, x_shape: list[int],
                     w_signs: Tensor, w_masks: Tensor, w_full: Tensor, w_scales: Tensor, w_shape: list[int],
                     panel_names: str, panels: list[Optional[Tensor]], permuted: bool,
                     stride: list[int], padding: list[int], dilation: list[int],
                     backend: str, variant: str | None) -> Tensor:
    """:func:`hbnn.kernels.binary_conv2d` of NHWC planes ``(B, H, W, C)`` and an OHWI weight:
    ``[B, O, OH, OW]`` in channels-last memory (the C kernels' NHWC buffer; the reference's
    result is laid out likewise)."""
    x = as_planes(x_signs, x_masks, x_full, x_scales, x_shape)
    w = as_weight(w_signs, w_masks, w_full, w_scales, w_shape, panel_names, panels, permuted)
    y = binary_conv2d(x, w, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                      backend=backend, variant=variant)
    return y.contiguous(memory_format=torch.channels_last)


@binary_conv2d_op.register_fake
def _(x_signs, x_masks, x_full, x_scales, x_shape, w_signs, w_masks, w_full, w_scales, w_shape, panel_names, panels,
      permuted, stride, padding, dilation, backend, variant):
    b, h, w, _ = x_shape
    o, kh, kw, _ = w_shape
    oh, ow = conv_output_hw(h, w, (kh, kw), stride, padding, dilation)
    return x_signs.new_empty((b, o, oh, ow), dtype=torch.float32).contiguous(memory_format=torch.channels_last)
