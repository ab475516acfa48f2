"""The source of an export: a trained model rebuilt from a run directory or checkpoint.

Checkpoints carry their resolved config (``hbnn.train``), so the exact model -- name,
options, quantization, calibrated activation estimates -- is rebuilt from the checkpoint
alone. The metadata handed to the packed file keeps what is needed to rebuild it again
and to find its test data.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hbnn.errors import CheckpointError

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(target: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """``(model in eval mode, export meta)`` of a run directory or checkpoint file.

    The meta is ``{"model": {name, config, quant, num_classes, in_channels, image_size},
    "data": {name, data_dir, image_size}, "source": {checkpoint, sha256, epoch, step, metrics}}``.

    Raises:
        CheckpointError: nothing to load, or unusable metadata.
    """
    from hbnn.train.checkpoint import load_checkpoint, restore_checkpoint
    from hbnn.train.config import config_from_dict, config_to_dict
    from hbnn.train.evaluation import resolve_checkpoint
    from hbnn.train.run import build_model_for

    path = resolve_checkpoint(target, which)
    ckpt = load_checkpoint(path)
    meta = ckpt.metadata
    try:
        cfg = config_from_dict(meta["config"])
        shape = {k: int(meta["model"][k]) for k in ("num_classes", "in_channels", "image_size")}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has unusable metadata ({exc})") from None
    cfg_dict = config_to_dict(cfg)
    model, _ = build_model_for(cfg_dict["model"], shape, cfg.quant)
    restore_checkpoint(ckpt, model)
    model.eval()
    data: dict[str, Any] = {"name": cfg.data.name, "data_dir": cfg.data.data_dir, "image_size": cfg.data.image_size}
    export_meta = {
        "model": {"name": cfg.model.name, "config": cfg_dict["model"], "quant": cfg_dict["quant"], **shape},
        "data": data,
        "source": {"checkpoint": str(path), "sha256": meta.get("sha256"), "epoch": meta.get("epoch"),
                   "step": meta.get("step"), "metrics": meta.get("metrics")},
    }
    return model, export_meta
