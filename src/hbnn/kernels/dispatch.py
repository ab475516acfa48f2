"""The one door to the bit-serial kernels: pick C (SIMD variant chosen at run time) or torch.

``backend="auto"`` uses the C kernels when they build (first call compiles them, see
:mod:`hbnn.kernels._build`) and otherwise the pure-torch reference, after one warning;
``"c"`` insists on C (raises if unavailable); ``"torch"`` always uses the reference.
``$HBNN_KERNELS=off`` makes ``"auto"`` the reference (no compiler is ever run);
``$HBNN_KERNELS=require`` makes a failed build an error (:mod:`hbnn.kernels.toolchain`).
``variant`` (or ``$HBNN_KERNEL_VARIANT``) forces one of ``"portable"``, ``"avx2"``,
``"avx512"``; all variants and the reference give bit-identical counts and float outputs.

Inputs are :class:`~hbnn.kernels.layout.PackedPlanes` or unpacked ``(signs, masks,
scales)`` triples as returned by ``hbnn.quant.binarize_planes`` (packed on the fly); the
weight may also be a :class:`~hbnn.kernels.prepared.PreparedWeight` (panels built once by
:func:`~hbnn.kernels.prepared.prepare_weight`; otherwise they are built on every call).
"""

from __future__ import annotations

import torch

from hbnn.kernels import _build, _cbackend
from hbnn.kernels import reference as ref
from hbnn.kernels.epilogue import Epilogue
from hbnn.kernels.layout import PackedPlanes
from hbnn.kernels.packing import pack_conv_input, pack_conv_weight, pack_planes
from hbnn.kernels.prepared import PreparedWeight, prepare_weight

__all__ = [
    "binary_linear",
    "binary_linear_counts",
    "binary_conv2d",
    "binary_conv2d_counts",
    "available_backends",
    "cpu_features",
]

Planes = PackedPlanes | tuple
Weight = PackedPlanes | PreparedWeight | tuple


def _as_packed(p: Planes, packer, what: str, backend: str) -> PackedPlanes:
    if isinstance(p, PackedPlanes):
        return p
    if isinstance(p, tuple) and len(p) == 3:
        return packer(*p, backend=backend)
    raise TypeError(f"{what}: expected PackedPlanes or a (signs, masks, scales) tuple, got {type(p).__name__}")


def _as_weight(w: Weight, packer, what: str, backend: str) -> PreparedWeight:
    """The weight as a PreparedWeight (planes only when C is not used: the reference reads them)."""
    if isinstance(w, PreparedWeight):
        return w
    return PreparedWeight(_as_packed(w, packer, what, backend), None)


def _check_out(out: torch.Tensor | None, numel: int, what: str) -> None:
    """ValueError unless ``out`` is None or a contiguous float32 CPU tensor of ``numel`` elements."""
    if out is None:
        return
    if out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous() or out.numel() != numel:
        raise ValueError(f"{what}: out must be a contiguous float32 CPU tensor of {numel} elements, got "
                         f"{out.dtype} {list(out.shape)} on {out.device}")


