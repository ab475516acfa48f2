"""Algorithm 1 on a float32 CPU tensor in one C call (:mod:`hbnn.kernels.selection`).

The numpy path (:mod:`hbnn.quant.select`) materialises the key and walks it several
times per cut. Here the key is recomputed inside each C pass from ``x`` (and ``mu``), and
all cuts share the passes (``csrc/select_body.c``, ``sel_exact``):

1. **Brackets.** From the keys of a fixed pseudo-random sample of ``S`` positions, each
   cut ``c_j`` gets a bracket ``lo_j <= hi_j`` of sample order statistics around rank
   ``c_j / N * S`` (``+-`` 5 standard deviations of the sample rank, plus 8). Tensors of at
   most :data:`EXACT_BELOW` entries skip sampling: their exact k-th keys are the brackets,
   ``lo_j = hi_j``.
2. **Count pass**: ``#key < lo``, ``#key <= lo``, ``#key < hi``, ``#key <= hi`` per bracket,
   and the keys strictly inside ``(lo, hi)`` (a few % of the entries).
3. **Resolve**, on the small inside sets: the ``c_j``-th smallest key ``v_j``,
   ``n_lt = #key < v_j`` and ``n_eq = #key == v_j``. Stable order takes the first
   ``need = c_j - n_lt`` ties by index; when ``need < n_eq`` a tie pass finds ``p_j``,
   one past the index of the need-th tie.
4. **Map pass**: ``bits[-1] - sum_j (bits[j+1] - bits[j]) * first_j(i)`` with
   ``first_j(i) = key_i < v_j  or  (key_i == v_j and i < p_j)``.

The result equals :func:`hbnn.quant.bitmap.sort_bitmap` exactly. If a bracket misses its
rank (probability ~1e-6 per cut) or holds too many keys, :func:`select_map` returns
``None`` and the caller uses the numpy path. :func:`threshold_map` is the map pass alone
(``first_j = key <= t_j``), for sampled and inference-time thresholds.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from hbnn.quant.mix import BitMix
from hbnn.quant.select import EXACT_BELOW, SAMPLE_SIZE, sample_index, sample_rank

__all__ = ["available", "select_map", "sampled_map", "threshold_map", "mean_abs", "EXACT_BELOW"]


def _kernels():
    """:mod:`hbnn.kernels.selection`, imported on first use (so ``import hbnn`` loads no kernels)."""
    from hbnn.kernels import selection

    return selection


def available(x: torch.Tensor, heuristic: str = "middle_out") -> bool:
    """True when the C path applies: a float32 CPU tensor, a keyed heuristic, the kernels on and built
    (``$HBNN_KERNELS``; the first call builds them)."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return False
    kernels = _kernels()
    return heuristic in kernels.KEY_MODES and kernels.available()


def mean_abs(x: torch.Tensor, variant: str | None = None) -> torch.Tensor:
    """``mean |x|`` of a float32 CPU tensor (check :func:`available`), summed in float64 in a
    fixed order and rounded to float32; a 0-dim tensor."""
    return torch.tensor(_kernels().select_mean_abs(x, variant), dtype=torch.float32)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything about one selection that depends only on ``(N, mix)``."""

    cuts: np.ndarray  # int64 [J], the cuts, all 0 < c_j < N
    idx: np.ndarray | None  # sorted sample positions, or None (exact brackets)
    lo_r: np.ndarray  # int64 [J], 0-based bracket ranks in the sample's keys
    hi_r: np.ndarray
    cap: int  # keys kept inside one bracket
    steps: np.ndarray  # int8 [J], bits[j+1] - bits[j]


def _inner_cuts(n: int, mix: BitMix) -> list[int] | None:
    """``mix.cuts(n)`` when there is a cut and every cut is inside ``(0, n)``; else ``None``
    (a homogeneous mix, whose map is constant, or a slice that is empty or full, which only
    tiny tensors have: the numpy/torch path handles them)."""
    cuts = mix.cuts(n)
    return cuts if cuts and all(0 < c < n for c in cuts) else None


@functools.lru_cache(maxsize=64)
def _plan(n: int, mix: BitMix) -> _Plan | None:
    """The exact-selection plan for ``n`` entries, or ``None`` (see :func:`_inner_cuts`)."""
    cuts = _inner_cuts(n, mix)
    if cuts is None:
        return None
    ends = np.array(cuts, dtype=np.int64)
    if n <= EXACT_BELOW:
        return _Plan(ends, None, ends - 1, ends - 1, 0, _steps(mix))
    lo_r, hi_r = [], []
    for c in cuts:
        p = c / n
        delta = 5 * math.sqrt(p * (1 - p) * SAMPLE_SIZE) + 8
        lo_r.append(max(0, int(p * SAMPLE_SIZE - delta)))
        hi_r.append(min(SAMPLE_SIZE - 1, int(p * SAMPLE_SIZE + delta)))
    return _Plan(ends, sample_index(n), np.array(lo_r, dtype=np.int64), np.array(hi_r, dtype=np.int64),
                 n // 8 + 1024, _steps(mix))  # brackets hold ~4 % of the keys


@functools.lru_cache(maxsize=64)
def _steps(mix: BitMix) -> np.ndarray:
    """``bits[j+1] - bits[j]`` as int8 (read-only: shared between calls)."""
    steps = np.array([b - a for a, b in zip(mix.bits, mix.bits[1:])], dtype=np.int8)
    steps.flags.writeable = False
    return steps


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as one contiguous row (a copy only when ``x`` is not contiguous), shared by a call's passes."""
    return x.detach().reshape(-1).contiguous()


