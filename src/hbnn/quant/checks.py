"""Argument checks shared by the functional API (one-line errors that name the argument)."""

from __future__ import annotations

import torch

__all__ = ["check_float_tensor", "check_bitmap", "HEURISTICS", "check_heuristic"]

HEURISTICS = ("middle_out", "top_down", "bottom_up", "random")


def check_float_tensor(x: object, name: str = "x", finite: bool = True) -> torch.Tensor:
    """Require a non-empty floating-point tensor (and, by default, no NaN/Inf).

    Raises:
        TypeError: not a tensor, or an integer/bool/complex dtype.
        ValueError: empty, or containing NaN/Inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16/bfloat16/float32/float64), got dtype {x.dtype}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{name}: contains {bad} values; binarization needs finite inputs")
    return x


def check_bitmap(bitmap: object, x: torch.Tensor, allowed: tuple[int, ...] | None = None) -> torch.Tensor:
    """Require an integer bit map of ``x``'s shape with values in ``allowed`` (default 1..8)."""
    if not isinstance(bitmap, torch.Tensor):
        raise TypeError(f"bitmap: expected a torch.Tensor, got {type(bitmap).__name__}")
    if bitmap.dtype.is_floating_point or bitmap.dtype.is_complex or bitmap.dtype == torch.bool:
        raise TypeError(f"bitmap: expected an integer tensor, got dtype {bitmap.dtype}")
    if bitmap.shape != x.shape:
        raise ValueError(f"bitmap: shape {tuple(bitmap.shape)} does not match x's shape {tuple(x.shape)}")
    values = torch.unique(bitmap).tolist()
    ok = set(allowed) if allowed is not None else set(range(1, 9))
    bad = [v for v in values if v not in ok]
    if bad:
        raise ValueError(f"bitmap: values {bad} are not allowed; allowed bitwidths are {sorted(ok)}")
    return bitmap


def check_heuristic(heuristic: object) -> str:
    """Require one of :data:`HEURISTICS`."""
    if heuristic not in HEURISTICS:
        raise ValueError(f"heuristic: unknown {heuristic!r}; allowed: {', '.join(HEURISTICS)}")
    return heuristic  # type: ignore[return-value]
