"""ctypes bindings of the C kernels: the library handle, variants, GEMM and packing marshalling.

Every tensor handed to C is contiguous and of the dtype the C side expects (int64 words,
float32 scales/outputs, int32 counts, uint8 flags); the C side never keeps a pointer.
Package-private: other packages reach the kernels through :mod:`hbnn.kernels` (GEMM,
packing) and :mod:`hbnn.kernels.selection` (the bit-map selection passes, whose argument
marshalling lives there).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch

from hbnn.kernels import _build
from hbnn.kernels.layout import PackedPlanes

__all__ = ["VARIANTS", "library", "variant_id", "supported_variants", "feature_flags", "gemm", "prepare",
           "pack_u8", "pack_residual", "ConvGeometry", "check", "PANEL_ROWS"]

VARIANTS = ("portable", "avx2", "avx512")
_FEATURES = {"popcnt": 1, "avx2": 2, "avx512f": 4, "avx512bw": 8, "avx512vpopcntdq": 16}
_P = ctypes.c_void_p
_I = ctypes.c_int64
PANEL_ROWS = 16  # HBNN_LANES: weight rows per panel
_PREPARED = ("ws", "wm", "popw", "wsc", "perm", "wst", "widx", "wn")


class _GemmArgs(ctypes.Structure):
    """Mirror of ``hbnn_gemm_args`` in csrc/hbnn_kernels.c (field order matters)."""

    _fields_ = [(name, _P) for name in (
        "w_signs", "w_masks", "w_full", "w_scales", "x_signs", "x_masks", "x_full", "x_scales", "y", "counts"
    )] + [(name, _I) for name in (
        "nw", "nx", "O", "B", "H", "W", "C", "cw", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "oh", "ow",
        "w_scale_per_row", "x_scale_per_row", "nthreads",
    )] + [("p_" + name, _P) for name in _PREPARED] + [("p_permuted", _I), ("dense", _I), ("e_bias", _P),
                                                         ("e_res", _P), ("e_clamp", _I), ("e_lo", ctypes.c_float),
                                                         ("e_hi", ctypes.c_float)]


@dataclass(frozen=True)
class ConvGeometry:
    """Implicit-GEMM geometry: input ``B x H x W``, kernel ``kh x kw``, stride, padding, dilation."""

    B: int
    H: int
    W: int
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0
    dh: int = 1
    dw: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        """``(OH, OW)`` as ``F.conv2d`` computes them."""
        oh = (self.H + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1
        ow = (self.W + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1
        return oh, ow


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    if getattr(lib, "_hbnn_declared", False):
        return lib
    lib.hbnn_gemm.argtypes = [ctypes.c_int, ctypes.POINTER(_GemmArgs)]
    lib.hbnn_gemm.restype = ctypes.c_int
    lib.hbnn_prepare_weight.argtypes = [ctypes.c_int, ctypes.POINTER(_GemmArgs)]
    lib.hbnn_prepare_weight.restype = ctypes.c_int
    lib.hbnn_pack_u8.argtypes = [ctypes.c_int, _P, _I, _I, _I, _P, _I]
    lib.hbnn_pack_u8.restype = ctypes.c_int
    lib.hbnn_pack_residual.argtypes = [ctypes.c_int, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _I]
    lib.hbnn_pack_residual.restype = ctypes.c_int
    _F = ctypes.c_float
    lib.hbnn_select_exact.argtypes = [ctypes.c_int, _P, _I, ctypes.c_int, _F, _I, _P, _P, _I, _P, _P, _I, _P,
                                      ctypes.c_int8, _P, _P]
    lib.hbnn_select_exact.restype = ctypes.c_int
    lib.hbnn_select_sampled.argtypes = [ctypes.c_int, _P, _I, ctypes.c_int, _F, _I, _P, _I, _P, _P, ctypes.c_int8,
                                        _P, _P]
    lib.hbnn_select_sampled.restype = ctypes.c_int
    lib.hbnn_select_mean_abs.argtypes = [ctypes.c_int, _P, _I, ctypes.POINTER(ctypes.c_double)]
    lib.hbnn_select_mean_abs.restype = ctypes.c_int
    lib.hbnn_select_map.argtypes = [ctypes.c_int, _P, _I, ctypes.c_int, _F, _I, _P, _P, ctypes.c_int8, _P]
    lib.hbnn_select_map.restype = ctypes.c_int
    lib.hbnn_variant_supported.argtypes = [ctypes.c_int]
    lib._hbnn_declared = True
    return lib


def library(backend: str = "auto") -> ctypes.CDLL | None:
    """The C library for ``backend`` (``"auto"``: if it builds; ``"c"``: or raise; ``"torch"``: None)."""
    if backend == "torch":
        return None
    if backend not in ("auto", "c"):
        raise ValueError(f"backend: expected 'auto', 'c' or 'torch', got {backend!r}")
    lib = _build.load()  # None when $HBNN_KERNELS=off; raises when it is "require" and the build failed
    if lib is None:
        if backend == "c":
            raise RuntimeError(f"backend='c': the C kernels are unavailable ({_build.build_error()})")
        return None
    return _declare(lib)


def supported_variants(lib: ctypes.CDLL) -> list[str]:
    """Dispatch variants this CPU can run, slowest first."""
    return [v for i, v in enumerate(VARIANTS) if lib.hbnn_variant_supported(i)]


def feature_flags(lib: ctypes.CDLL) -> dict[str, bool]:
    """CPU features as detected by the C side (``__builtin_cpu_supports``)."""
    mask = lib.hbnn_cpu_features()
    return {name: bool(mask & bit) for name, bit in _FEATURES.items()}


def variant_id(lib: ctypes.CDLL, variant: str | None) -> int:
    """Index of ``variant`` (or ``$HBNN_KERNEL_VARIANT``, or the best supported one)."""
    variant = variant or os.environ.get("HBNN_KERNEL_VARIANT") or None
    if variant is None:
        return lib.hbnn_best_variant()
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if not lib.hbnn_variant_supported(VARIANTS.index(variant)):
        raise ValueError(f"variant: {variant!r} is not supported by this CPU (supported: {supported_variants(lib)})")
    return VARIANTS.index(variant)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _aligned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor whose data starts on a 64-byte boundary (aligned vector loads)."""
    n = 1
    for d in shape:
        n *= d
    item = torch.empty(0, dtype=dtype).element_size()
    buf = torch.empty(n + 64 // item, dtype=dtype)
    off = (-buf.data_ptr() % 64) // item
    return buf[off:off + n].view(shape)


def _weight_geometry(w: PackedPlanes) -> tuple[int, int, int, int]:
    """``(kh, kw, C, cw)`` of a weight packed ``(O, K)`` (1 x 1 x K) or ``(O, kh, kw, C)``."""
    kh, kw = (w.shape[1], w.shape[2]) if len(w.shape) == 4 else (1, 1)
    return kh, kw, w.k, w.signs.shape[-1]


def prepare(lib: ctypes.CDLL, w: PackedPlanes, variant: str | None = None) -> dict:
    """Run ``hbnn_prepare_weight``: the panel tensors of :class:`~hbnn.kernels.prepared.PreparedWeight`.

    Returns ``{"ws", "wm", "popw", "wsc", "perm", "wst", "widx", "wn", "permuted"}`` (see
    csrc/hbnn_kernels.c ``hbnn_gemm_args``; ``wm``/``widx`` are None when every plane is full).
    """
    kh, kw, c, cw = _weight_geometry(w)
    o, n, kwt = w.shape[0], w.n, kh * kw * cw
    nq = (o + PANEL_ROWS - 1) // PANEL_ROWS
    op = nq * PANEL_ROWS
    masked = not all(w.full)
    t = {
        "ws": _aligned_empty((n, nq, kwt, PANEL_ROWS), torch.int64),
        "wm": _aligned_empty((n, nq, kwt, PANEL_ROWS), torch.int64) if masked else None,
        "popw": torch.empty(n, nq, PANEL_ROWS, dtype=torch.int32),
        "wsc": torch.empty(n, op, dtype=torch.float32),
        "perm": torch.empty(op, dtype=torch.int64),
        "wst": torch.empty(n, nq, dtype=torch.uint8),
        "widx": torch.empty(n, op, kwt, dtype=torch.int32) if masked else None,
        "wn": torch.empty(n, op, dtype=torch.int32),
    }
    keep = [w.signs.contiguous(), None if w.masks is None else w.masks.contiguous(),
            torch.tensor(w.full, dtype=torch.uint8), w.scales.contiguous()]
    a = _GemmArgs(w_signs=_ptr(keep[0]), w_masks=_ptr(keep[1]), w_full=_ptr(keep[2]), w_scales=_ptr(keep[3]),
                  nw=n, O=o, C=c, cw=cw, kh=kh, kw=kw, w_scale_per_row=int(w.per_row_scales),
                  nthreads=torch.get_num_threads(), **{"p_" + k: _ptr(v) for k, v in t.items()})
    rc = lib.hbnn_prepare_weight(variant_id(lib, variant), ctypes.byref(a))
    if rc != 0:
        raise RuntimeError(f"hbnn_prepare_weight failed with code {rc} (-2: out of memory, -3: bad arguments)")
    t["permuted"] = bool(a.p_permuted)
    return t


def gemm(
    lib: ctypes.CDLL, x: PackedPlanes, w: PackedPlanes, prepared: dict, geom: ConvGeometry, channels: int,
    *, want_y: bool, want_counts: bool, variant: str | None = None, dense: bool = False,
    out: torch.Tensor | None = None, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """Run ``hbnn_gemm`` with ``w`` prepared by :func:`prepare`: ``(y [R, O] float32, counts [nw, nx, R, O] int32, variant)``.

    ``dense``: dense taps (csrc/dense_body.c); ``prepared`` must then be the panels of the
    weight's ``(O, kh*kw*C)`` flatten (``prepared["dense"]`` of a conv weight with C < 64).
    ``out``: a contiguous float32 buffer of ``R*O`` elements that ``y`` is written into (a
    view of it is returned), checked by the caller.  ``bias`` (contiguous ``[O]``),
    ``residual`` (contiguous ``[R, O]``, not overlapping ``y``) and ``clamp`` (``(lo, hi)``):
    the epilogue of :class:`~hbnn.kernels.epilogue.Epilogue`, checked by the caller.
    """
    vid = variant_id(lib, variant)
    oh, ow = geom.out_hw
    rows, o = geom.B * oh * ow, w.shape[0]
    y = (out.view(rows, o) if out is not None else torch.empty(rows, o, dtype=torch.float32)) if want_y else None
    counts = torch.empty(w.n, x.n, rows, o, dtype=torch.int32) if want_counts else None
    keep = [x.signs.contiguous(), None if x.masks is None else x.masks.contiguous(),
            torch.tensor(x.full, dtype=torch.uint8), x.scales.contiguous()]
    a = _GemmArgs(
        x_signs=_ptr(keep[0]), x_masks=_ptr(keep[1]), x_full=_ptr(keep[2]), x_scales=_ptr(keep[3]),
        y=_ptr(y), counts=_ptr(counts), nw=w.n, nx=x.n, O=o, B=geom.B, H=geom.H, W=geom.W,
        C=channels, cw=x.signs.shape[-1], kh=geom.kh, kw=geom.kw, sh=geom.sh, sw=geom.sw,
        ph=geom.ph, pw=geom.pw, dh=geom.dh, dw=geom.dw, oh=oh, ow=ow,
        w_scale_per_row=int(w.per_row_scales), x_scale_per_row=int(x.per_row_scales),
        nthreads=torch.get_num_threads(), p_permuted=int(prepared["permuted"]), dense=int(dense),
        e_bias=_ptr(bias), e_res=_ptr(residual), e_clamp=int(clamp is not None),
        e_lo=clamp[0] if clamp else 0.0, e_hi=clamp[1] if clamp else 0.0,
        **{"p_" + k: _ptr(prepared[k]) for k in _PREPARED},
    )
    rc = lib.hbnn_gemm(vid, ctypes.byref(a))
    if rc != 0:
        raise RuntimeError(f"hbnn_gemm failed with code {rc} (-2: out of memory, -3: bad arguments)")
    return y, counts, VARIANTS[vid]


def check(rc: int, what: str) -> None:
    """Raise ``RuntimeError`` naming ``what`` when a C entry point returned ``rc != 0``."""
    if rc != 0:
        raise RuntimeError(f"{what} failed with code {rc}")


def pack_u8(lib: ctypes.CDLL, bits: torch.Tensor, s: int, variant: str | None = None) -> torch.Tensor:
    """bool ``[m, K, s]`` (any layout) -> int64 ``[m * s, ceil(K/64)]`` rows ``(m, s)``."""
    m, k = bits.shape[0], bits.shape[1]
    src = bits.reshape(m, k, s).contiguous().view(torch.uint8)
    out = torch.empty(m * s, (k + 63) // 64, dtype=torch.int64)
    vid = variant_id(lib, variant)
    check(lib.hbnn_pack_u8(vid, src.data_ptr(), m, k, s, out.data_ptr(), torch.get_num_threads()), "hbnn_pack_u8")
    return out


def pack_residual(
    lib: ctypes.CDLL, x: torch.Tensor, bitmap: torch.Tensor | None, b: int, k: int, s: int,
    scales: torch.Tensor, *, need_masks: bool, variant: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """Fused residual binarization + packing; returns ``(signs, masks, active counts per plane)``."""
    n = scales.numel()
    words = (k + 63) // 64
    signs = torch.empty(n, b * s, words, dtype=torch.int64)
    masks = torch.empty_like(signs) if need_masks else None
    active = torch.zeros(n, dtype=torch.int64)
    rc = lib.hbnn_pack_residual(
        variant_id(lib, variant), x.data_ptr(), _ptr(bitmap), b, k, s, n, scales.data_ptr(), signs.data_ptr(),
        _ptr(masks), active.data_ptr(), torch.get_num_threads(),
    )
    check(rc, "hbnn_pack_residual")
    return signs, masks, active.tolist()
