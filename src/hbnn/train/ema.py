"""An exponential moving average of a model's weights (``train.ema``).

After every optimizer step, for every floating-point ``state_dict`` entry ``w`` (weights,
biases, BatchNorm and quantizer statistics)::

    shadow <- decay * shadow + (1 - decay) * w

starting from a copy of the weights when training starts; integer entries (counters
such as ``num_batches_tracked``) are copied. The shadow is checkpointed as ``ema/<key>``
tensors (:mod:`hbnn.train.checkpoint`) and restored bit for bit on resume; evaluation
swaps it in with :meth:`EmaWeights.applied`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from hbnn.errors import CheckpointError

__all__ = ["EmaWeights"]


class EmaWeights:
    """The EMA shadow of ``model``'s ``state_dict`` with decay ``decay`` in (0, 1).

    Example:
        >>> m = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = m.weight.fill_(0.0)
        >>> ema = EmaWeights(m, 0.5)
        >>> with torch.no_grad():
        ...     _ = m.weight.fill_(2.0)
        >>> ema.update()
        >>> float(ema.shadow["weight"])
        1.0
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.model, self.decay = model, float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the shadow (once per optimizer step)."""
        for key, value in self.model.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors, keyed like the model's ``state_dict``."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor], where: object = "checkpoint") -> None:
        """Restore a saved shadow (same keys, shapes and dtypes as the model's state).

        Raises:
            CheckpointError: a key, shape or dtype differs (one line naming ``where``).
        """
        if sorted(state) != sorted(self.shadow):
            key = sorted(set(state) ^ set(self.shadow))[0]
            raise CheckpointError(f"{where}: EMA weights do not fit the model (key {key!r})")
        for key, own in self.shadow.items():
            saved = state[key]
            if tuple(saved.shape) != tuple(own.shape) or saved.dtype != own.dtype:
                raise CheckpointError(f"{where}: EMA weight {key} is {saved.dtype} {tuple(saved.shape)}; "
                                      f"the model has {own.dtype} {tuple(own.shape)}")
            own.copy_(saved)

    @contextlib.contextmanager
    def applied(self) -> Iterator[torch.nn.Module]:
        """The model with the EMA weights loaded; its own weights are put back (bit for bit) on exit."""
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(backup)
