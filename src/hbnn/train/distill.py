"""Knowledge distillation from a float teacher (``train.teacher``, ``kd_alpha``, ``kd_temperature``).

With student logits ``s``, teacher logits ``t``, labels ``y``, weight ``a`` and temperature ``T``::

    loss = (1 - a) * CE(s, y) + a * T**2 * KL(softmax(t / T) || softmax(s / T))

(Hinton et al., 2015; the KL term is the batch mean of the per-sample divergence, so
``T**2`` keeps its gradient scale independent of ``T``). The teacher is a float model
rebuilt from a run directory or checkpoint (:func:`hbnn.train.rebuild.model_from_checkpoint`)
and runs in eval mode without gradients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from hbnn.errors import CheckpointError, ConfigError

__all__ = ["kd_loss", "load_teacher"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, alpha: float,
            temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """The distillation loss of the module docstring (float32 whatever the logits' dtype)."""
    student, teacher = student.float(), teacher.float()
    ce = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl


def load_teacher(path: str, shape: Mapping[str, int]) -> tuple[torch.nn.Module, str]:
    """The float teacher at ``path`` for a student of dataset shape ``shape``.

    Returns:
        ``(teacher in eval mode, requires_grad off, on CPU; sha256 of its checkpoint file)``.

    Raises:
        ConfigError: no checkpoint there, an unreadable one, a binarized teacher, or one
            built for another class count or input shape (one line naming train.teacher).
    """
    from hbnn.train.rebuild import model_from_checkpoint

    if not Path(path).exists() and not Path(path + ".safetensors").exists():
        raise ConfigError(f"train.teacher: {path} not found (expected a run directory or checkpoint of a float model)")
    try:
        teacher, ckpt = model_from_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"train.teacher: {exc}") from None
    meta = ckpt.metadata
    if meta["config"].get("quant") is not None:
        raise ConfigError(f"train.teacher: {path} is a binarized model; the teacher must be a float model "
                          "(quant: null)")
    for key in ("num_classes", "in_channels", "image_size"):
        if int(meta["model"][key]) != int(shape[key]):
            raise ConfigError(f"train.teacher: {path} was trained with {key} {meta['model'][key]}; this run has "
                              f"{shape[key]}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, meta["sha256"]
