"""Evaluate a saved checkpoint and summarise a model: what ``hbnn eval``/``hbnn summary`` do.

Checkpoints carry their resolved config, so evaluation rebuilds the exact model (name,
options, quantization) from the checkpoint alone (:mod:`hbnn.train.rebuild`) and only
needs the test data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from hbnn.errors import CheckpointError, ConfigError
from hbnn.progress import make_progress
from hbnn.train.checkpoint import restore_checkpoint
from hbnn.train.config import config_from_dict, load_config, resolve_recipe
from hbnn.train.distributed import resolve_device
from hbnn.train.loop import evaluate
from hbnn.train.rebuild import (
    build_model_for,
    dataset_shape,
    model_from_checkpoint,
    recorded_shape,
    registry_shape,
    resolve_checkpoint,
)
from hbnn.train.rundir import load_run_checkpoint

__all__ = ["evaluate_checkpoint", "summary_for", "format_summary"]


def evaluate_checkpoint(target: str | os.PathLike, *, which: str = "best", data_dir: str | None = None,
                        batch_size: int | None = None, device: str = "auto", limit: int | None = None,
                        progress: bool = False) -> dict:
    """Top-1/top-5 accuracy and loss of a checkpoint on its dataset's test split.

    Args:
        target: run directory or checkpoint file (see :func:`resolve_checkpoint`).
        which: ``best`` or ``last`` inside a run directory.
        data_dir: dataset folder (None = the one the run used).
        batch_size: evaluation batch size (None = the run's).
        device: ``auto``, ``cpu`` or ``cuda``.
        limit: evaluate at most this many test samples (a fixed subset).
        progress: report progress over the batches on stderr (:func:`hbnn.progress.make_progress`).

    Returns:
        ``{"checkpoint", "model", "dataset", "epoch", "step", "loss", "top1", "top5", "count"}``.
    """
    from hbnn.data import build_dataset, build_loader

    model, ckpt = model_from_checkpoint(target, which)
    meta = ckpt.metadata
    cfg = config_from_dict(meta["config"])
    d = cfg.data
    test = build_dataset(d.name, "test", data_dir if data_dir is not None else d.data_dir, d.image_size,
                         limit=limit if limit is not None else d.test_limit)
    classes = dataset_shape(test)["num_classes"]
    if classes != int(meta["model"]["num_classes"]):
        raise CheckpointError(f"checkpoint {ckpt.path} predicts {meta['model']['num_classes']} classes but "
                              f"the test data has {classes}")
    dev = resolve_device(device)
    model.to(dev)
    size = batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    if size < 1:
        raise ConfigError(f"--batch-size: {size} is invalid; expected an integer >= 1")
    loader = build_loader(test, batch_size=size, train=False, seed=0, epoch=0, augment=False,
                          num_workers=d.num_workers)
    with make_progress(len(loader), f"eval {d.name}", enabled=progress) as bar:
        result = evaluate(model, loader, device=dev, progress=bar if bar.enabled else None)
    return {"checkpoint": str(ckpt.path), "model": cfg.model.name, "dataset": d.name,
            "epoch": meta.get("epoch"), "step": meta.get("step"), **result}


def summary_for(target: str, overrides: Iterable[str] = (), dataset: str | None = None) -> tuple[str, dict]:
    """Build the model meant by ``target`` and return ``(title, hbnn.convert.summarize(model))``.

    ``target`` is a run directory (its best, else last checkpoint), a checkpoint file, a
    YAML recipe (a run's ``config.yaml`` too), or a model name or ``package.module:callable`` (float unless
    ``overrides`` set ``quant.*``). ``dataset`` picks the input shape for recipes and
    model names (default: the recipe's dataset, else fashion_mnist).

    Raises:
        CheckpointError: a run directory without a loadable checkpoint of its own, or a
            damaged checkpoint -- never a fresh model in its place.
        ConfigError: an unknown target or a bad override.
    """
    from hbnn.convert import summarize
    from hbnn.models import is_model_path, list_models

    path = Path(target)
    ckpt = None
    if path.suffix == ".hbnn":
        raise ConfigError(f"summary: {path} is a packed model; hbnn summary takes a run directory, checkpoint, "
                          f"recipe or model name (a packed file's size report: hbnn hw estimate --packed {path}, "
                          f"its accuracy: hbnn infer {path})")
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        if path.is_dir() and not (path / "config.yaml").exists():
            raise ConfigError(f"{path} is not an hbnn run directory (no config.yaml)")
        try:
            checkpoint = resolve_checkpoint(path)
        except CheckpointError as exc:
            if not path.is_dir():
                raise
            raise CheckpointError(f"{exc}; to summarize the run's config instead: hbnn summary "
                                  f"{path / 'config.yaml'}") from None
        ckpt = load_run_checkpoint(checkpoint)
        if not isinstance(ckpt.metadata.get("config"), dict) or "model" not in ckpt.metadata:
            raise CheckpointError(f"checkpoint {ckpt.path} records no config and model to rebuild")
        cfg = load_config(None, overrides, base=ckpt.metadata["config"])
    elif path.suffix in (".yaml", ".yml") or path.exists():
        cfg = load_config(path, overrides)
    elif target in list_models() or is_model_path(target):
        cfg = load_config(None, [f"model.name={target}", *overrides])
    else:
        try:  # a recipe name, as `hbnn train` takes (hbnn.configs)
            recipe = resolve_recipe(target)
        except ConfigError:
            raise ConfigError(f"summary: {target!r} is not a run directory, checkpoint, recipe or model; "
                              f"models: {', '.join(list_models())}") from None
        cfg = load_config(recipe, overrides)
    if ckpt is not None and dataset is None:
        try:
            shape = recorded_shape(ckpt.metadata["model"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint {ckpt.path} records no usable dataset shape") from None
    else:
        shape = registry_shape(dataset or cfg.data.name)
    model, _ = build_model_for(cfg.model, shape, cfg.quant)
    if ckpt is not None:
        restore_checkpoint(ckpt, model)
    title = f"{cfg.model.name} on {dataset or cfg.data.name} ({'float' if cfg.quant is None else 'binarized'})"
    with torch.no_grad():
        return title, summarize(model)


def format_summary(title: str, summary: Mapping[str, Any]) -> str:
    """``title`` above ``hbnn.summary.format_summary``'s per-layer table."""
    from hbnn.summary import format_summary as table

    return f"{title}\n{table(dict(summary))}"
