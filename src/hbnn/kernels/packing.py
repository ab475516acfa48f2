"""Packing planes into the kernels' layout: linear rows, NHWC activations, OHWI weights.

Builds :class:`~hbnn.kernels.layout.PackedPlanes` (the layout, documented in
:mod:`hbnn.kernels.layout`) from bool planes or float activations.

Packing goes through the C kernels when they are available (``backend="auto"``), else
through torch; both give identical words.
"""

from __future__ import annotations

import math

import torch

from hbnn.kernels import _cbackend
from hbnn.kernels.layout import WORD_BITS, PackedPlanes, pack_bits, unpack_bits

__all__ = [
    "pack_planes",
    "pack_conv_input",
    "pack_conv_weight",
    "pack_activations",
    # The layout's word codec, re-exported from hbnn.kernels.layout (hbnn.export.encode reads it here).
    "WORD_BITS",
    "pack_bits",
    "unpack_bits",
]

_MAX_PLANES = 8


def _check_planes(signs: torch.Tensor, masks: torch.Tensor | None, scales: torch.Tensor, what: str) -> None:
    if signs.dtype != torch.bool or signs.dim() < 3:
        raise TypeError(f"{what}: signs must be a bool tensor [n, rows..., K], got {signs.dtype} {list(signs.shape)}")
    if not 1 <= signs.shape[0] <= _MAX_PLANES:
        raise ValueError(f"{what}: number of planes must be in 1..{_MAX_PLANES}, got {signs.shape[0]}")
    if masks is not None and (masks.dtype != torch.bool or masks.shape != signs.shape):
        raise TypeError(f"{what}: masks must be None or bool {list(signs.shape)}, got {masks.dtype} {list(masks.shape)}")
    if scales.dim() not in (1, 2) or scales.shape[0] != signs.shape[0]:
        raise ValueError(f"{what}: scales must be [n] or [n, C] with n={signs.shape[0]}, got {list(scales.shape)}")


def _finish(signs_w, masks_w, full, scales, shape) -> PackedPlanes:
    """Assemble a PackedPlanes (scales ``[n]`` or ``[n, shape[0]]``)."""
    scales = scales.detach().to(torch.float32)
    if scales.dim() == 2 and scales.shape[1] != shape[0]:
        raise ValueError(
            f"scales: per-channel scales must index the first dim (output channel or sample, "
            f"size {shape[0]}), got {list(scales.shape)}; scales along K cannot be factored out of the popcount"
        )
    full = tuple(bool(f) for f in full)
    return PackedPlanes(signs_w, None if all(full) else masks_w, full, scales.contiguous(), tuple(int(s) for s in shape))


def _pack_rows(bits: torch.Tensor, s: int, backend: str) -> torch.Tensor:
    """bool ``[m, K, s]`` -> int64 ``[m * s, ceil(K/64)]`` (rows ``(m, s)``), C or torch."""
    lib = _cbackend.library(backend)
    if lib is not None:
        return _cbackend.pack_u8(lib, bits, s)
    m, k = bits.shape[0], bits.shape[1]
    return pack_bits(bits.reshape(m, k, s).transpose(1, 2)).reshape(m * s, -1)


def _pack_generic(signs, masks, scales, lead: int, k: int, s: int, shape, backend: str) -> PackedPlanes:
    """Pack planes viewed as ``[n, lead, k, s]`` into rows ``(lead, s)`` of ``k`` entries."""
    n = signs.shape[0]
    if masks is not None:
        signs = signs & masks
        full = [bool(masks[i].all()) for i in range(n)]
    else:
        full = [True] * n
    sw = _pack_rows(signs.reshape(n * lead, k, s), s, backend).reshape(n, lead * s, -1)
    mw = None
    if not all(full):
        mw = _pack_rows(masks.reshape(n * lead, k, s), s, backend).reshape(n, lead * s, -1)
    return _finish(sw, mw, full, scales, shape)


def pack_planes(
    signs: torch.Tensor, masks: torch.Tensor | None, scales: torch.Tensor, *, backend: str = "auto"
) -> PackedPlanes:
    """Pack planes ``[n, *shape]`` along the last dim (linear layers: ``[n, rows, K]``).

    Args:
        signs: bool ``[n, *shape]``, True = +1.
        masks: bool ``[n, *shape]`` (True = active) or None (every plane full).
        scales: ``[n]`` or ``[n, shape[0]]``.
        backend: ``"auto"``/``"c"``/``"torch"`` for the packing itself.

    Example:
        >>> p = pack_planes(torch.tensor([[[True, False, True]]]), None, torch.ones(1), backend="torch")
        >>> p.signs.tolist(), p.full
        ([[[5]]], (True,))
    """
    _check_planes(signs, masks, scales, "pack_planes")
    shape = tuple(signs.shape[1:])
    lead = math.prod(shape[:-1])
    return _pack_generic(signs, masks, scales, lead, shape[-1], 1, shape, backend)


