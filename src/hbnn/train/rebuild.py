"""Rebuild a model: from a config and a dataset shape, or from a checkpoint alone.

The one place that turns a ``model`` config section plus a dataset *shape* into an
``nn.Module`` (:func:`build_model_for`), used by training (:mod:`hbnn.train.run`),
evaluation and summaries (:mod:`hbnn.train.evaluation`), export
(:mod:`hbnn.export.source`) and the hardware estimates (``hbnn hw estimate --run``).

A *shape* is ``{"num_classes", "in_channels", "image_size"}`` (:data:`SHAPE_KEYS`, ints,
``image_size`` the side of a square input). It comes from a loaded dataset
(:func:`dataset_shape`), from the dataset registry (:func:`registry_shape`) or from the
``model`` entry a checkpoint or packed file records (:func:`recorded_shape`).

Checkpoints carry their resolved config, so :func:`model_from_checkpoint` rebuilds the
exact model (name, options, quantization) and restores its weights from the checkpoint
alone. A checkpoint in a run directory must belong to that run
(:func:`hbnn.train.rundir.load_run_checkpoint`); nothing falls back to a fresh model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from hbnn.convert import QuantizeConfig
from hbnn.errors import CheckpointError, ConfigError
from hbnn.train.checkpoint import Checkpoint, restore_checkpoint
from hbnn.train.config import ModelConfig, config_from_dict
from hbnn.train.rundir import load_run_checkpoint

__all__ = [
    "SHAPE_KEYS",
    "dataset_shape",
    "registry_shape",
    "recorded_shape",
    "build_model_for",
    "resolve_checkpoint",
    "model_from_checkpoint",
]

#: The keys of a dataset shape, in the order models take them.
SHAPE_KEYS = ("num_classes", "in_channels", "image_size")

#: Classes assumed for a registry dataset that reads them from its folders (imagenet).
_FOLDER_CLASSES = 1000


def dataset_shape(dataset: Any) -> dict:
    """``{"num_classes", "in_channels", "image_size"}`` of a loaded dataset (image_size as one int)."""
    size = dataset.image_size
    if isinstance(size, (tuple, list)):
        size = int(size[0])
    return {"num_classes": int(dataset.num_classes), "in_channels": int(dataset.in_channels),
            "image_size": int(size)}


def registry_shape(name: str) -> dict:
    """The shape :func:`hbnn.data.dataset_info` declares for a dataset name, without loading data.

    Datasets that read their classes from the folders (imagenet) count 1000 classes.

    Raises:
        ConfigError: unknown dataset name.
    """
    from hbnn.data import dataset_info

    info = dataset_info(name)
    return {"num_classes": info.num_classes or _FOLDER_CLASSES, "in_channels": info.in_channels,
            "image_size": info.image_size}


def recorded_shape(model_meta: Mapping[str, Any]) -> dict:
    """The shape in the ``model`` entry of checkpoint or packed-file metadata.

    Raises:
        KeyError, TypeError, ValueError: a key is missing or not an integer (callers
            turn these into their own one-line error).
    """
    return {k: int(model_meta[k]) for k in SHAPE_KEYS}


def build_model_for(model_cfg: ModelConfig, shape: Mapping[str, int],
                    quant: QuantizeConfig | None) -> tuple[torch.nn.Module, Any]:
    """Build the model of a config's ``model`` section for a dataset shape, binarized per ``quant``.

    Returns:
        ``(model, report)`` with report the ``quantize_`` report, or None for a float model.
    """
    from hbnn.models import build_model, model_options

    # every zoo model takes ``activation``; a user model without that option gets it only when set
    takes = "activation" in model_options(model_cfg.name) or model_cfg.activation != ModelConfig.activation
    activation = {"activation": model_cfg.activation} if takes else {}
    model = build_model(model_cfg.name, num_classes=shape["num_classes"], in_channels=shape["in_channels"],
                        image_size=shape["image_size"], **activation, **model_cfg.kwargs)
    report = None
    if quant is not None:
        import warnings

        from hbnn.convert import quantize_

        with warnings.catch_warnings():  # dead rules are reported by the caller instead
            warnings.simplefilter("ignore")
            report = quantize_(model, quant)
    return model, report


def resolve_checkpoint(target: str | os.PathLike, which: str = "best") -> Path:
    """The ``.safetensors`` file meant by ``target``.

    Args:
        target: a run directory, a checkpoint stem, or either file of a checkpoint.
        which: inside a run directory, ``best`` (falls back to ``last`` when neither half
            of ``best`` exists), ``last`` or ``calibrated`` (written by ``hbnn calibrate``).

    Raises:
        ConfigError: ``which`` is not ``best``, ``last`` or ``calibrated``.
        CheckpointError: nothing to load there, or a file that is not a checkpoint.
    """
    if which not in ("best", "last", "calibrated"):
        raise ConfigError(f"--which: {which!r} is not allowed; choose best, last or calibrated")
    path = Path(target)
    if path.is_dir():
        for name in ((which, "last") if which == "best" else (which,)):
            if any((path / f"{name}.{ext}").exists() for ext in ("safetensors", "json")):
                return path / f"{name}.safetensors"
        raise CheckpointError(f"no checkpoint in {path} (expected {which}.safetensors)")
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    elif path.suffix != ".safetensors":
        if path.is_file():
            raise CheckpointError(f"{path} is not a checkpoint: expected a run directory, NAME.safetensors or "
                                  "NAME.json (a packed model file is run by hbnn infer)")
        stem = path.with_name(path.name + ".safetensors")
        if not stem.exists():
            raise CheckpointError(f"checkpoint not found: {path} (expected a run directory, NAME.safetensors "
                                  "or NAME.json)")
        path = stem
    if not path.exists() and not path.with_suffix(".json").exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def model_from_checkpoint(target: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, Checkpoint]:
    """Rebuild the exact model of a checkpoint (name, options, quantization) with its weights.

    Args:
        target: run directory or checkpoint file (see :func:`resolve_checkpoint`).
        which: ``best`` or ``last`` inside a run directory.

    Returns:
        ``(model in eval mode on CPU, the verified Checkpoint)``.

    Raises:
        CheckpointError: nothing to load, a damaged file, another run's checkpoint, or
            unusable metadata.
    """
    path = resolve_checkpoint(target, which)
    ckpt = load_run_checkpoint(path)
    meta = ckpt.metadata
    try:
        cfg = config_from_dict(meta["config"])
        shape = recorded_shape(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has unusable metadata ({exc})") from None
    model, _ = build_model_for(cfg.model, shape, cfg.quant)
    restore_checkpoint(ckpt, model)
    model.eval()
    return model, ckpt
