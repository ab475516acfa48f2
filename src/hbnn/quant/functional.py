"""Residual binarization, homogeneous (Eq. 4) and heterogeneous (Eq. 5).

With ``E_0 = x`` and a bit map ``M`` (``M = n`` everywhere for the homogeneous case), for
bit ``i = 1..max(M)`` and the active set ``A_i = {j : M_j >= i}``::

    s_i  = sign(E_{i-1})            (sign(0) = -1)
    mu_i = mean(|E_{i-1, j}|, j in A_i)
    E_i  = E_{i-1} - mu_i * s_i     on A_i, unchanged elsewhere
    x_hat = sum_i mu_i * s_i * 1{j in A_i}

Stored as planes (signs ``s_i > 0``, masks ``1{A_i}``, scales ``mu_i``), :func:`dequantize_planes`
rebuilds ``x_hat`` with the same per-plane term and summation order as the loop.
Per-channel scales take the mean over ``A_i`` within each slice of ``channel_dim``.
Gradients use the clipped straight-through estimator ``d x_hat / d x = 1{|x| <= 1}``
with the scales treated as constants (:class:`hbnn.quant.ste.ClippedSTE`: ``x_hat`` is computed
on ``x.detach()`` and joined to ``x``; only tensors cross, so every binarizer traces).

Numerics (finite in, finite out). The loop runs in ``x``'s precision (float16/bfloat16 in
float32) on ``x * 2^-k``, with the power of two from :func:`range_scale` such that
``max|x| * (N + 2) * 2^-k < finfo.max / 4`` (``N`` entries summed per mean); ``x_hat`` and
the scales are multiplied back by ``2^k`` and ``x_hat`` is saturated to
``[-finfo(x.dtype).max, finfo(x.dtype).max]``. The bounds ``|E_i| <= max|x|`` (as
``mu_i <= max|E_{i-1}|``), ``sum |E| <= N max|x|`` and ``|x_hat| <= 2 max|x|`` keep every
intermediate finite (with fixed scales ``mu``, ``max(max|x|, max mu) * (n + 2)`` bounds them
instead). ``k = 0`` whenever ``max|x| * 2^ceil(log2(N + 2)) < 2^L``, ``L`` = 125 in float32
(``4.2e37``; ``max|x| < 4e31`` for a million entries), 1021 in float64. Scaling by a power
of two is exact, hence

* ``k = 0`` — all ordinary data, by the bound above — runs the unscaled loop: the same operations in the same order, the
  same bits as without the scaling (multiplying by ``2^0`` is the identity);
* ``k > 0`` gives the loop's result as if the exponent range were unbounded, up to the
  rounding of entries below ``2^k`` times the smallest normal number (negligible in every
  sum; signs of plane 1 are taken from the unscaled ``x``), then rounded to the dtype with
  saturation: ``x_hat = x - E_n`` can exceed the largest finite value (e.g. ``[max, -max,
  0]`` with 2 bits), and the nearest finite value is the clamp. A scale ``mu_i`` is a mean
  of magnitudes ``<= max|x|`` and is capped at the work dtype's largest finite value.

No data-dependent Python branch: ``k`` is a tensor, so the normal path costs one
``aminmax``, one product and one clamp more and never synchronizes a device.
"""

from __future__ import annotations

import math

import torch

from hbnn.quant.checks import check_bitmap, check_float_tensor
from hbnn.quant.mix import MAX_BITS, MIN_BITS, BitMix
from hbnn.quant.ste import clipped_ste

