"""What the bit-serial kernels may apply to ``y`` before they store it (a leaf module).

``Epilogue(bias, residual, clamp)`` stands for, in this order and each as one float32 op:

    y = y + bias[o]                 (bias: [O])
    y = y + residual                (residual: the output's shape)
    y = min(max(y, lo), hi)         (clamp = (lo, hi); ReLU is (0, inf), Hardtanh (min, max))

which is exactly what ``y.add_(bias); y.add_(residual); torch.clamp_(y, lo, hi)`` computes, so
a fused epilogue is bit-identical to running those ops after the kernel (NaN stays NaN).
Fusing saves one pass over the output per op (for a ResNet-20 stage-1 conv, 4 MB each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Epilogue"]


@dataclass(frozen=True)
class Epilogue:
    """Bias, residual and clamp applied to a kernel's float output (module docstring: the order).

    Attributes:
        bias: float32 ``[O]`` or None.
        residual: float32 tensor of the output's shape (``[..., O]`` for a linear layer,
            ``[B, O, OH, OW]`` for a conv, any memory format) or None.
        clamp: ``(lo, hi)`` or None.
    """

    bias: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    clamp: tuple[float, float] | None = None

    @property
    def empty(self) -> bool:
        """True when the epilogue changes nothing."""
        return self.bias is None and self.residual is None and self.clamp is None

    def check(self, out_shape: tuple[int, ...], channels: int, what: str) -> None:
        """ValueError (one line) unless bias is ``[channels]`` and residual has ``out_shape`` (float32, CPU)."""
        for name, t, shape in (("bias", self.bias, (channels,)), ("residual", self.residual, tuple(out_shape))):
            if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != shape):
                raise ValueError(f"{what}: epilogue {name} must be a float32 CPU tensor of shape {list(shape)}, "
                                 f"got {t.dtype} {list(t.shape)} on {t.device}")
        if self.clamp is not None:
            lo, hi = self.clamp
            if math.isnan(lo) or math.isnan(hi) or lo > hi:
                raise ValueError(f"{what}: epilogue clamp needs lo <= hi, got {self.clamp}")

    def apply_(self, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The epilogue in place on ``y`` with torch ops (the reference; ``channel_dim``: the ``O`` axis)."""
        if self.bias is not None:
            shape = [1] * y.dim()
            shape[channel_dim] = -1
            y.add_(self.bias.reshape(shape))
        if self.residual is not None:
            y.add_(self.residual)
        if self.clamp is not None:
            y.clamp_(*self.clamp)
        return y
