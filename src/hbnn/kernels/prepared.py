"""Prepared weights: the GEMM's weight panels, plane statuses and row order, built once.

:func:`prepare_weight` turns a packed weight (``(O, K)`` for linear layers, ``(O, kh, kw, C)``
for convolutions) into a :class:`PreparedWeight` that :func:`hbnn.kernels.binary_linear` /
:func:`hbnn.kernels.binary_conv2d` (and the ``_counts`` variants) accept in place of ``w``;
passing plain planes prepares them on every call instead.  What preparing computes
(``csrc/prep_body.c``):

* 16-row panels ``[plane][panel][word][16]`` of signs and masks (the micro-kernels' layout)
  and each panel row's mask popcount and scale (0 on padding rows);
* the state of every (plane ``i``, row ``o``): absent (mask all zero), full (every entry
  active) or masked;
* a row permutation ``perm`` (panel row ``r`` holds original row ``perm[r]``, -1 = padding):
  when every row is absent or full in every plane (one bitwidth per output channel) rows are
  sorted stably by their set of present planes, so panels are uniform; the GEMM writes panel
  row ``r`` to output column ``perm[r]``, so results never show the permutation;
* the status of every (plane, panel), ``panel_status``: 0 absent (every (i, j) pair with it
  is skipped: its counts are exactly 0), 1 full (no mask reads), 2 masked (dense masked
  micro-kernel), 3 sparse (masked with few nonzero mask words: per-row word lists ``widx`` /
  ``wn`` drive the word-list kernel; rule: ``sum_rows present_words * 2 < 16 * words``).

All of it is independent of the SIMD variant, so one prepared weight serves every variant.
Without C kernels (``$HBNN_KERNELS=off`` or no compiler) only ``planes`` is kept and the
kernels run the pure-torch reference on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hbnn.kernels import _cbackend
from hbnn.kernels.layout import PackedPlanes, pack_bits, unpack_bits
from hbnn.kernels.packing import pack_conv_weight, pack_planes

__all__ = ["PreparedWeight", "prepare_weight", "dense_conv_weight", "dense_taps_ok", "STATUS_NAMES"]

STATUS_NAMES = ("absent", "full", "masked", "sparse")


@dataclass(frozen=True, eq=False)
class PreparedWeight:
    """A weight prepared for the GEMM (see the module docstring); ``panels`` is None without C.

    Attributes:
        planes: the packed weight itself (the reference path and the shape checks read it).
        panels: ``{"ws", "wm", "popw", "wsc", "perm", "wst", "widx", "wn", "permuted"}`` as
            built by ``hbnn_prepare_weight`` (csrc/hbnn_kernels.c), or None; for a conv weight
            with C < 64 and kh*kw > 1 (:attr:`dense`) they are the panels of its dense-tap
            flatten (:func:`dense_conv_weight`), the only layout its convs run on.
    """

    planes: PackedPlanes
    panels: dict | None

    # The packed weight's fields, read through (a PreparedWeight stands in for its planes).
    signs = property(lambda self: self.planes.signs, doc="``planes.signs``")
    masks = property(lambda self: self.planes.masks, doc="``planes.masks``")
    full = property(lambda self: self.planes.full, doc="``planes.full``")
    scales = property(lambda self: self.planes.scales, doc="``planes.scales``")
    shape = property(lambda self: self.planes.shape, doc="logical shape ``(O, K)`` or ``(O, kh, kw, C)``")
    n = property(lambda self: self.planes.n, doc="number of planes")

    @property
    def dense(self) -> bool:
        """Whether the panels are of the dense-tap flatten (a narrow conv, :func:`dense_taps_ok`)."""
        return self.panels is not None and dense_taps_ok(self.planes.shape)

    @property
    def permuted(self) -> bool:
        """Whether the panels hold the rows in a permuted order (undone at the output)."""
        return bool(self.panels and self.panels["permuted"])

    @property
    def perm(self) -> torch.Tensor | None:
        """int64 ``[16 * ceil(O/16)]``: original row of each panel row (-1 = padding), or None."""
        return None if self.panels is None else self.panels["perm"]

    @property
    def panel_status(self) -> torch.Tensor | None:
        """uint8 ``[n, ceil(O/16)]``: 0 absent, 1 full, 2 masked, 3 sparse (:data:`STATUS_NAMES`)."""
        return None if self.panels is None else self.panels["wst"]

    def status_counts(self) -> dict[str, int]:
        """How many (plane, panel) pairs have each status (empty without C panels)."""
        if self.panels is None:
            return {}
        counts = torch.bincount(self.panels["wst"].reshape(-1).to(torch.int64), minlength=4).tolist()
        return dict(zip(STATUS_NAMES, counts))


def _as_planes(w, backend: str) -> PackedPlanes:
    if isinstance(w, PackedPlanes):
        return w
    if isinstance(w, tuple) and len(w) == 3:
        packer = pack_conv_weight if w[0].dim() == 5 else pack_planes
        return packer(*w, backend=backend)
    raise TypeError(f"prepare_weight: expected PackedPlanes or a (signs, masks, scales) tuple, got {type(w).__name__}")


def dense_taps_ok(shape) -> bool:
    """Whether a conv weight of ``shape`` ``(O, kh, kw, C)`` gets dense-tap panels: C < 64, kh*kw > 1."""
    return len(shape) == 4 and shape[3] < 64 and shape[1] * shape[2] > 1


def _dense_words(words: torch.Tensor | None, n: int, o: int, taps: int, c: int) -> torch.Tensor | None:
    """int64 ``[n, O*taps, 1]`` (one word per tap) -> ``[n, O, ceil(taps*C/64)]`` (entry ``t*C + ch``)."""
    if words is None:
        return None
    return pack_bits(unpack_bits(words, c).reshape(n, o, taps * c)).contiguous()


def dense_conv_weight(w: PackedPlanes) -> PackedPlanes:
    """A conv weight ``(O, kh, kw, C)``, C < 64, repacked as its OHWI flatten ``(O, kh*kw*C)``.

    Entry ``k = (ki*kw + kj)*C + c`` of row ``o`` is ``w[o, ki, kj, c]``: the dense-tap order
    of csrc/dense_body.c, so ``sum_k`` over it is the same dot count as over the taps.
    """
    o, kh, kw, c = w.shape
    sw = _dense_words(w.signs, w.n, o, kh * kw, c)
    mw = _dense_words(w.masks, w.n, o, kh * kw, c)
    return PackedPlanes(sw, mw, w.full, w.scales, (o, kh * kw * c))


def prepare_weight(w, *, backend: str = "auto", variant: str | None = None) -> PreparedWeight:
    """Prepare a weight once for repeated :func:`binary_linear` / :func:`binary_conv2d` calls.

    Args:
        w: :class:`PackedPlanes` packed ``(O, K)`` or ``(O, kh, kw, C)``, a
            :class:`PreparedWeight` (returned as is when it has panels), or a bool
            ``(signs, masks, scales)`` triple ``[n, O, K]`` (linear) / ``[n, O, C, kh, kw]`` (conv).
        backend: ``"auto"`` (C panels if the kernels build), ``"c"`` (or raise), ``"torch"`` (planes only).
        variant: the C variant that builds the panels (the result is the same for every variant).

    Returns:
        A :class:`PreparedWeight`.
    """
    if isinstance(w, PreparedWeight):
        if w.panels is not None or backend == "torch":
            return w
        w = w.planes
    planes = _as_planes(w, backend)
    if len(planes.shape) not in (2, 4):
        raise ValueError(f"prepare_weight: w must be packed (O, K) or (O, kh, kw, C), got shape {planes.shape}")
    lib = _cbackend.library(backend)
    if lib is None:
        return PreparedWeight(planes, None)
    # A narrow conv runs on dense taps only (full or masked activations): prepare that layout.
    layout = dense_conv_weight(planes) if dense_taps_ok(planes.shape) else planes
    return PreparedWeight(planes, _cbackend.prepare(lib, layout, variant))