__all__ = [
    "residual_binarize",
    "hetero_binarize",
    "binarize_planes",
    "binarize_with_scales",
    "residual_forward",
    "plane_term",
    "dequantize_planes",
    "broadcast_scale",
    "range_scale",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _masked_mean(values: torch.Tensor, active: torch.Tensor | None, channel_dim: int | None) -> torch.Tensor:
    """Mean of ``values`` over active entries, per tensor or per slice of ``channel_dim``.

    Empty active sets give 0 (never NaN), so an all-zero tensor binarizes to zeros. A 1-d
    tensor with ``channel_dim=0`` has one entry per channel (its mean is the entry itself).
    """
    if active is not None:
        values = values * active
    if channel_dim is None:
        if active is None:
            return values.mean()
        return values.sum() / active.sum().clamp_min(1)
    dims = [d for d in range(values.dim()) if d != channel_dim % values.dim()]
    if not dims:  # torch reads sum(dim=[]) as "all dims"; here each slice is a single entry
        return values  # (inactive entries are already 0: an empty set's mean)
    sums = values.sum(dim=dims, keepdim=True)
    if active is None:
        count = values.numel() // values.shape[channel_dim]
        return sums / max(count, 1)
    counts = active.sum(dim=dims, keepdim=True).clamp_min(1)
    return sums / counts


def residual_forward(
    x: torch.Tensor,
    bitmap: torch.Tensor | None,
    n_bits: int,
    channel_dim: int | None = None,
    scales: torch.Tensor | None = None,
    keep_planes: bool = False,
):
    """The residual loop itself (no autograd, no argument checks).

    Args:
        x: input (float16/bfloat16 are computed in float32 and cast back).
        bitmap: per-entry bitwidths, or ``None`` for ``n_bits`` everywhere.
        n_bits: number of planes (``max(bitmap)``).
        channel_dim: per-channel scales along this dim, or ``None`` for per-tensor.
        scales: fixed scales ``[n_bits]`` (or ``[n_bits, C]``) to use instead of the means
            (inference with running estimates).
        keep_planes: also return the planes.

    Returns:
        ``(x_hat, scales)`` or, with ``keep_planes``, ``(x_hat, scales, signs, masks)`` where
        ``scales`` has shape ``[n_bits]`` or ``[n_bits, C]``.
    """
    work = x.float() if x.dtype in _LOW_PRECISION else x
    cap = torch.finfo(work.dtype).max
    if scales is None:
        down, up = range_scale(_max_abs(work), work.numel() + 2)
    else:
        bound = torch.maximum(_max_abs(work), scales.detach().abs().amax().to(work))
        down, up = range_scale(bound, n_bits + 2)
    residual = work * down
    out = torch.zeros_like(work)
    mus, signs, masks = [], [], []
    for i in range(n_bits):
        active = None if bitmap is None or i == 0 else bitmap > i
        if scales is None:
            mu = _masked_mean(residual.abs(), active, channel_dim)
        else:
            mu = broadcast_scale(scales[i], work, channel_dim) * down
        mu = torch.minimum(mu, cap * down)
        positive = (work if i == 0 else residual) > 0  # sign(0) = -1; plane 1 from the unscaled x
        step = plane_term(positive, active, mu)
        out += step
        residual -= step
        mus.append(mu.reshape(-1) if channel_dim is not None else mu.reshape(()))
        if keep_planes:
            signs.append(positive)
            masks.append(torch.ones_like(positive) if active is None else active)
    stacked = torch.stack(mus) * up
    result = _saturate(out.mul_(up), x.dtype).to(x.dtype)
    if keep_planes:
        return result, stacked, torch.stack(signs), torch.stack(masks)
    return result, stacked


def _max_abs(t: torch.Tensor) -> torch.Tensor:
    """``max |t|`` as a 0-dim tensor (one pass, no temporary)."""
    low, high = torch.aminmax(t)
    return torch.maximum(-low, high)


def _saturate(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Clamp ``t`` in place to ``dtype``'s finite range (round-to-nearest with saturation)."""
    cap = torch.finfo(dtype).max
    return t.clamp_(-cap, cap)


def range_scale(magnitude: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Powers of two ``(2^-k, 2^k)`` that keep ``count`` summed magnitudes inside the dtype.

    With ``magnitude < 2^e`` (:func:`torch.frexp`), ``count <= 2^p`` and ``2^L <= finfo.max / 4``
    (``L = emax - 3``: 125 for float32, 1021 for float64), ``k = max(0, e + p - L)``, so
    ``magnitude * count * 2^-k < 2^L``. Computed from exponents as tensors: no Python branch
    on the data. ``k = 0`` (both factors exactly 1) whenever ``magnitude < 2^(L - p)``.

    Args:
        magnitude: 0-dim non-negative finite tensor, the largest magnitude involved.
        count: how many such magnitudes a sum may add (>= 1).

    Returns:
        ``(down, up)``, 0-dim tensors of ``magnitude``'s dtype and device.
    """
    limit = math.frexp(torch.finfo(magnitude.dtype).max)[1] - 3
    bits = _count_bits(count, magnitude.device)
    if torch.jit.is_tracing():  # frexp and ldexp have no ONNX operators; powers of two are exact in pow
        k = _counted_excess(magnitude, bits, limit).to(magnitude.dtype)
        two = torch.full((), 2.0, dtype=magnitude.dtype, device=magnitude.device)
        return two.pow(-k), two.pow(k)
    _, exponent = torch.frexp(magnitude)
    k = (exponent + bits - limit).clamp_min(0)
    one = torch.ones((), dtype=magnitude.dtype, device=magnitude.device)
    return torch.ldexp(one, -k), torch.ldexp(one, k)


def _count_bits(count, device) -> int | torch.Tensor:
    """``p = bit_length(count - 1)`` (the least ``p`` with ``count <= 2^p``; 0 for ``count <= 1``).

    Under ``torch.compile`` it is a 0-dim int32 tensor, the exponent of :func:`torch.frexp` of
    ``count - 1`` in float64 (exact: counts stay below ``2^53``), so a symbolic ``count`` (a
    batch dim marked dynamic) is not specialized to its value; otherwise a Python int.
    """
    if not torch.compiler.is_compiling():  # (under dynamo a SymInt passes isinstance(count, int))
        return (max(count, 1) - 1).bit_length()
    below = torch.sym_max(count, 1) - 1
    return torch.frexp(torch.scalar_tensor(below, dtype=torch.float64, device=device))[1]


def _counted_excess(magnitude: torch.Tensor, p: int, limit: int) -> torch.Tensor:
    """``k = max(0, e + p - L)`` without ``frexp`` (which has no ONNX operator), for ``torch.jit.trace``.

    ``e >= t`` exactly when ``magnitude >= 2^(t - 1)``, so ``k = #{j = 1..p + 3 : magnitude >=
    2^(L - p + j - 1)}`` (a finite magnitude has ``e <= L + 3``): the same int32 ``k``.
    """
    edges = torch.tensor([2.0 ** (limit - p + j - 1) for j in range(1, p + 4)], dtype=magnitude.dtype,
                         device=magnitude.device)
    return (magnitude >= edges).sum(dtype=torch.int32)


def plane_term(sign: torch.Tensor, mask: torch.Tensor | None, mu: torch.Tensor) -> torch.Tensor:
    """One plane's share of Eq. 5: ``mu_i * where(s_i, +1, -1) * 1{A_i}`` (a new tensor).

    Args:
        sign: bool, True = +1.
        mask: bool active set ``A_i``, or ``None`` for all entries.
        mu: the plane's scale, broadcastable to ``sign`` (0-dim, or per channel).
    """
    step = torch.where(sign, mu, -mu)
    if mask is not None:
        step *= mask
    return step


def dequantize_planes(signs: torch.Tensor, masks: torch.Tensor, scales: torch.Tensor,
                      channel_dim: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Eq. 5 from stored planes: ``x_hat = sum_i scales_i * where(signs_i, +1, -1) * masks_i``.

    The planes are summed in order into zeros with :func:`plane_term`, the float arithmetic
    of :func:`residual_forward` (scaled by the same kind of power of two, :func:`range_scale`
    with ``max|scales|`` and ``n + 2``, and saturated), so the result equals the ``x_hat`` the
    planes came from bit for bit (the inverse of :func:`binarize_planes`).

    Args:
        signs, masks: bool ``[n, *shape]`` (True = +1; active entries of plane ``i``).
        scales: ``[n]`` (per tensor) or ``[n, C]`` (per channel along ``channel_dim``).
        channel_dim: the dim of ``shape`` that 2-d scales run along (default 0: output channels).
        dtype: the result's dtype, saturated to its finite range (default ``scales.dtype``;
            pass ``x.dtype`` for float16/bfloat16 sources, whose scales are float32).

    Returns:
        ``x_hat`` of ``shape``, summed in ``scales``'s dtype.
    """
    if scales.dim() not in (1, 2) or scales.shape[0] != signs.shape[0]:
        raise ValueError(f"scales: expected [{signs.shape[0]}] or [{signs.shape[0]}, C], got {list(scales.shape)}")
    out = torch.zeros(signs.shape[1:], dtype=scales.dtype, device=scales.device)
    down, up = range_scale(_max_abs(scales), signs.shape[0] + 2)
    for i in range(signs.shape[0]):
        mu = broadcast_scale(scales[i] * down, out, None if scales.dim() == 1 else channel_dim)
        out += plane_term(signs[i], masks[i], mu)
    dtype = scales.dtype if dtype is None else dtype
    return _saturate(out.mul_(up), dtype).to(dtype)


def broadcast_scale(mu: torch.Tensor, like: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
    """``mu`` in ``like``'s dtype, shaped to multiply ``like``: as is (``channel_dim=None``), or
    a per-channel vector ``[C]`` viewed as ``[1, .., C, .., 1]`` along ``channel_dim``."""
    mu = mu.to(like.dtype)
    if channel_dim is None:
        return mu
    shape = [1] * like.dim()
    shape[channel_dim] = -1
    return mu.reshape(shape)


def _check_channel_dim(x: torch.Tensor, channel_dim: int | None) -> int | None:
    if channel_dim is None:
        return None
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or not -x.dim() <= channel_dim < x.dim():
        raise ValueError(f"channel_dim: expected None or an int in [{-x.dim()}, {x.dim() - 1}], got {channel_dim!r}")
    return channel_dim % x.dim()


def residual_binarize(x: torch.Tensor, bits: int, channel_dim: int | None = None) -> torch.Tensor:
    """Homogeneous ``bits``-bit residual binarization (the paper's Eq. 4), differentiable.

    Example:
        >>> residual_binarize(torch.tensor([-2.0, -1.0, 1.0, 2.0]), 1)
        tensor([-1.5000, -1.5000,  1.5000,  1.5000])
    """
    check_float_tensor(x)
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    channel_dim = _check_channel_dim(x, channel_dim)
    return clipped_ste(x, residual_forward(x.detach(), None, bits, channel_dim)[0])


def hetero_binarize(
    x: torch.Tensor, bitmap: torch.Tensor, channel_dim: int | None = None, mix: "BitMix | None" = None
) -> torch.Tensor:
    """Heterogeneous residual binarization (the paper's Eq. 5), differentiable.

    Bit ``i``'s scale is the mean ``|residual|`` over the entries whose bitmap value is
    ``>= i``; entries with fewer bits are left alone from then on.

    Args:
        x: a non-empty, finite floating-point tensor.
        bitmap: integer tensor of x's shape, values in 1..8 (e.g. from :func:`make_bitmap`).
        channel_dim: per-channel scales along this dim (default: one scale per bit).
        mix: if given, the bitmap's values must be bitwidths of this mix.

    Example:
        >>> x = torch.tensor([1.0, -3.0, 2.0, -6.0])
        >>> hetero_binarize(x, torch.tensor([1, 1, 2, 2]))  # mu_1 = 3, mu_2 = mean(|-1|, |-3|) = 2
        tensor([ 3., -3.,  1., -5.])
    """
    check_float_tensor(x)
    check_bitmap(bitmap, x, None if mix is None else BitMix.coerce(mix).bits)
    channel_dim = _check_channel_dim(x, channel_dim)
    bitmap = bitmap.to(x.device)
    n_bits = int(bitmap.max())
    return clipped_ste(x, residual_forward(x.detach(), bitmap, n_bits, channel_dim)[0])


def binarize_planes(x: torch.Tensor, bitmap: torch.Tensor, channel_dim: int | None = None):
    """The bit planes of Eq. 5, as a packed exporter needs them.

    Returns:
        ``(signs, masks, scales)``: ``signs`` bool ``[n, *x.shape]`` (True = +1), ``masks`` bool
        ``[n, *x.shape]`` (``bitmap >= i + 1``), ``scales`` ``[n]`` or ``[n, C]``, such that
        ``hetero_binarize(x, bitmap) == dequantize_planes(signs, masks, scales, channel_dim)``
        (``sum_i scales_i * where(signs_i, 1, -1) * masks_i``).
    """
    check_float_tensor(x)
    check_bitmap(bitmap, x)
    channel_dim = _check_channel_dim(x, channel_dim)
    with torch.no_grad():
        _, scales, signs, masks = residual_forward(
            x.detach(), bitmap.to(x.device), int(bitmap.max()), channel_dim, keep_planes=True
        )
    return signs, masks, scales


def binarize_with_scales(
    x: torch.Tensor, bitmap: torch.Tensor | None, scales: torch.Tensor, channel_dim: int | None = None
) -> torch.Tensor:
    """Residual binarization with given per-bit scales (inference with calibrated estimates).

    Same loop as :func:`hetero_binarize` but ``mu_i = scales[i]``, so the result is an
    elementwise function of ``x`` (no reduction over the batch). Differentiable with the STE.
    """
    n_bits = int(scales.shape[0])  # a Python int also under torch.jit.trace (sizes trace as tensors)
    return clipped_ste(x, residual_forward(x.detach(), bitmap, n_bits, channel_dim, scales=scales.detach())[0])