def _mu(flat: torch.Tensor, heuristic: str, given) -> float:
    """Middle-out's reference magnitude as the float32 value the C key uses (0 otherwise)."""
    if heuristic != "middle_out":
        return 0.0
    return float(mean_abs(flat) if given is None else torch.as_tensor(given, dtype=torch.float32))


def select_map(x: torch.Tensor, mix: BitMix, heuristic: str, mean_abs: torch.Tensor | None = None,
               variant: str | None = None) -> tuple[torch.Tensor, list[float]] | None:
    """Algorithm 1 on ``x`` (check :func:`available` first): ``(int8 map of x's shape, thresholds)``.

    Args:
        x: float32 CPU tensor.
        mix: a bit mix.
        heuristic: ``middle_out``, ``bottom_up`` or ``top_down``.
        mean_abs: middle-out's ``mean |x|`` (computed when ``None``), a float32 scalar.
        variant: C variant (``portable``, ``avx2``, ``avx512``; default the best supported).

    Returns:
        The map and, per cut, its boundary key value (as :func:`hbnn.quant.bitmap.select_slices`),
        or ``None`` when a sample bracket missed (use the numpy path).
    """
    flat = _flat(x)
    plan = _plan(flat.numel(), mix)
    if plan is None:
        return None
    mu = _mu(flat, heuristic, mean_abs)
    got = _kernels().select_exact(flat, heuristic, mu, plan.cuts, plan.idx, plan.lo_r, plan.hi_r, plan.cap,
                                  plan.steps, mix.bits[-1], variant)
    if got is None:
        return None
    return got[0].reshape(x.shape), got[1].tolist()


@functools.lru_cache(maxsize=64)
def _sampled_plan(n: int, mix: BitMix) -> tuple[np.ndarray | None, np.ndarray] | None:
    """``(sample positions or None for all, 0-based ranks)`` of the sampled thresholds."""
    cuts = _inner_cuts(n, mix)
    if cuts is None:
        return None
    ranks = np.array([sample_rank(c, n) - 1 for c in cuts], dtype=np.int64)
    return (sample_index(n) if n > SAMPLE_SIZE else None), ranks


def sampled_map(x: torch.Tensor, mix: BitMix, heuristic: str, mean_abs: torch.Tensor | None = None,
                variant: str | None = None) -> tuple[torch.Tensor, list[float]] | None:
    """:func:`hbnn.quant.bitmap.sampled_thresholds` and the map of ``key > t_j``, in one C call.

    Returns ``(int8 map of x's shape, thresholds)``, or ``None`` when a slice is empty or
    full (tiny tensors: use the torch path).
    """
    flat = _flat(x)
    plan = _sampled_plan(flat.numel(), mix)
    if plan is None:
        return None
    mu = _mu(flat, heuristic, mean_abs)
    out, thr = _kernels().select_sampled(flat, heuristic, mu, plan[0], plan[1], _steps(mix), mix.bits[-1], variant)
    return out.reshape(x.shape), thr.tolist()


def threshold_map(x: torch.Tensor, mix: BitMix, heuristic: str, thresholds, mean_abs: torch.Tensor | None = None,
                  variant: str | None = None) -> torch.Tensor:
    """``bits[0] + sum_j (bits[j+1] - bits[j]) * [key > t_j]`` (as :func:`hbnn.quant.bitmap.map_from_thresholds`).

    ``mean_abs`` is middle-out's reference magnitude (computed when ``None``).
    """
    flat = _flat(x)
    t = np.array([float(v) for v in thresholds], dtype=np.float32)
    mu = _mu(flat, heuristic, mean_abs)
    return _kernels().select_map(flat, heuristic, mu, t, _steps(mix), mix.bits[-1], variant).reshape(x.shape)
