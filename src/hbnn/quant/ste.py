"""The straight-through estimator, in one place.

Every binarizer in hbnn runs its forward map through :class:`ClippedSTE`, whose backward
is ``grad * 1{|x| <= 1}`` (the clip boundary passes the gradient). Scales computed from
``x`` inside the forward map are treated as constants.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["ClippedSTE", "clipped_ste"]


class ClippedSTE(torch.autograd.Function):
    """``y = f(x)`` forward; ``dL/dx = dL/dy * 1{|x| <= 1}`` backward.

    Only a boolean mask (one byte per entry) is kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # noqa: D102
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x.abs() <= 1)
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def clipped_ste(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to ``x`` with the clipped straight-through gradient."""
    return ClippedSTE.apply(x, fn)
