"""The straight-through estimator, in one place.

Every binarizer in hbnn computes its quantized value ``x_hat`` from ``x`` without autograd
(a detached tensor; the scales computed from ``x`` are constants) and joins it to ``x``
through :class:`ClippedSTE`::

    forward:  y = x_hat
    backward: dL/dx = dL/dy * 1{|x| <= 1}     (the clip boundary passes the gradient)

Both arguments are tensors (no closure, no Python side channel), so ``torch.jit.trace``,
``torch.onnx.export``, ``torch.export`` and ``torch.compile`` trace it like any op.
"""

from __future__ import annotations

import torch

__all__ = ["ClippedSTE", "clipped_ste"]


class ClippedSTE(torch.autograd.Function):
    """``y = x_hat`` forward; ``dL/dx = dL/dy * 1{|x| <= 1}`` backward, no gradient to ``x_hat``.

    Only a boolean mask (one byte per entry) is kept for the backward pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x.abs() <= 1)
        return x_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def clipped_ste(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``x_hat`` carrying the clipped straight-through gradient of ``x`` (``x_hat`` itself when
    no gradient is recorded: inference, or ``x`` without ``requires_grad``).

    Args:
        x: the float input.
        x_hat: its quantized value, same shape, computed without autograd (detached).
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x_hat
    return ClippedSTE.apply(x, x_hat)
