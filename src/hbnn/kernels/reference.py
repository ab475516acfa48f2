"""Pure-torch reference bit-serial kernels: the ground truth every fast kernel must match.

For weight planes ``(s_w_i, m_w_i, a_w_i)`` (rows ``o``) and activation planes
``(s_x_j, m_x_j, a_x_j)`` (rows ``b``), packed along K (see :mod:`hbnn.kernels.layout`),
the per-pair dot count is

    c_ij[b, o] = sum_k m_w_i[o,k] m_x_j[b,k] (+1 if s_w_i == s_x_j else -1)
               = popcount(m_w & m_x) - 2 popcount((s_w ^ s_x) & m_w & m_x)

(pad bits are zero, so they never count), and the layer output is

    y[b, o] = sum_i sum_j a_w_i[o] * a_x_j[b] * c_ij[b, o] = (x_hat @ w_hat.T)[b, o]

accumulated in float32 in the fixed order ``y = 0; for i: for j: y = y + (a_w * a_x) * c``
(:func:`combine_counts`); the C kernels use the same order, so their float outputs are
bit-identical, not merely close.

Convolution: the reference unfolds the unpacked ±1 planes and masks with ``F.unfold``
(zero padding -> inactive in every plane, so padded positions contribute nothing, as
``F.conv2d`` on ``x_hat`` with zero padding), packs the unfolded rows and runs the linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hbnn.kernels.layout import PackedPlanes, valid_words
from hbnn.kernels.packing import pack_planes

__all__ = [
    "popcount64",
    "binary_linear_counts_ref",
    "combine_counts",
    "binary_linear_ref",
    "conv_output_hw",
    "conv_args",
    "im2col_planes",
    "conv_weight_rows",
    "binary_conv2d_counts_ref",
    "binary_conv2d_ref",
]

_CHUNK_ELEMS = 1 << 20


def popcount64(words: torch.Tensor) -> torch.Tensor:
    """Popcount of each int64 (two's complement, all 64 bits) as int64, SWAR in torch."""
    v = words - ((words >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    v = v + (v >> 32)
    return v & 0x7F


def _masks_or_valid(p: PackedPlanes) -> torch.Tensor:
    """Masks with full planes materialised as valid-bit rows: int64 ``[n, R, W]``."""
    valid = valid_words(p.k).expand(p.rows, -1)
    planes = [valid if p.full[i] or p.masks is None else p.masks[i] for i in range(p.n)]
    return torch.stack(planes)


def binary_linear_counts_ref(x: PackedPlanes, w: PackedPlanes) -> torch.Tensor:
    """Exact integer dot counts ``c[i, j, b, o]`` (int32 ``[nw, nx, R_x, R_w]``) by the general formula."""
    _check_linear(x, w)
    mx, mw = _masks_or_valid(x), _masks_or_valid(w)
    rows, o, words = x.rows, w.rows, x.signs.shape[-1]
    out = torch.empty(w.n, x.n, rows, o, dtype=torch.int32)
    step = max(1, _CHUNK_ELEMS // max(1, o * words))
    for i in range(w.n):
        for j in range(x.n):
            for b0 in range(0, rows, step):
                sl = slice(b0, b0 + step)
                both = mx[j, sl, None, :] & mw[i, None, :, :]
                diff = (x.signs[j, sl, None, :] ^ w.signs[i, None, :, :]) & both
                out[i, j, sl] = (popcount64(both).sum(-1) - 2 * popcount64(diff).sum(-1)).to(torch.int32)
    return out


def _row_scales(p: PackedPlanes, rows: int, rows_per_scale: int) -> torch.Tensor:
    """Scales as ``[n, rows]`` (per tensor broadcast, or per ``shape[0]`` index repeated)."""
    if p.per_row_scales:
        return p.scales.repeat_interleave(rows_per_scale, dim=1)
    return p.scales[:, None].expand(p.n, rows)


def combine_counts(counts: torch.Tensor, x_scales: torch.Tensor, w_scales: torch.Tensor) -> torch.Tensor:
    """``y[b, o] = sum_i sum_j (a_w_i[o] * a_x_j[b]) * c[i, j, b, o]`` in float32, fixed order.

    Args:
        counts: int ``[nw, nx, R, O]``.
        x_scales: float32 ``[nx, R]``.
        w_scales: float32 ``[nw, O]``.
    """
    nw, nx, rows, o = counts.shape
    y = torch.zeros(rows, o, dtype=torch.float32)
    for i in range(nw):
        for j in range(nx):
            y = y + (w_scales[i][None, :] * x_scales[j][:, None]) * counts[i, j].to(torch.float32)
    return y


def binary_linear_ref(x: PackedPlanes, w: PackedPlanes) -> torch.Tensor:
    """Reference binary linear: ``x_hat @ w_hat.T`` from packed planes, float32 ``[*x.shape[:-1], O]``."""
    counts = binary_linear_counts_ref(x, w)
    xs = _row_scales(x, x.rows, x.rows // x.shape[0])
    ws = _row_scales(w, w.rows, 1)
    return combine_counts(counts, xs, ws).reshape(*x.shape[:-1], w.rows)


def _check_linear(x: PackedPlanes, w: PackedPlanes) -> None:
    if x.k != w.k:
        raise ValueError(f"binary_linear: x has K={x.k} entries per row but w has K={w.k}")
    if len(w.shape) != 2:
        raise ValueError(f"binary_linear: weights must be packed as (O, K), got shape {w.shape}")


def conv_output_hw(h: int, w: int, kernel: tuple[int, int], stride, padding, dilation) -> tuple[int, int]:
    """Output size of ``F.conv2d`` for an ``h x w`` input."""
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def im2col_planes(x: PackedPlanes, kernel, stride, padding, dilation) -> PackedPlanes:
    """Unfold NHWC activation planes into rows ``(b, oy, ox)`` of ``C*kh*kw`` entries (``F.unfold`` order).

    Padded positions are inactive in every plane; per-sample scales are kept per sample.
    """
    b, h, w, c = x.shape
    signs, masks, scales = x.unpack()
    args = dict(kernel_size=kernel, dilation=dilation, padding=padding, stride=stride)
    s = F.unfold(signs.permute(0, 1, 4, 2, 3).reshape(x.n * b, c, h, w).float(), **args)
    m = F.unfold(masks.permute(0, 1, 4, 2, 3).reshape(x.n * b, c, h, w).float(), **args)
    length = s.shape[-1]
    to_rows = lambda t: t.reshape(x.n, b, c * kernel[0] * kernel[1], length).transpose(2, 3).reshape(  # noqa: E731
        x.n, b * length, -1
    )
    packed = pack_planes(to_rows(s) > 0.5, to_rows(m) > 0.5, torch.ones(x.n), backend="torch")
    row_scales = scales if scales.dim() == 1 else scales.repeat_interleave(length, dim=1)
    return PackedPlanes(packed.signs, packed.masks, packed.full, row_scales.contiguous(), (b * length, packed.k))


def conv_weight_rows(w: PackedPlanes) -> PackedPlanes:
    """OHWI weight planes as rows ``o`` of ``C*kh*kw`` entries in ``F.unfold``'s ``(c, kh, kw)`` order."""
    o, kh, kw, c = w.shape
    signs, masks, scales = w.unpack()
    flat = lambda t: t.permute(0, 1, 4, 2, 3).reshape(w.n, o, c * kh * kw)  # noqa: E731
    return pack_planes(flat(signs), flat(masks), scales, backend="torch")


def conv_args(x: PackedPlanes, w: PackedPlanes, stride, padding, dilation):
    """Check that ``x`` is packed ``(B, H, W, C)`` and ``w`` ``(O, kh, kw, C)``; return the int pairs
    ``(stride, padding, dilation)``."""
    pair = lambda v: (int(v), int(v)) if isinstance(v, int) else tuple(int(t) for t in v)  # noqa: E731
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise ValueError(f"binary_conv2d: expected x packed (B, H, W, C) and w (O, kh, kw, C), got {x.shape} and {w.shape}")
    if x.shape[3] != w.shape[3]:
        raise ValueError(f"binary_conv2d: x has C={x.shape[3]} channels but w expects {w.shape[3]}")
    return pair(stride), pair(padding), pair(dilation)


def binary_conv2d_counts_ref(x: PackedPlanes, w: PackedPlanes, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Exact integer dot counts of a binary conv: int32 ``[nw, nx, B*OH*OW, O]`` (rows ``(b, oy, ox)``)."""
    stride, padding, dilation = conv_args(x, w, stride, padding, dilation)
    cols = im2col_planes(x, w.shape[1:3], stride, padding, dilation)
    return binary_linear_counts_ref(cols, conv_weight_rows(w))


def binary_conv2d_ref(x: PackedPlanes, w: PackedPlanes, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Reference binary conv: ``F.conv2d(x_hat, w_hat)`` from packed planes, float32 ``[B, O, OH, OW]``."""
    stride, padding, dilation = conv_args(x, w, stride, padding, dilation)
    b, h, wd, _ = x.shape
    oh, ow = conv_output_hw(h, wd, w.shape[1:3], stride, padding, dilation)
    counts = binary_conv2d_counts_ref(x, w, stride, padding, dilation)
    xs = _row_scales(x, b * oh * ow, oh * ow)
    ws = _row_scales(w, w.shape[0], 1)
    return combine_counts(counts, xs, ws).reshape(b, oh, ow, -1).permute(0, 3, 1, 2)
