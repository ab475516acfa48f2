"""One optimizer step, with the trainer's opt-in extensions (:class:`TrainStep`).

Per batch ``(x, y)`` at global step ``k`` (steps done before this one):

1. forward and loss under ``torch.autocast`` when ``amp`` is ``bf16``/``fp16`` (the loss
   in float32): cross-entropy, or the distillation loss of :mod:`hbnn.train.distill`
   when a teacher is given;
2. ``zero_grad``; backward (of the scaled loss under a ``GradScaler``);
3. gradient clipping to ``grad_clip`` (global L2 norm; unscaled first under a scaler);
4. the optimizer step at ``lr * warmup_factor(k)`` (:func:`warmup_factor`; every group's
   ``lr`` is put back exactly afterwards, so the schedule never sees the factor);
5. the scaler's update; the EMA update (:class:`hbnn.train.ema.EmaWeights`).

With every extension off this is exactly the plain step
``loss = cross_entropy(model(x), y); zero_grad(); loss.backward(); optimizer.step()``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from hbnn.errors import ConfigError

__all__ = ["AMP_TORCH_DTYPES", "warmup_factor", "check_amp", "TrainStep"]

#: ``train.amp`` -> autocast dtype.
AMP_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def warmup_factor(step: int, warmup_steps: float, start: float = 0.0) -> float:
    """The lr multiplier of the ``step``-th optimizer step (0-based) in a linear warmup.

    ``min(1, start + (1 - start) * (step + 1) / warmup_steps)``; 1 when ``warmup_steps`` is 0.

    Example:
        >>> [warmup_factor(k, 4) for k in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, start + (1.0 - start) * (step + 1) / warmup_steps)


def check_amp(amp: str | None, device: torch.device) -> None:
    """Refuse an autocast dtype the device cannot run (one line naming ``train.amp``)."""
    if amp is None:
        return
    if device.type == "cpu" and amp == "fp16" and not _cpu_fp16_supported():
        raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"train.amp={amp}: torch has no autocast on {device.type}")


def _cpu_fp16_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            pass
        torch.amp.GradScaler("cpu")
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


class TrainStep:
    """Callable ``step(model, optimizer, images, labels, k) -> (loss, logits)``; see the module docstring.

    Args:
        label_smoothing: cross-entropy label smoothing.
        amp: None, ``bf16`` or ``fp16`` (check it first with :func:`check_amp`).
        device_type: ``cpu`` or ``cuda`` (the autocast device).
        scaler: a ``torch.amp.GradScaler`` (fp16), or None.
        grad_clip: max global gradient norm, or None.
        warmup_steps, warmup_start: the linear warmup (:func:`warmup_factor`); 0 = none.
        teacher: a float model in eval mode (knowledge distillation), or None.
        kd_alpha, kd_temperature: the distillation weight and temperature.
        ema: an :class:`hbnn.train.ema.EmaWeights` updated after every step, or None.
    """

    def __init__(self, *, label_smoothing: float = 0.0, amp: str | None = None, device_type: str = "cpu",
                 scaler: Any = None, grad_clip: float | None = None, warmup_steps: float = 0.0,
                 warmup_start: float = 0.0, teacher: torch.nn.Module | None = None, kd_alpha: float = 0.5,
                 kd_temperature: float = 4.0, ema: Any = None) -> None:
        self.label_smoothing, self.amp, self.device_type = label_smoothing, amp, device_type
        self.scaler, self.grad_clip, self.ema = scaler, grad_clip, ema
        self.warmup_steps, self.warmup_start = warmup_steps, warmup_start
        self.teacher, self.kd_alpha, self.kd_temperature = teacher, kd_alpha, kd_temperature

    def autocast(self) -> Any:
        """The autocast context of the forward pass (a no-op without ``amp``)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_TORCH_DTYPES[self.amp])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or the distillation loss with a teacher."""
        if self.teacher is not None:
            from hbnn.train.distill import kd_loss

            with torch.no_grad():
                target = self.teacher(images)
            return kd_loss(logits, target, labels, alpha=self.kd_alpha, temperature=self.kd_temperature,
                           label_smoothing=self.label_smoothing)
        if self.amp is not None:
            logits = logits.float()
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def __call__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = model(images)
            loss = self.loss(logits, labels, images)
        optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self._optimizer_step(optimizer, warmup_factor(step, self.warmup_steps, self.warmup_start))
        if self.scaler is not None:
            self.scaler.update()
        if self.ema is not None:
            self.ema.update()
        return loss, logits

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, factor: float) -> None:
        saved = [group["lr"] for group in optimizer.param_groups]
        if factor != 1.0:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor
        try:
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        finally:
            for group, lr in zip(optimizer.param_groups, saved):
                group["lr"] = lr
