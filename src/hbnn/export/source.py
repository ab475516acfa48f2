"""The source of an export: a trained model rebuilt from a run directory or checkpoint.

Checkpoints carry their resolved config (``hbnn.train``), so the exact model -- name,
options, quantization, calibrated activation estimates -- is rebuilt from the checkpoint
alone (:func:`hbnn.train.rebuild.model_from_checkpoint`). The metadata handed to the
packed file keeps what is needed to rebuild it again (:func:`model_from_packed`, which
``hbnn hw estimate --packed`` costs, with :func:`packed_input_shape`) and to find its
test data.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hbnn.errors import FormatError

__all__ = ["model_from_checkpoint", "model_from_packed", "packed_input_shape"]


def model_from_checkpoint(target: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """``(model in eval mode, export meta)`` of a run directory or checkpoint file.

    The meta is ``{"model": {name, config, quant, num_classes, in_channels, image_size},
    "data": {name, data_dir, image_size}, "source": {checkpoint, sha256, epoch, step, metrics}}``.

    Raises:
        CheckpointError: nothing to load, or unusable metadata.
    """
    from hbnn.train.config import config_from_dict, config_to_dict
    from hbnn.train.rebuild import model_from_checkpoint as rebuild
    from hbnn.train.rebuild import recorded_shape

    model, ckpt = rebuild(target, which)
    meta = ckpt.metadata
    cfg = config_from_dict(meta["config"])  # validated by rebuild() already
    cfg_dict = config_to_dict(cfg)
    shape = recorded_shape(meta["model"])
    data: dict[str, Any] = {"name": cfg.data.name, "data_dir": cfg.data.data_dir, "image_size": cfg.data.image_size}
    export_meta = {
        "model": {"name": cfg.model.name, "config": cfg_dict["model"], "quant": cfg_dict["quant"], **shape},
        "data": data,
        "source": {"checkpoint": str(ckpt.path), "sha256": meta.get("sha256"), "epoch": meta.get("epoch"),
                   "step": meta.get("step"), "metrics": meta.get("metrics")},
    }
    return model, export_meta


def model_from_packed(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """``(source architecture in eval mode, packed header)`` of a packed file written by ``hbnn export``.

    The model is rebuilt from the header's ``model`` entry (name, config, quant and the
    dataset shape) and checked against the layer records: every packed conv/linear layer
    must exist under its name, with a weight (and input) quantizer exactly where the
    record has bit planes (and a binarized input), with the record's geometry and bit
    mixes (what ``hbnn hw estimate --packed`` costs). Weights are *not* restored -- packed
    weights are bit planes with batch norms folded in; shapes and bit mixes are what a
    rebuilt model is for.

    Raises:
        FormatError: an unreadable file, a header without the source model (files written
            by :func:`hbnn.export.export_model` without ``meta["model"]["config"]``), or
            records that do not match the rebuilt model.
    """
    from hbnn.export.format import read_packed
    from hbnn.train.rebuild import SHAPE_KEYS, build_model_for, recorded_shape

    header, _, _ = read_packed(path)
    info = header.get("model")
    try:
        config = dict(info["config"])
        shape = recorded_shape(info)
        quant = info.get("quant")
        config.setdefault("name", info.get("name"))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"packed model {path} does not record its source model (model name, config, quant and "
                          f"{', '.join(SHAPE_KEYS)}); export it from a run with hbnn export") from None
    try:
        from hbnn.convert import QuantizeConfig
        from hbnn.train.config import ModelConfig

        quant_cfg = None if quant is None else QuantizeConfig.from_dict(quant, "quant")
        model, _ = build_model_for(ModelConfig.from_dict(config, "model"), shape, quant_cfg)
    except (KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"packed model {path}: cannot rebuild its source model ({first})") from None
    _check_records(model, header["layers"], path)
    return model.eval(), header


def _record_problem(rec: dict, layer) -> str | None:
    """What differs between a conv/linear record and the rebuilt model's layer (None if nothing)."""
    from hbnn.export.records import layer_geometry, mix_fields
    from hbnn.export.units import act_structure, weight_structure

    name, kind = rec["name"], torch.nn.Conv2d if rec["op"] == "conv2d" else torch.nn.Linear
    if not isinstance(layer, kind):
        return f"the rebuilt model has no {rec['op']} layer named {name!r}"
    if rec["geometry"] != layer_geometry(layer, name):
        return f"layer {name!r} has geometry {rec['geometry']} in one and {layer_geometry(layer, name)} in the other"
    wq, aq = getattr(layer, "weight_quantizer", None), getattr(layer, "act_quantizer", None)
    planes = rec["weight"]["encoding"] == "planes"
    if planes != (wq is not None):
        return f"layer {name!r} is binarized in one and float in the other"
    if (rec["act"] is not None) != (aq is not None):
        return f"layer {name!r} binarizes its input in one and not in the other"
    for what, record, quantizer in (("weight", rec["weight"], wq if planes else None), ("input", rec["act"], aq)):
        if quantizer is not None and {k: record[k] for k in ("bits", "fractions")} != mix_fields(quantizer.mix):
            return f"layer {name!r} has {what} bit mix {record['bits']}/{record['fractions']} in one and " \
                   f"{mix_fields(quantizer.mix)} in the other"
        if quantizer is not None:
            units = weight_structure(record) if what == "weight" else act_structure(record)
            if units != quantizer.structure:
                return f"layer {name!r} has {what} map structure {units.name} in one and " \
                       f"{quantizer.structure.name} in the other"
    return None


def _check_records(model: torch.nn.Module, records: list, path) -> None:
    """Raise FormatError unless each conv/linear record (validated) matches the rebuilt model's layer:
    same type, geometry, and weight/input bit mixes exactly where the record has them."""
    modules = dict(model.named_modules())
    for i, rec in enumerate(records):
        if rec["op"] not in ("conv2d", "linear"):
            continue
        problem = _record_problem(rec, modules.get(rec["name"]))
        if problem:
            raise FormatError(f"packed model {path} does not match the source model in its header "
                              f"(record {i}): {problem}")


def packed_input_shape(header: dict) -> tuple[int, int, int]:
    """``(C, H, W)`` of one input image of a packed file: its ``input_shape``, else the recorded shape.

    Raises:
        KeyError, TypeError, ValueError: neither is recorded (:func:`model_from_packed`
            has refused such a header already).
    """
    shape = header.get("input_shape")
    if not shape:
        info = header["model"]
        shape = [int(info["in_channels"]), int(info["image_size"]), int(info["image_size"])]
    c, h, w = (int(s) for s in shape)
    return c, h, w
