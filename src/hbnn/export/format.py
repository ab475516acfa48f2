"""The packed model file (``hbnn-packed``, version 3): write, read, load, size report.

One safetensors file. Its header metadata key ``"hbnn-packed"`` holds the JSON header::

    {"format": "hbnn-packed", "version": 3, "hbnn_version", "torch_version",
     "model": {name, config?, quant?, num_classes?, in_channels?, image_size?},
     "meta": {data?: {name, data_dir, image_size}, source?: {checkpoint, sha256, epoch,
              step, metrics}, ...anything else the exporter passed...},
     "input_shape": [C, H, W] (1 to 3 dims), "source_params": int, "fold_bn": bool,
     "layers": [layer records: graph nodes in topological order, each naming its "inputs"],
     "payload_sha256": hbnn.io.tensors_sha256 of the tensors (name, dtype, shape, bytes),
     "header_sha256": hbnn.io.header_sha256 of every other field}

Version 2 added ``header_sha256`` (so one digest chain covers the whole file) and a
reader that validates every field (:mod:`hbnn.export.validate`). Version 3 adds a
``structure`` to every binarized weight and activation record: a structured weight map
(``block<K>``, ``channel``) is stored as one fixed-width code per unit
(:mod:`hbnn.export.units`), a structured activation map (``pixel``, ``group<G>``) is
rebuilt by the engine from the recorded structure and running thresholds; every record
names its ``inputs`` (a graph, :mod:`hbnn.export.topology`; captured by
:mod:`hbnn.export.capture`). This reader
reads versions 2 and 3 (:data:`READ_VERSIONS`; a version-2 record is a per-entry one);
files of version 1 are refused with how to re-create them (``hbnn export RUN --out FILE``).

Layer records and tensor names: :mod:`hbnn.export.records`; bit streams:
:mod:`hbnn.export.encode`; the full specification: ``docs/deploy.md``.
Every problem with a file (missing, truncated, corrupt or edited, other format, other
version, any header field of the wrong type or out of range, tensors that do not fit the
records, unknown layer ops, shapes that do not chain) raises
:class:`hbnn.errors.FormatError` with a one-line message naming the file (and the layer
and field). :func:`read_packed` is the one validated read behind :func:`load`,
:func:`storage_report`, ``hbnn infer`` and ``hbnn hw estimate --packed``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from hbnn import __version__
from hbnn.errors import FormatError
from hbnn.export.capture import GraphNode, capture, verify_capture
from hbnn.export.engine import PackedModel, optimize_graph
from hbnn.export.fusion import fuse_epilogues
from hbnn.export.records import build_layer, can_fold, layer_record
from hbnn.export.shapes import check_shapes
from hbnn.export.topology import input_indices
from hbnn.export.units import weight_structure
from hbnn.export.validate import RECREATE, check_header, check_tensors
from hbnn.io import atomic_write_bytes, read_verified_safetensors, seal_header, tensors_sha256

__all__ = ["FORMAT", "VERSION", "READ_VERSIONS", "META_KEY", "pack_model", "export_model", "read_packed", "load",
           "storage_report", "format_report"]

FORMAT = "hbnn-packed"
VERSION = 3
#: Versions this hbnn reads (it writes :data:`VERSION`).
READ_VERSIONS = (2, 3)
#: The safetensors metadata key that holds the JSON header.
META_KEY = "hbnn-packed"


def _input_shape(model: Mapping, input_shape, records: list[dict], where: str) -> list[int]:
    """``input_shape`` as a list, else ``[in_channels, image_size, image_size]`` from the model meta,
    else ``[in_features]`` of a chain that starts with a linear layer.

    Raises:
        FormatError: none of them is known (a conv's input side is not in the model).
    """
    if input_shape is not None:
        return [int(s) for s in input_shape]
    if "in_channels" in model and "image_size" in model:
        return [int(model["in_channels"]), int(model["image_size"]), int(model["image_size"])]
    if records and records[0]["op"] == "linear":
        return [records[0]["geometry"]["in_features"]]
    raise FormatError(f"{where}: input_shape: unknown; pass input_shape=[C, H, W] (or meta['model'] with "
                      "in_channels and image_size)")


def _foldable_bn(node: GraphNode, users: dict[str, list[GraphNode]]) -> GraphNode | None:
    """The batch norm that is the only consumer of conv/linear ``node`` and can fold into it, else None."""
    after = users.get(node.name, [])
    if isinstance(node.module, (nn.Conv2d, nn.Linear)) and len(after) == 1 and after[0].inputs == [node.name] \
            and can_fold(node.module, after[0].module):
        return after[0]
    return None


def _records(nodes: list[GraphNode], fold_bn: bool) -> tuple[list[dict], dict]:
    """Layer records (with their ``inputs``) and CPU tensors of a captured graph; a BN whose
    only input is a conv/linear that feeds nothing else is folded into it (its consumers
    then read the conv/linear node)."""
    users: dict[str, list[GraphNode]] = {}
    for node in nodes:
        for name in node.inputs:
            users.setdefault(name, []).append(node)
    records: list[dict] = []
    tensors: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    for node in nodes:
        if node.name in renamed:  # folded into its conv/linear
            continue
        bn = _foldable_bn(node, users) if fold_bn else None
        if bn is not None:
            renamed[bn.name] = node.name
        inputs = [renamed.get(n, n) for n in node.inputs]
        records.append(layer_record(len(records), node.name, node.module, tensors, None if bn is None else bn.module,
                                    None if bn is None else bn.name, inputs))
    return records, {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}


def pack_model(model: nn.Module, *, meta: Mapping[str, Any] | None = None, fold_bn: bool = True,
               input_shape=None) -> tuple[dict, dict]:
    """``(header, tensors)`` of the packed file of ``model`` (nothing is written).

    Args:
        model: a graph of supported layers and functions (:data:`hbnn.export.SUPPORTED_LAYERS`,
            :data:`hbnn.export.SUPPORTED_FUNCTIONS`; :mod:`hbnn.export.capture`) with
            calibrated activation quantizers; its training mode is irrelevant (eval
            semantics are exported) and it is not modified.
        meta: JSON-safe metadata; ``meta["model"]`` (name, config, quant and dataset
            shape) lets tools rebuild the source model (default: ``{"name": <class
            name>}``); ``meta["data"]`` / ``meta["source"]`` are the dataset and
            checkpoint records :func:`hbnn.export.model_from_checkpoint` writes.
        fold_bn: fold each batch norm that follows a conv/linear layer into it.
        input_shape: ``[C, H, W]`` of one input (default: from ``meta["model"]``, else
            ``[in_features]`` of a leading linear layer); recorded always, the reader
            checks that the layers chain on it to ``[N, K]`` logits.

    Raises:
        FormatError: unsupported layers or functions, a model fx cannot trace (or traces
            into something else than its forward), uncalibrated or non-elementwise quantizers,
            non-finite parameters, ``meta`` fields hbnn reads with the wrong type, no
            known input shape, or layers whose shapes do not chain.
        TypeError: ``meta`` is not JSON-serialisable.
    """
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta: must be JSON-serialisable ({exc})") from None
    model_meta = meta.pop("model", None)
    if model_meta is None:
        model_meta = {"name": type(model).__name__}
    where = f"export of {type(model).__name__}"
    shape_meta = model_meta if isinstance(model_meta, Mapping) else {}
    known = None if input_shape is None and not {"in_channels", "image_size"} <= set(shape_meta) else \
        _input_shape(shape_meta, input_shape, [], where)  # shape-dependent forms in forward need it
    records, tensors = _records(capture(model, known), fold_bn)
    header = {
        "format": FORMAT, "version": VERSION, "hbnn_version": __version__, "torch_version": torch.__version__,
        "model": model_meta, "meta": meta,
        "input_shape": _input_shape(model_meta if isinstance(model_meta, Mapping) else {}, input_shape, records, where),
        "source_params": sum(p.numel() for p in model.parameters()), "fold_bn": bool(fold_bn), "layers": records,
        "payload_sha256": tensors_sha256(tensors),
    }
    check_header(header, where)  # what is written always reads back
    check_tensors(header, tensors, where)
    verify_capture(model, header["input_shape"])
    return header, tensors


def export_model(model: nn.Module, path: str | os.PathLike, *, meta: Mapping[str, Any] | None = None,
                 fold_bn: bool = True, input_shape=None) -> dict:
    """Write ``model`` as a packed file (atomically) and return its :func:`storage_report`.

    Arguments as :func:`pack_model`. Example::

        report = export_model(model.eval(), "model.hbnn", meta={"model": ckpt.metadata["model"]})
        print(report["model"]["bits_per_param"])
    """
    from safetensors.torch import save as st_save

    header, tensors = pack_model(model, meta=meta, fold_bn=fold_bn, input_shape=input_shape)
    data = st_save(tensors, metadata={META_KEY: json.dumps(seal_header(header), sort_keys=True)})
    atomic_write_bytes(path, data)
    return _report(header, tensors, len(data))


def _check_header(header: dict, where: Path) -> None:
    """Format, version, then every other field (:func:`hbnn.export.validate.check_header`)."""
    if header.get("format") != FORMAT:
        raise FormatError(f"{where} is not an hbnn packed model (format {header.get('format')!r}, "
                          f"expected {FORMAT!r})")
    version = header.get("version")
    if type(version) is not int or version not in READ_VERSIONS:
        how = ("not a version hbnn writes" if type(version) is not int else
               RECREATE if version < min(READ_VERSIONS) else "a newer hbnn wrote it; upgrade hbnn to read it")
        raise FormatError(f"packed model {where} has unknown format version {version!r}; "
                          f"this hbnn reads versions {', '.join(map(str, READ_VERSIONS))}; {how}")
    check_header(header, where)


def read_packed(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """``(header, tensors, file size in bytes)`` of a packed file, verified and validated.

    The digests (:func:`hbnn.io.read_verified_safetensors`) prove the file is as written;
    :mod:`hbnn.export.validate` proves every header field and tensor is of the right type
    and in range, so nothing downstream sees a malformed value.

    Raises:
        FormatError: missing, truncated, corrupt or edited, foreign or other-version file,
            an invalid header field or a tensor that does not fit its record.
    """
    data, header, tensors = read_verified_safetensors(path, key=META_KEY, what="packed model", error=FormatError,
                                                      check=_check_header, recreate=RECREATE)
    check_tensors(header, tensors, Path(path))
    return header, tensors, len(data)


def _check_chain(model: PackedModel, shape: list[int], out: tuple[int, ...], where: Path) -> None:
    """Run a zero batch of two inputs through the built graph: the output must be ``[2, *out]``.

    :func:`hbnn.export.shapes.check_shapes` has propagated the shapes already; this
    catches what only torch knows (``RuntimeError``, ``ValueError``, ``IndexError``).
    """
    def fail(i: int, exc: Exception) -> FormatError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return FormatError(f"packed model {where}: layer {i} ({model.names[i]}): shapes do not chain on input "
                           f"{shape}: {first}")

    with torch.no_grad():
        x = model.execute(torch.zeros(2, *shape), on_error=fail)
    if tuple(x.shape) != (2, *out):
        raise FormatError(f"packed model {where}: the layers output {[*x.shape]} for 2 inputs of {shape}, "
                          f"expected {[2, *out]}")


def load(path: str | os.PathLike, *, backend: str = "auto", check: bool = True) -> PackedModel:
    """Read a packed file into a runnable :class:`PackedModel`.

    Args:
        path: the file written by :func:`export_model`.
        backend: kernel backend of the binarized layers (``auto``, ``c``, ``torch``).
        check: also run a zero batch through the built layers (the shapes are propagated
            from ``input_shape`` by :func:`read_packed` in any case).

    The engine runs the records' graph (:mod:`hbnn.export.topology`) and applies
    :func:`hbnn.export.engine.optimize_graph` (exact rewrites); a bit-serial layer and the
    residual add and activation after it run as one step (:mod:`hbnn.export.fusion`).

    Raises:
        FormatError: see :func:`read_packed`; also unknown layer ops, tensors that do not
            fit their records and layers whose shapes do not chain.
    """
    header, tensors, _ = read_packed(path)
    where = f"packed model {Path(path)}"
    layers = [build_layer(i, rec, tensors, backend, where) for i, rec in enumerate(header["layers"])]
    inputs = input_indices(header["layers"], where)
    if check:
        _check_chain(PackedModel(layers, header, inputs), header["input_shape"], check_shapes(header, where),
                     Path(path))
    model = PackedModel(optimize_graph(layers, inputs), header, inputs)
    model.set_steps(fuse_epilogues(model))
    return model


# ----------------------------------------------------------------------------- size report

_KINDS = {"signs": "sign_bits", "map": "map_bits", "scales": "scale_bits", "weight": "float_bits"}


def _layer_row(i: int, rec: dict, tensors: Mapping[str, torch.Tensor]) -> dict:
    row = {"name": rec.get("name"), "op": rec.get("op"), "weights": 0, "sign_bits": 0, "map_bits": 0,
           "scale_bits": 0, "float_bits": 0, "other_bits": 0}
    prefix = f"{i}."
    for key, t in tensors.items():
        if key.startswith(prefix):
            field = key[len(prefix):]
            bits = t.numel() * t.element_size() * 8
            row[_KINDS.get(field, "other_bits") if rec.get("op") in ("conv2d", "linear") else "other_bits"] += bits
    w = rec.get("weight") or {}
    if rec.get("op") in ("conv2d", "linear"):
        g = rec["geometry"]
        row["weights"] = (g["out_features"] * g["in_features"] if rec["op"] == "linear" else
                          g["out_channels"] * g["in_channels"] // g["groups"] * math.prod(g["kernel_size"]))
    row["binarized"] = w.get("encoding") == "planes"
    row["act_bits"] = None if rec.get("act") is None else max(rec["act"]["bits"])
    row["stored_bits"] = row["sign_bits"] + row["map_bits"] + row["scale_bits"] + row["float_bits"] + row["other_bits"]
    if row["binarized"]:
        row["avg_weight_bits"] = w["sign_bits"] / row["weights"]
        row["bits_per_weight"] = (row["sign_bits"] + row["map_bits"] + row["scale_bits"]) / row["weights"]
        k = len(w["bits"])
        row["map_bits_fixed_width"] = 0 if k == 1 else w["units"] * math.ceil(math.log2(k))
        row["structure"] = weight_structure(w).name
        row["map_units"] = w["units"]
        row["bits_per_weight_split"] = _split(row, row["weights"])
    return row


def _split(bits: Mapping[str, int], weights: int) -> dict:
    """``{planes, map, scales}``: stored sign, map and scale bits per binarized weight."""
    return {"planes": bits["sign_bits"] / weights, "map": bits["map_bits"] / weights,
            "scales": bits["scale_bits"] / weights}


def _report(header: dict, tensors: Mapping[str, torch.Tensor], file_bytes: int) -> dict:
    rows = [_layer_row(i, rec, tensors) for i, rec in enumerate(header["layers"])]
    tensor_bits = sum(t.numel() * t.element_size() * 8 for t in tensors.values())
    params = int(header.get("source_params") or 0)
    binarized = [r for r in rows if r["binarized"]]
    nbin = sum(r["weights"] for r in binarized)
    totals = {k: sum(r[k] for r in binarized) for k in ("sign_bits", "map_bits", "scale_bits")}
    return {"layers": rows, "model": {
        "file_bytes": file_bytes, "tensor_bytes": tensor_bits // 8, "header_bytes": file_bytes - tensor_bits // 8,
        "source_params": params, "fp32_bytes": 4 * params,
        "compression": (4 * params / file_bytes) if file_bytes else 0.0,
        "bits_per_param": tensor_bits / params if params else 0.0,
        "file_bits_per_param": 8 * file_bytes / params if params else 0.0,
        "binarized_weights": nbin,
        "bits_per_binarized_weight": sum(totals.values()) / nbin if nbin else None,
        "bits_per_binarized_weight_split": _split(totals, nbin) if nbin else None,
    }}


def storage_report(path: str | os.PathLike) -> dict:
    """File size against fp32 and the bits per parameter actually stored, per layer and in all.

    Every stored tensor counts at its full size (bit streams in whole 64-bit words).
    Per layer: ``sign_bits``, ``map_bits``, ``scale_bits``, ``float_bits``, ``other_bits``
    (bias, output scale, activation estimates, batch norm), ``stored_bits``; binarized
    layers add ``avg_weight_bits`` (sign bits per weight), ``bits_per_weight``
    ((signs + map + scales) / weights) and ``map_bits_fixed_width`` (what a
    ``ceil(log2 K)``-bit code would need). Model: ``file_bytes``, ``header_bytes``,
    ``tensor_bytes``, ``fp32_bytes`` (4 bytes per source parameter), ``compression``
    (fp32 / file), ``bits_per_param`` (tensor bits / source parameters),
    ``file_bits_per_param``, ``binarized_weights``, ``bits_per_binarized_weight``.
    Binarized layers also give ``structure`` (the map's units: ``entry``, ``oihw_block<k>``,
    ``block<K>``, ``channel``), ``map_units`` and ``bits_per_weight_split`` (``{planes, map,
    scales}``: sign, map and scale bits per weight, summing to ``bits_per_weight``); the model
    ``bits_per_binarized_weight_split`` likewise over every binarized weight.
    """
    header, tensors, size = read_packed(path)
    return _report(header, tensors, size)


def _per_weight(r: Mapping[str, Any]) -> str:
    """``planes map scales total`` bits per weight of a binarized row (``32`` / ``-`` otherwise)."""
    split = r.get("bits_per_weight_split")
    if split is None:
        return f"{'':>20} {'32' if r['float_bits'] else '-':>7}"
    return f"{split['planes']:>6.3f} {split['map']:>6.3f} {split['scales']:>6.3f} {r['bits_per_weight']:>7.3f}"


def format_report(report: Mapping[str, Any]) -> str:
    """A fixed-width text table of :func:`storage_report`: stored bits per layer, then per weight
    (planes, map, scales and their sum, the realized bits per binarized weight)."""
    head = (f"{'layer':<20} {'op':<7} {'map units':<11} {'weights':>8} {'signs':>8} {'map':>7} {'scales':>6} "
            f"{'other':>7} | {'planes':>6} {'map':>6} {'scales':>6} {'bits/w':>7}")
    lines = [head, "-" * len(head)]
    for r in report["layers"]:
        if r["op"] not in ("conv2d", "linear", "batch_norm"):
            continue
        lines.append(f"{str(r['name'])[:20]:<20} {r['op'][:7]:<7} {str(r.get('structure', ''))[:11]:<11} "
                     f"{r['weights']:>8} {r['sign_bits']:>8} {r['map_bits']:>7} {r['scale_bits']:>6} "
                     f"{r['float_bits'] + r['other_bits']:>7} | {_per_weight(r)}")
    m = report["model"]
    lines.append("-" * len(head))
    per_bin, split = m["bits_per_binarized_weight"], m.get("bits_per_binarized_weight_split")
    lines.append(
        f"file {m['file_bytes']} bytes (header {m['header_bytes']}) vs fp32 {m['fp32_bytes']} bytes: "
        f"{m['compression']:.2f}x smaller; {m['bits_per_param']:.3f} bits/parameter stored"
        + (f", {per_bin:.3f} bits per binarized weight ({split['planes']:.3f} planes + {split['map']:.3f} map + "
           f"{split['scales']:.3f} scales)" if per_bin is not None else ""))
    return "\n".join(lines)