def _into(out: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """``y`` (a fresh [R, O] result of the reference) written into ``out`` when given."""
    return y if out is None else out.view(y.shape).copy_(y)


def _epilogue_args(epi: Epilogue | None, rows: torch.Tensor | None, out: torch.Tensor | None) -> dict:
    """The C kernel's epilogue arguments: contiguous ``bias``, the residual as contiguous
    ``[R, O]`` rows (``rows``: a view of it in the kernel's row order, copied if needed) and
    ``clamp``; ValueError if the residual shares memory with ``out``."""
    if epi is None or epi.empty:
        return {}
    res = None if rows is None else rows.contiguous()
    if res is not None and out is not None and res.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
        raise ValueError("epilogue: the residual must not share memory with out")
    bias = None if epi.bias is None else epi.bias.contiguous()
    return {"bias": bias, "residual": res, "clamp": epi.clamp}


def _run(lib, x: PackedPlanes, pw: PreparedWeight, geom, channels: int, counts: bool, variant, out=None, epi=None):
    if pw.panels is None:  # planes given per call (or prepared without C): build the panels now
        pw = prepare_weight(pw.planes, backend="c", variant=variant)
    # Narrow conv: dense taps (kh*kw*C bits, masks likewise, in ceil(kh*kw*C/64) words).
    return _cbackend.gemm(lib, x, pw.planes, pw.panels, geom, channels, want_y=not counts, want_counts=counts,
                          variant=variant, dense=pw.dense, out=out, **(epi or {}))


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(e, int) for e in t):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def _linear(x: Planes, w: Weight, backend: str, variant: str | None, counts: bool, out=None,
            epilogue: Epilogue | None = None) -> torch.Tensor:
    x = _as_packed(x, pack_planes, "binary_linear: x", backend)
    pw = _as_weight(w, pack_planes, "binary_linear: w", backend)
    w = pw.planes
    if len(w.shape) != 2:
        raise ValueError(f"binary_linear: w must be packed as (O, K), got shape {w.shape}")
    if x.k != w.k:
        raise ValueError(f"binary_linear: x has K={x.k} entries per row but w has K={w.k}")
    _check_out(out, x.rows * w.shape[0], "binary_linear")
    if epilogue is not None:
        epilogue.check((*x.shape[:-1], w.shape[0]), w.shape[0], "binary_linear")
    lib = _cbackend.library(backend)
    if lib is None:
        if counts:
            return ref.binary_linear_counts_ref(x, w)
        y = _into(out, ref.binary_linear_ref(x, w))
        return y if epilogue is None else epilogue.apply_(y, -1)
    rows, lead = x.rows, x.shape[:-1]
    # A linear layer is a 1x1 conv on 1x1 images; per-row x scales index shape[0].
    geom = _cbackend.ConvGeometry(B=rows, H=1, W=1)
    if x.per_row_scales and rows != x.shape[0]:
        x = PackedPlanes(x.signs, x.masks, x.full, x.scales.repeat_interleave(rows // x.shape[0], dim=1),
                         (rows, x.k))
    res = None if epilogue is None or epilogue.residual is None else epilogue.residual.reshape(rows, w.shape[0])
    y, c, _ = _run(lib, x, pw, geom, x.k, counts, variant, out, _epilogue_args(epilogue, res, out))
    return c if counts else y.reshape(*lead, w.shape[0])


def binary_linear(x: Planes, w: Weight, *, backend: str = "auto", variant: str | None = None,
                  out: torch.Tensor | None = None, epilogue: Epilogue | None = None) -> torch.Tensor:
    """Binary linear layer ``y = x_hat @ w_hat.T`` by xnor/and-popcount over bit planes.

    ``y[b, o] = sum_i sum_j a_w_i[o] a_x_j[b] sum_k m_w_i m_x_j (+-1)`` (see :mod:`reference`).

    Args:
        x: activation planes, shape ``(..., K)``; scales ``[n]`` or ``[n, shape[0]]``.
        w: weight planes, shape ``(O, K)``; scales ``[n]`` or ``[n, O]``; or a
            :class:`~hbnn.kernels.prepared.PreparedWeight` of them.
        backend: ``"auto"``, ``"c"`` or ``"torch"``.
        variant: force a C variant (``"portable"``, ``"avx2"``, ``"avx512"``).
        out: optional contiguous float32 buffer of ``rows * O`` elements to write into (the
            result is then a view of it): lets a caller reuse memory across calls.
        epilogue: optional :class:`~hbnn.kernels.epilogue.Epilogue` (bias ``[O]``, residual
            ``[..., O]``, clamp) applied before the store, bit-identical to applying it after.

    Returns:
        float32 ``[..., O]``.
    """
    return _linear(x, w, backend, variant, counts=False, out=out, epilogue=epilogue)


def binary_linear_counts(x: Planes, w: Weight, *, backend: str = "auto", variant: str | None = None) -> torch.Tensor:
    """Integer dot counts ``c[i, j, b, o]`` of :func:`binary_linear`: int32 ``[nw, nx, R, O]``."""
    return _linear(x, w, backend, variant, counts=True)


def _conv(x, w, stride, padding, dilation, backend, variant, counts, out=None, epilogue=None):
    x = _as_packed(x, pack_conv_input, "binary_conv2d: x", backend)
    pw = _as_weight(w, pack_conv_weight, "binary_conv2d: w", backend)
    w = pw.planes
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"binary_conv2d: need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    ref.conv_args(x, w, stride, padding, dilation)
    b, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    oh, ow = ref.conv_output_hw(h, wd, (kh, kw), stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(f"binary_conv2d: kernel {kh}x{kw} does not fit the padded {h}x{wd} input")
    _check_out(out, b * oh * ow * o, "binary_conv2d")
    if epilogue is not None:
        epilogue.check((b, o, oh, ow), o, "binary_conv2d")
    lib = _cbackend.library(backend)
    if lib is None:
        if counts:
            return ref.binary_conv2d_counts_ref(x, w, stride, padding, dilation)
        y = ref.binary_conv2d_ref(x, w, stride, padding, dilation)
        y = y if out is None else _into(out, y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return y if epilogue is None else epilogue.apply_(y, 1)
    geom = _cbackend.ConvGeometry(b, h, wd, kh, kw, *stride, *padding, *dilation)
    res = None if epilogue is None or epilogue.residual is None else epilogue.residual.permute(0, 2, 3, 1)
    y, cnt, _ = _run(lib, x, pw, geom, c, counts, variant, out, _epilogue_args(epilogue, res, out))
    return cnt if counts else y.reshape(b, oh, ow, o).permute(0, 3, 1, 2)


def binary_conv2d(
    x: Planes, w: Weight, *, stride=1, padding=0, dilation=1, backend: str = "auto", variant: str | None = None,
    out: torch.Tensor | None = None, epilogue: Epilogue | None = None,
) -> torch.Tensor:
    """Binary 2-d convolution ``F.conv2d(x_hat, w_hat, stride, padding, dilation)``.

    Implicit GEMM over packed NHWC activations and OHWI weights (no im2col buffer). Zero
    padding of ``x_hat`` is not a ±1 value: padded positions are inactive in every plane,
    so they contribute 0 exactly as in ``F.conv2d``.

    Args:
        x: planes packed ``(B, H, W, C)`` (:func:`pack_conv_input`/:func:`pack_activations`)
            or an NCHW ``(signs, masks, scales)`` triple ``[n, B, C, H, W]``.
        w: planes packed ``(O, kh, kw, C)`` (:func:`pack_conv_weight`), an OIHW triple, or a
            :class:`~hbnn.kernels.prepared.PreparedWeight`.
        stride, padding, dilation: as ``F.conv2d`` (groups = 1).
        out: optional contiguous float32 buffer of ``B*OH*OW*O`` elements, the NHWC buffer
            the result is a view of (reuse across calls saves the allocation and its page faults).
        epilogue: optional :class:`~hbnn.kernels.epilogue.Epilogue` (bias ``[O]``, residual
            ``[B, O, OH, OW]`` in any memory format, channels-last is read without a copy;
            clamp) applied before the store, bit-identical to applying it after.

    Returns:
        float32 ``[B, O, OH, OW]`` (a channels-last view of an NHWC buffer).
    """
    return _conv(x, w, stride, padding, dilation, backend, variant, counts=False, out=out, epilogue=epilogue)


def binary_conv2d_counts(
    x: Planes, w: Weight, *, stride=1, padding=0, dilation=1, backend: str = "auto", variant: str | None = None
) -> torch.Tensor:
    """Integer dot counts of :func:`binary_conv2d`: int32 ``[nw, nx, B*OH*OW, O]``, rows ``(b, oy, ox)``."""
    return _conv(x, w, stride, padding, dilation, backend, variant, counts=True)


def available_backends() -> tuple[str, ...]:
    """``("c", "torch")`` if the C kernels build and load here (builds them on first call), else ``("torch",)``."""
    return ("c", "torch") if _build.load() is not None else ("torch",)


def cpu_features() -> dict:
    """CPU features and dispatch variants as the C side sees them (builds the kernels on first call).

    Returns:
        ``{"features": {name: bool}, "variants": [supported], "selected": name}``, or
        ``{"features": {}, "variants": [], "selected": None, "error": why}`` without C kernels.
    """
    lib = _cbackend.library("auto")
    if lib is None:
        return {"features": {}, "variants": [], "selected": None, "error": _build.build_error()}
    info = {"features": _cbackend.feature_flags(lib), "variants": _cbackend.supported_variants(lib)}
    try:
        info["selected"] = _cbackend.VARIANTS[_cbackend.variant_id(lib, None)]
    except ValueError as exc:  # a bad $HBNN_KERNEL_VARIANT: report it instead of raising
        info["selected"], info["error"] = None, str(exc)
    return info
