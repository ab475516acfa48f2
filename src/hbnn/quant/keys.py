"""Algorithm 1's ranking keys (the heuristics of Fromm et al. 2018, Sec. 2; see docs/method.md).

With ``a = |x|`` and ``m = mean(a)``, entries are ranked ascending by the key; the lowest
ranks get the fewest bits:

==============  ===========  ===========================================
heuristic       key          meaning
==============  ===========  ===========================================
``middle_out``  ``|a - m|``  entries nearest the mean magnitude: fewest bits
``top_down``    ``-a``       largest magnitudes: fewest bits
``bottom_up``   ``a``        smallest magnitudes: fewest bits
==============  ===========  ===========================================

Every key is computed in the input's float precision, one rounded IEEE operation at a
time, so the fused C selection (:mod:`hbnn.quant.select_c`) sees bit-identical keys. The
mean magnitude ``m`` is :func:`mean_magnitude`: summed in float64 (in C, in a fixed order,
for float32 CPU tensors), then rounded to the input's precision.
"""

from __future__ import annotations

import torch

from hbnn.quant import select_c

__all__ = ["heuristic_key", "mean_magnitude"]


def mean_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``mean |x|`` as a 0-dim tensor of ``x``'s float dtype, accumulated in float64.

    Float32 CPU tensors use the C kernel (one pass, no temporary, the same bits on every
    SIMD variant); others use torch. The two can differ in the last bit.
    """
    if select_c.available(x):
        return select_c.mean_abs(x)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return x.detach().abs().mean(dtype=torch.float64).to(dtype)


def heuristic_key(x: torch.Tensor, heuristic: str, mean_abs: torch.Tensor | float | None = None) -> torch.Tensor:
    """The ranking key of Algorithm 1 for every entry of ``x`` (float32 or float64).

    Args:
        x: the tensor to rank.
        heuristic: ``middle_out``, ``top_down`` or ``bottom_up`` (``random`` has no key).
        mean_abs: for ``middle_out``, the mean magnitude to measure from (default:
            :func:`mean_magnitude`;
            activation quantizers pass a running estimate at inference).
    """
    a = x.abs() if x.dtype in (torch.float32, torch.float64) else x.float().abs()
    if heuristic == "middle_out":
        m = mean_magnitude(x) if mean_abs is None else mean_abs
        return a.sub_(m).abs_()
    if heuristic == "top_down":
        return a.neg_()
    if heuristic == "bottom_up":
        return a
    raise ValueError(f"heuristic: {heuristic!r} has no key; allowed: middle_out, top_down, bottom_up")
