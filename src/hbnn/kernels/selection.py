"""The C bit-map selection passes (``csrc/select_body.c``): public bindings for :mod:`hbnn.quant.select_c`.

Every pass reads a float32 CPU tensor ``x`` of ``N`` entries and recomputes the heuristic's
key inside the pass (never stored):

``middle_out``: ``| |x| - mu |`` with ``mu`` a given float32 reference magnitude (usually
:func:`select_mean_abs`); ``bottom_up``: ``|x|``; ``top_down``: ``-|x|``; each one rounded
float32 operation at a time, as ``hbnn.quant.keys.heuristic_key``.

For a bit mix with bits ``b_0 < ... < b_J`` the passes write an int8 map of ``x``'s shape,
``top - sum_j steps[j] * first_j(i)`` with ``top = b_J`` and ``steps[j] = b_{j+1} - b_j``
(int8); they differ in what ``first_j`` is:

* :func:`select_exact`: the first ``cuts[j]`` entries of the stable ascending key order
  (Algorithm 1, exact; brackets from a sample, see :mod:`hbnn.quant.select_c`);
* :func:`select_sampled`: ``key <= t_j`` with ``t_j`` the ``ranks[j]``-th smallest key of a
  sample (or of all entries);
* :func:`select_map`: ``key <= thresholds[j]`` for given thresholds.

:func:`select_mean_abs` is ``mean |x|`` summed in float64 in a fixed order. Each takes
``variant`` (``portable``, ``avx2``, ``avx512``; default ``$HBNN_KERNEL_VARIANT`` or the best
supported); all variants give identical bits. Check :func:`available` first: the passes
raise ``RuntimeError`` when the C kernels are off or did not build.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from hbnn.kernels import _cbackend

__all__ = ["KEY_MODES", "available", "select_exact", "select_sampled", "select_map", "select_mean_abs"]

#: The C passes' code for each keyed heuristic.
KEY_MODES = {"middle_out": 0, "bottom_up": 1, "top_down": 2}


def available() -> bool:
    """True when the C kernels are on and loaded (builds them on first call, see ``$HBNN_KERNELS``)."""
    return _cbackend.library("auto") is not None


def _flat(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"{what}: x must be a float32 CPU tensor, got {x.dtype} on {x.device}")
    return x.detach().reshape(-1).contiguous()


def _mode(heuristic: str) -> int:
    if heuristic not in KEY_MODES:
        raise ValueError(f"heuristic: expected one of {sorted(KEY_MODES)}, got {heuristic!r}")
    return KEY_MODES[heuristic]


def _arr(a: np.ndarray | None, dtype) -> np.ndarray | None:
    """``a`` as a contiguous array of ``dtype`` (no copy when it already is one)."""
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def select_exact(
    x: torch.Tensor, heuristic: str, mu: float, cuts: np.ndarray, sample: np.ndarray | None,
    lo_ranks: np.ndarray, hi_ranks: np.ndarray, cap: int, steps: np.ndarray, top: int, variant: str | None = None,
) -> tuple[torch.Tensor, np.ndarray] | None:
    """Exact selection (Algorithm 1) in one C call: ``first_j`` = the first ``cuts[j]`` of the stable order.

    Args:
        x: float32 CPU tensor of ``N`` entries.
        heuristic: a key of :data:`KEY_MODES`.
        mu: middle-out's reference magnitude (ignored by the other keys).
        cuts: int64 ``[J]``, ascending, each ``0 < cuts[j] < N``.
        sample: sorted int64 positions whose keys bracket each cut's k-th key, or ``None``
            to use all ``N`` keys (then the brackets are exact).
        lo_ranks, hi_ranks: int64 ``[J]``, 0-based ranks in the sample's keys (or all keys)
            of each bracket's ends, ``lo <= hi``.
        cap: the most keys one bracket may hold strictly inside (ignored without a sample).
        steps: int8 ``[J]``, ``b_{j+1} - b_j``.
        top: ``b_J``.
        variant: C variant.

    Returns:
        ``(int8 map of x's shape, float32 [J] boundary keys v_j)``, or ``None`` when a
        bracket missed its cut's rank or held more than ``cap`` keys.

    Raises:
        RuntimeError: bad arguments (the C side's code -1), or the C kernels unavailable.
    """
    flat = _flat(x, "select_exact")
    lib = _cbackend.library("c")
    cuts, sample = _arr(cuts, np.int64), _arr(sample, np.int64)
    lo, hi, steps = _arr(lo_ranks, np.int64), _arr(hi_ranks, np.int64), _arr(steps, np.int8)
    out = torch.empty(flat.shape, dtype=torch.int8)
    thr = np.empty(cuts.size, dtype=np.float32)
    rc = lib.hbnn_select_exact(
        _cbackend.variant_id(lib, variant), flat.data_ptr(), flat.numel(), _mode(heuristic), mu, cuts.size,
        _ptr(cuts), _ptr(sample), 0 if sample is None else sample.size, _ptr(lo), _ptr(hi), cap, _ptr(steps), top,
        out.data_ptr(), _ptr(thr),
    )
    if rc == 1:
        return None
    _cbackend.check(rc, "hbnn_select_exact")
    return out.reshape(x.shape), thr


def select_sampled(
    x: torch.Tensor, heuristic: str, mu: float, sample: np.ndarray | None, ranks: np.ndarray, steps: np.ndarray,
    top: int, variant: str | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Sampled thresholds and their map in one C call: ``t_j`` = the ``ranks[j]``-th smallest sampled key.

    Args:
        x, heuristic, mu, steps, top, variant: as :func:`select_exact`.
        sample: int64 positions of the sample, or ``None`` for all entries.
        ranks: int64 ``[J]``, 0-based ranks in the sample's keys.

    Returns:
        ``(int8 map of x's shape with first_j = key <= t_j, float32 [J] thresholds t_j)``.
    """
    flat = _flat(x, "select_sampled")
    lib = _cbackend.library("c")
    sample, ranks, steps = _arr(sample, np.int64), _arr(ranks, np.int64), _arr(steps, np.int8)
    out = torch.empty(flat.shape, dtype=torch.int8)
    thr = np.empty(ranks.size, dtype=np.float32)
    rc = lib.hbnn_select_sampled(
        _cbackend.variant_id(lib, variant), flat.data_ptr(), flat.numel(), _mode(heuristic), mu, ranks.size,
        _ptr(sample), 0 if sample is None else sample.size, _ptr(ranks), _ptr(steps), top, out.data_ptr(), _ptr(thr),
    )
    _cbackend.check(rc, "hbnn_select_sampled")
    return out.reshape(x.shape), thr


def select_map(
    x: torch.Tensor, heuristic: str, mu: float, thresholds: np.ndarray, steps: np.ndarray, top: int,
    variant: str | None = None,
) -> torch.Tensor:
    """The map of given thresholds: ``top - sum_j steps[j] * [key <= thresholds[j]]``, int8 of x's shape.

    ``thresholds`` is float32 ``[J]`` (``+-inf`` allowed); the other arguments as :func:`select_exact`.
    """
    flat = _flat(x, "select_map")
    lib = _cbackend.library("c")
    t, steps = _arr(thresholds, np.float32), _arr(steps, np.int8)
    out = torch.empty(flat.shape, dtype=torch.int8)
    rc = lib.hbnn_select_map(_cbackend.variant_id(lib, variant), flat.data_ptr(), flat.numel(), _mode(heuristic), mu,
                             t.size, _ptr(t), _ptr(steps), top, out.data_ptr())
    _cbackend.check(rc, "hbnn_select_map")
    return out.reshape(x.shape)


def select_mean_abs(x: torch.Tensor, variant: str | None = None) -> float:
    """``mean |x|`` of a float32 CPU tensor, summed in float64 in a fixed order (the same bits on every variant)."""
    flat = _flat(x, "select_mean_abs")
    lib = _cbackend.library("c")
    out = ctypes.c_double()
    rc = lib.hbnn_select_mean_abs(_cbackend.variant_id(lib, variant), flat.data_ptr(), flat.numel(), ctypes.byref(out))
    _cbackend.check(rc, "hbnn_select_mean_abs")
    return out.value
