"""The source of an export: a trained model rebuilt from a run directory or checkpoint.

Checkpoints carry their resolved config (``hbnn.train``), so the exact model -- name,
options, quantization, calibrated activation estimates -- is rebuilt from the checkpoint
alone (:func:`hbnn.train.evaluation.model_from_checkpoint`). The metadata handed to the
packed file keeps what is needed to rebuild it again (:func:`hbnn.export.load_model_for_hw`)
and to find its test data.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hbnn.errors import FormatError

__all__ = ["model_from_checkpoint", "model_from_packed", "load_model_for_hw"]


def model_from_checkpoint(target: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """``(model in eval mode, export meta)`` of a run directory or checkpoint file.

    The meta is ``{"model": {name, config, quant, num_classes, in_channels, image_size},
    "data": {name, data_dir, image_size}, "source": {checkpoint, sha256, epoch, step, metrics}}``.

    Raises:
        CheckpointError: nothing to load, or unusable metadata.
    """
    from hbnn.train.config import config_from_dict, config_to_dict
    from hbnn.train.evaluation import model_from_checkpoint as rebuild

    model, ckpt = rebuild(target, which)
    meta = ckpt.metadata
    cfg = config_from_dict(meta["config"])  # validated by rebuild() already
    cfg_dict = config_to_dict(cfg)
    shape = {k: int(meta["model"][k]) for k in ("num_classes", "in_channels", "image_size")}
    data: dict[str, Any] = {"name": cfg.data.name, "data_dir": cfg.data.data_dir, "image_size": cfg.data.image_size}
    export_meta = {
        "model": {"name": cfg.model.name, "config": cfg_dict["model"], "quant": cfg_dict["quant"], **shape},
        "data": data,
        "source": {"checkpoint": str(ckpt.path), "sha256": meta.get("sha256"), "epoch": meta.get("epoch"),
                   "step": meta.get("step"), "metrics": meta.get("metrics")},
    }
    return model, export_meta


_SHAPE_KEYS = ("num_classes", "in_channels", "image_size")


def model_from_packed(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """``(source architecture in eval mode, packed header)`` of a packed file written by ``hbnn export``.

    The model is rebuilt from the header's ``model`` entry (name, config, quant and the
    dataset shape) and checked against the layer records: every packed conv/linear layer
    must exist under its name, with a weight (and input) quantizer exactly where the
    record has bit planes (and a binarized input). Weights are *not* restored -- packed
    weights are bit planes with batch norms folded in; shapes and bit mixes are what a
    rebuilt model is for.

    Raises:
        FormatError: an unreadable file, a header without the source model (files written
            by :func:`hbnn.export.export_model` without ``meta["model"]["config"]``), or
            records that do not match the rebuilt model.
    """
    from hbnn.export.format import read_packed
    from hbnn.train.run import build_model_for

    header, _, _ = read_packed(path)
    info = header.get("model")
    try:
        config = dict(info["config"])
        shape = {k: int(info[k]) for k in _SHAPE_KEYS}
        quant = info.get("quant")
        config.setdefault("name", info.get("name"))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"packed model {path} does not record its source model (model name, config, quant and "
                          f"{', '.join(_SHAPE_KEYS)}); export it from a run with hbnn export") from None
    try:
        model, _ = build_model_for(config, shape, quant)
    except (KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"packed model {path}: cannot rebuild its source model ({first})") from None
    _check_records(model, header["layers"], path)
    return model.eval(), header


def _check_records(model: torch.nn.Module, records: list, path) -> None:
    """Raise FormatError unless each conv/linear record matches the rebuilt model's layer."""
    modules = dict(model.named_modules())
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or rec.get("op") not in ("conv2d", "linear"):
            continue
        name = rec.get("name")
        layer = modules.get(name)
        kind = torch.nn.Conv2d if rec["op"] == "conv2d" else torch.nn.Linear
        problem = None
        if not isinstance(layer, kind):
            problem = f"the rebuilt model has no {rec['op']} layer named {name!r}"
        elif ((rec.get("weight") or {}).get("encoding") == "planes") != (
                getattr(layer, "weight_quantizer", None) is not None):
            problem = f"layer {name!r} is binarized in one and float in the other"
        elif (rec.get("act") is not None) != (getattr(layer, "act_quantizer", None) is not None):
            problem = f"layer {name!r} binarizes its input in one and not in the other"
        if problem:
            raise FormatError(f"packed model {path} does not match the source model in its header "
                              f"(record {i}): {problem}")


def load_model_for_hw(path: str | os.PathLike) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """``hbnn.hw`` loader hook for ``hbnn hw estimate --packed FILE``: ``(model, (C, H, W))``.

    The model is :func:`model_from_packed`'s rebuilt source architecture: the weight bits
    come from its bit mixes (Algorithm 1 realizes a mix exactly), the activation bits are
    the mixes' nominal averages (a packed file keeps no running estimate of realized
    activation bits; ``--run`` on the source run reports those).
    """
    model, header = model_from_packed(path)
    shape = header.get("input_shape")
    if not shape:
        info = header["model"]
        shape = [int(info["in_channels"]), int(info["image_size"]), int(info["image_size"])]
    c, h, w = (int(s) for s in shape)
    return model, (c, h, w)