def pack_conv_input(
    signs: torch.Tensor, masks: torch.Tensor | None, scales: torch.Tensor, *, backend: str = "auto"
) -> PackedPlanes:
    """Pack NCHW activation planes ``[n, B, C, H, W]`` as NHWC rows: shape ``(B, H, W, C)``.

    ``scales`` is ``[n]`` or ``[n, B]`` (per sample); per-channel activation scales lie
    along K and cannot be factored out of the popcount, so they are rejected.
    """
    _check_planes(signs, masks, scales, "pack_conv_input")
    if signs.dim() != 5:
        raise ValueError(f"pack_conv_input: expected planes [n, B, C, H, W], got {list(signs.shape)}")
    n, b, c, h, w = signs.shape
    return _pack_generic(signs, masks, scales, b, c, h * w, (b, h, w, c), backend)


def pack_conv_weight(
    signs: torch.Tensor, masks: torch.Tensor | None, scales: torch.Tensor, *, backend: str = "auto"
) -> PackedPlanes:
    """Pack OIHW weight planes ``[n, O, C, kh, kw]`` as OHWI rows: shape ``(O, kh, kw, C)``.

    ``scales`` is ``[n]`` or ``[n, O]`` (per output channel).
    """
    _check_planes(signs, masks, scales, "pack_conv_weight")
    if signs.dim() != 5:
        raise ValueError(f"pack_conv_weight: expected planes [n, O, C, kh, kw], got {list(signs.shape)}")
    n, o, c, kh, kw = signs.shape
    return _pack_generic(signs, masks, scales, o, c, kh * kw, (o, kh, kw, c), backend)


def _residual_torch(x: torch.Tensor, bitmap: torch.Tensor | None, scales: torch.Tensor):
    """Planes of ``x`` with fixed scales: ``E_0 = x``, ``s_i = [E > 0]``, ``E -= mu_i s_i`` on ``A_i``."""
    e = x.clone()
    signs, masks = [], []
    for i in range(scales.shape[0]):
        active = torch.ones_like(e, dtype=torch.bool) if bitmap is None or i == 0 else bitmap > i
        pos = e > 0
        mu = scales[i]
        e = torch.where(active, torch.where(pos, e - mu, e + mu), e)
        signs.append(pos & active)
        masks.append(active)
    return torch.stack(signs), torch.stack(masks)


def pack_activations(
    x: torch.Tensor, scales: torch.Tensor, bitmap: torch.Tensor | None = None, *, backend: str = "auto"
) -> PackedPlanes:
    """Binarize float activations with fixed per-tensor scales and pack them in one pass.

    Residual binarization (paper Sec. 3, Eq. 5) with given ``mu_i = scales[i]``:
    ``E_0 = x``; plane ``i`` is active where ``i == 0`` or ``bitmap > i``;
    ``s_i = sign(E_{i-1})`` with ``sign(0) = -1``; ``E_i = E_{i-1} - mu_i s_i`` on active
    entries (float32, as ``hbnn.quant`` computes it).  The C path fuses this with packing.

    Args:
        x: float ``[B, K]`` (linear; shape ``(B, K)``) or ``[B, C, H, W]`` (conv; packed
            NHWC, shape ``(B, H, W, C)``).
        scales: ``[n]`` per-tensor scales (n planes).
        bitmap: per-entry bitwidths of x's shape, or None for n bits everywhere.
        backend: ``"auto"``/``"c"``/``"torch"``.
    """
    if x.dim() not in (2, 4):
        raise ValueError(f"pack_activations: x must be [B, K] or [B, C, H, W], got {list(x.shape)}")
    scales = torch.as_tensor(scales, dtype=torch.float32).detach().reshape(-1).contiguous()
    if not 1 <= scales.numel() <= _MAX_PLANES:
        raise ValueError(f"pack_activations: scales must hold 1..{_MAX_PLANES} per-tensor values, got {scales.numel()}")
    if bitmap is not None and bitmap.shape != x.shape:
        raise ValueError(f"pack_activations: bitmap shape {list(bitmap.shape)} != x shape {list(x.shape)}")
    x = x.detach().to(torch.float32).contiguous()
    b, k = x.shape[0], x.shape[1]
    s = 1 if x.dim() == 2 else x.shape[2] * x.shape[3]
    shape = (b, k) if x.dim() == 2 else (b, x.shape[2], x.shape[3], k)
    lib = _cbackend.library(backend)
    if lib is not None:
        bm = None if bitmap is None else bitmap.to(torch.int8).contiguous()
        sw, mw, counts = _cbackend.pack_residual(lib, x, bm, b, k, s, scales, need_masks=bitmap is not None)
        full = [c == b * k * s for c in counts]
        return _finish(sw, mw, full, scales, shape)
    signs, masks = _residual_torch(x, bitmap, scales)
    return _pack_generic(signs, masks if bitmap is not None else None, scales, b, k, s, shape, "torch")
