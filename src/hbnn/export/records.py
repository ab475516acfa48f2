"""Layer records: model layers -> (JSON record, tensors) at export, and back to engine modules at load.

Tensor names are ``"<layer index>.<field>"``. A conv/linear record is::

    {"op": "conv2d" | "linear", "name": source name, "folded": [batch-norm names],
     "geometry": {...constructor arguments...},
     "weight": {"encoding": "float32"} | {"encoding": "planes", "bits", "fractions",
                "heuristic", "block", "per_channel", "planes", "units", "plane_counts",
                "sign_bits", "map_bits", "structure"},
     "act": null | {"bits", "fractions", "heuristic", "structure"},
     "bias": bool, "out_scale": bool}

with tensors ``weight`` (float32) or ``signs``/``map``/``scales`` (see
:mod:`hbnn.export.encode`; a structured map -- ``structure`` ``block<K>`` or ``channel`` --
is one fixed-width code per unit, :mod:`hbnn.export.units`), ``bias`` ``[O]``,
``out_scale`` ``[O]`` and, for a binarized input, ``act.scales`` ``[n]``,
``act.thresholds`` ``[K-1]`` (on the unit key of the activation ``structure``),
``act.mean_abs`` ``[]``. Version-2 records have no ``structure`` (``entry``).
A kept batch norm is ``{"op": "batch_norm", "dim", "num_features", "eps"}`` with
``weight``/``bias``/``running_mean``/``running_var``; a PReLU is ``{"op": "prelu",
"num_parameters"}`` with ``weight`` ``[num_parameters]``; a constant op is ``{"op":
"add_constant" | "mul_constant" | "div_constant", "shape"}`` with ``value`` of that shape
(:class:`hbnn.export.ops.ConstantOp`); stateless ops carry attributes only. Every record also names its ``inputs`` (graph nodes, :mod:`hbnn.export.topology`).

Batch-norm folding (``BN(y) = a y + c``, ``a = gamma / sqrt(var + eps)``,
``c = beta - mean a``) applies to a BN directly after a conv/linear layer:

* after a float layer: ``W' = a W``, ``b' = a b + c`` (a float layer again);
* after a binarized layer ``y = alpha (op(Q_a(x), W_hat) + b)``: ``out_scale = a alpha``,
  ``bias = a alpha b + c``; the engine folds ``out_scale`` into the per-row weight scales
  of the kernel, so it costs nothing at run time.

A BN *before* a binarized layer's quantizer (e.g. after a pool) is kept as an op: a sign
sits between it and the weights, so it could only move into the quantizer's thresholds.
"""

from __future__ import annotations

import torch
from torch import nn

from hbnn.errors import FormatError
from hbnn.export import encode, units
from hbnn.export.engine import PackedConv2d, PackedLinear, make_act_quantizer
from hbnn.export.ops import CONSTANT_OPS, ConstantOp, build_simple, simple_record, unsupported
from hbnn.nn import HBConv2d, HBLayerMixin, HBLinear
from hbnn.quant.bitmap import expand_blocks
from hbnn.quant.functional import broadcast_scale, dequantize_planes, residual_forward

__all__ = ["bn_affine", "can_fold", "layer_geometry", "mix_fields", "layer_record", "build_layer"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


# ----------------------------------------------------------------------------- export side

def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` with ``BN(y) = a y + c`` in eval mode (computed in float64)."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - mean * a


def _check_bn(name: str, bn: nn.Module) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise unsupported(f"batch norm {name!r} without running statistics (track_running_stats=False)")


def can_fold(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` right after ``layer`` can be folded into it."""
    if type(bn) not in _BN or bn.running_var is None:
        return False
    out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return bn.num_features == out


def layer_geometry(layer: nn.Module, name: str) -> dict:
    """The ``geometry`` record of a conv/linear layer (its constructor arguments)."""
    if isinstance(layer, nn.Linear):
        return {"in_features": layer.in_features, "out_features": layer.out_features}
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        if isinstance(layer, HBLayerMixin):
            raise unsupported(f"binarized conv {name!r} with padding={layer.padding!r}, "
                              f"padding_mode={layer.padding_mode!r} (use integer zero padding)")
    return {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
            "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
            "dilation": list(layer.dilation), "groups": layer.groups, "padding_mode": layer.padding_mode}


def _plane_counts(masks: torch.Tensor) -> list[int]:
    """``|A_i|``, the active entries of each plane (the header's ``plane_counts``)."""
    return [int(m.sum()) for m in masks]


def mix_fields(mix) -> dict:
    """``{"bits", "fractions"}`` of a :class:`hbnn.quant.mix.BitMix`, as records hold them."""
    return {"bits": list(mix.bits), "fractions": list(mix.fractions)}


def _is_structured(structure) -> bool:
    """True for maps stored as one fixed-width code per unit (``block<K>``, ``channel``)."""
    return structure.kind in ("block", "channel")


def _weight_map(wq, w: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(entry bit map or None, unit levels, map bit stream)``: the map the quantizer uses in
    eval (``WeightQuantizer.bitmap``, computed once); fixed-width unit codes for a structured
    map (:mod:`hbnn.export.units`), else the nested-mask code of entries / legacy blocks."""
    mix = wq.mix
    if _is_structured(wq.structure):
        unit_map = None if mix.is_homogeneous else wq.unit_map(w)
        levels = (torch.zeros(wq.structure.n_units(w.shape), dtype=torch.int64) if unit_map is None
                  else unit_map.levels(mix))
        bitmap = None if unit_map is None else unit_map.expand()
        return bitmap, levels, units.encode_codes(levels, len(mix.bits))
    bitmap = None if mix.is_homogeneous else wq.bitmap(w)
    full = torch.full(w.shape, mix.bits[0], dtype=torch.int8) if bitmap is None else bitmap
    levels = encode.unit_levels(full, mix.bits, wq.spec.block)
    return bitmap, levels, encode.encode_levels(levels, len(mix.bits))


def _weight_planes(layer: HBLayerMixin, out: dict, p: str) -> dict:
    """Binarize the weight as training does (Eq. 5 + Algorithm 1 or the structured map) and encode it."""
    wq, w = layer.weight_quantizer, layer.weight.detach().float().cpu()
    mix, spec = wq.mix, wq.spec
    bitmap, levels, map_stream = _weight_map(wq, w)
    cdim = wq.channel_dim if spec.per_channel else None
    with torch.no_grad():
        _, scales, signs, masks = residual_forward(w, bitmap, mix.max_bits, cdim, keep_planes=True)
    sign_stream = encode.encode_signs(signs, masks)
    out[f"{p}.signs"] = encode.pack_stream(sign_stream)
    out[f"{p}.scales"] = scales.detach().float().contiguous()
    if map_stream.numel():
        out[f"{p}.map"] = encode.pack_stream(map_stream)
    return {"encoding": "planes", **mix_fields(mix), "heuristic": spec.heuristic, "block": spec.block,
            "per_channel": spec.per_channel, "planes": mix.max_bits, "units": int(levels.numel()),
            "plane_counts": _plane_counts(masks), "sign_bits": int(sign_stream.numel()),
            "map_bits": int(map_stream.numel()),
            "structure": wq.structure.name if _is_structured(wq.structure) else "entry"}


def _act_record(layer: HBLayerMixin, name: str, out: dict, p: str) -> dict | None:
    aq = layer.act_quantizer
    if aq is None:
        return None
    spec = aq.spec
    if spec.eval_mode != "running" or spec.heuristic == "random":
        raise unsupported(f"activation quantizer of {name!r} with eval_mode={spec.eval_mode!r}, "
                          f"heuristic={spec.heuristic!r} (need running estimates and a key heuristic)")
    if int(aq.num_batches_tracked) == 0:
        raise FormatError(f"activation quantizer of {name!r} was never calibrated (no training-mode "
                          "forward pass); run hbnn.calibrate(model, batches) (or hbnn calibrate RUN_DIR) "
                          "before exporting")
    out[f"{p}.act.scales"] = aq.running_scales.detach().float().clone()
    out[f"{p}.act.mean_abs"] = aq.running_mean_abs.detach().float().clone()
    if not aq.mix.is_homogeneous:
        out[f"{p}.act.thresholds"] = aq.running_thresholds.detach().float().clone()
    return {**mix_fields(aq.mix), "heuristic": spec.heuristic, "structure": aq.structure.name}


def _product(*factors):
    """Product of the factors that are not None (None if all are)."""
    kept = [f for f in factors if f is not None]
    if not kept:
        return None
    out = kept[0]
    for f in kept[1:]:
        out = out * f
    return out


def _affine_layer(name: str, layer: nn.Module, bn, bn_name, p: str, out: dict) -> dict:
    """Record of a conv/linear layer ``y = alpha (op(x, W) + b)``, optionally followed by a folded BN.

    With ``scale = alpha a`` and ``shift = alpha a b + c``: a float weight becomes
    ``scale W`` (no output scale); a binarized one keeps its planes and gets
    ``out_scale = scale``. The bias is ``shift``.
    """
    rec = {"op": "conv2d" if isinstance(layer, nn.Conv2d) else "linear", "name": name,
           "folded": [bn_name] if bn is not None else [], "geometry": layer_geometry(layer, name)}
    hb = isinstance(layer, (HBConv2d, HBLinear))
    n_out = layer.weight.shape[0]
    alpha = None
    if hb and layer.output_scale is not None:
        alpha = layer.output_scale.detach().double().reshape(()).expand(n_out)
    a, c = bn_affine(bn) if bn is not None else (None, None)
    scale = _product(alpha, a)
    b = layer.bias.detach().double() if layer.bias is not None else None
    shift = _product(b, scale) if b is not None else None
    if c is not None:
        shift = c if shift is None else shift + c
    out_scale = None
    if hb and layer.weight_quantizer is not None:
        rec["weight"] = _weight_planes(layer, out, p)
        out_scale = scale
    else:
        w = layer.weight.detach().double()
        if scale is not None:
            w = w * broadcast_scale(scale, w, 0)
        out[f"{p}.weight"] = w.float().contiguous()
        rec["weight"] = {"encoding": "float32"}
    rec["act"] = _act_record(layer, name, out, p) if hb else None
    rec["bias"], rec["out_scale"] = shift is not None, out_scale is not None
    if shift is not None:
        out[f"{p}.bias"] = shift.float().contiguous()
    if out_scale is not None:
        out[f"{p}.out_scale"] = out_scale.float().contiguous()
    return rec


def _bn_record(name: str, bn: nn.Module, p: str, out: dict) -> dict:
    _check_bn(name, bn)
    n = bn.num_features
    out[f"{p}.weight"] = (bn.weight if bn.weight is not None else torch.ones(n)).detach().float().clone()
    out[f"{p}.bias"] = (bn.bias if bn.bias is not None else torch.zeros(n)).detach().float().clone()
    out[f"{p}.running_mean"] = bn.running_mean.detach().float().clone()
    out[f"{p}.running_var"] = bn.running_var.detach().float().clone()
    return {"op": "batch_norm", "name": name, "dim": 1 if isinstance(bn, nn.BatchNorm1d) else 2,
            "num_features": n, "eps": float(bn.eps)}


def _prelu_record(name: str, m: nn.PReLU, p: str, out: dict) -> dict:
    out[f"{p}.weight"] = m.weight.detach().float().reshape(-1).clone()
    return {"op": "prelu", "name": name, "num_parameters": int(m.num_parameters)}


def _constant_record(name: str, m: ConstantOp, p: str, out: dict) -> dict:
    op = next(k for k, cls in CONSTANT_OPS.items() if type(m) is cls)
    out[f"{p}.value"] = m.value.detach().float().clone()
    return {"op": op, "name": name, "shape": list(m.value.shape)}


def layer_record(index: int, name: str, layer: nn.Module, out: dict, bn=None, bn_name: str | None = None,
                 inputs: list[str] | None = None) -> dict:
    """The JSON record of one graph node fed by the nodes ``inputs``; its tensors go into ``out`` (prefix ``index``)."""
    p = str(index)
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        rec = _affine_layer(name, layer, bn, bn_name, p, out)
    elif type(layer) in _BN:
        rec = _bn_record(name, layer, p, out)
    elif type(layer) is nn.PReLU:
        rec = _prelu_record(name, layer, p, out)
    elif isinstance(layer, ConstantOp):
        rec = _constant_record(name, layer, p, out)
    else:
        simple = simple_record(layer)
        if simple is None:
            raise unsupported(f"layer {name!r} of type {type(layer).__name__}")
        op, attrs = simple
        rec = {"op": op, "name": name, "attrs": attrs}
    if inputs is not None:
        rec["inputs"] = list(inputs)
    return rec


# ----------------------------------------------------------------------------- load side
# Records and tensors reach these functions validated (hbnn.export.validate, via
# hbnn.export.format.read_packed): types, ranges and tensor shapes are not re-checked;
# what is checked here is what only decoding shows (stream codes, plane sizes).

def _weight_shape(op: str, g: dict) -> tuple[int, ...]:
    if op == "linear":
        return (g["out_features"], g["in_features"])
    return (g["out_channels"], g["in_channels"] // g["groups"], *g["kernel_size"])


def _decode_planes(w: dict, shape: tuple[int, ...], tensors: dict, p: str, where: str):
    """``(signs, masks, scales)`` bool planes ``[n, *shape]`` from a ``planes`` weight record."""
    bits, n = w["bits"], w["planes"]
    structure = units.weight_structure(w)
    if _is_structured(structure):
        masks = units.unit_masks(units.decode_unit_levels(w, tensors, p, shape, where), bits, structure, shape)
    else:
        levels = torch.zeros(w["units"], dtype=torch.int64)
        if len(bits) > 1:
            stream = encode.unpack_stream(tensors[f"{p}.map"], w["map_bits"], where)
            levels = encode.decode_levels(stream, w["units"], len(bits), where)
        bitmap = torch.tensor(bits)[expand_blocks(levels, shape, w["block"])]
        masks = torch.stack([bitmap > i for i in range(n)])
        if _plane_counts(masks) != w["plane_counts"]:
            raise FormatError(f"{where}: bit map gives plane sizes {_plane_counts(masks)}, "
                              f"header says {w['plane_counts']}")
    signs = encode.decode_signs(encode.unpack_stream(tensors[f"{p}.signs"], w["sign_bits"], where), masks, where)
    return signs, masks, tensors[f"{p}.scales"]


def _act(rec: dict | None, tensors: dict, p: str):
    if rec is None:
        return None
    bits = rec["bits"]
    thresholds = tensors[f"{p}.act.thresholds"] if len(bits) > 1 else torch.zeros(0)
    return make_act_quantizer(bits, rec["fractions"], rec["heuristic"], tensors[f"{p}.act.scales"], thresholds,
                              tensors[f"{p}.act.mean_abs"], structure=units.act_structure(rec).name)


def _affine_module(rec: dict, tensors: dict, p: str, where: str, backend: str) -> nn.Module:
    op, g, w = rec["op"], rec["geometry"], rec["weight"]
    shape = _weight_shape(op, g)
    if w["encoding"] == "float32":
        planes, weight = None, tensors[f"{p}.weight"]
    else:
        planes = _decode_planes(w, shape, tensors, p, where)
        weight = dequantize_planes(*planes)
    bias = tensors[f"{p}.bias"] if rec["bias"] else None
    out_scale = tensors[f"{p}.out_scale"] if rec["out_scale"] else None
    act = _act(rec["act"], tensors, p)
    if op == "linear":
        return PackedLinear(weight, planes, act, bias, out_scale, backend=backend)
    if isinstance(g["padding"], str) or g["padding_mode"] != "zeros":  # float only (validated)
        return _float_conv(g, weight, bias)
    return PackedConv2d(weight, planes, act, bias, out_scale, stride=g["stride"], padding=g["padding"],
                        dilation=g["dilation"], groups=g["groups"], backend=backend)


def _float_conv(g: dict, weight: torch.Tensor, bias) -> nn.Module:
    conv = nn.Conv2d(g["in_channels"], g["out_channels"], g["kernel_size"], g["stride"], g["padding"],
                     g["dilation"], g["groups"], bias is not None, g["padding_mode"])
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv.eval()


def _bn_module(rec: dict, tensors: dict, p: str) -> nn.Module:
    n = rec["num_features"]
    bn = (nn.BatchNorm1d if rec["dim"] == 1 else nn.BatchNorm2d)(n, eps=float(rec["eps"]))
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, key).copy_(tensors[f"{p}.{key}"])
    return bn.eval()


def build_layer(index: int, rec: dict, tensors: dict, backend: str = "auto",
                file: str = "packed model") -> tuple[str, nn.Module]:
    """``(source name, engine module)`` of one layer record.

    ``rec`` and ``tensors`` must have passed :func:`hbnn.export.validate.check_header` and
    :func:`hbnn.export.validate.check_tensors` (:func:`hbnn.export.format.read_packed` does both).
    ``file`` starts every message (``"packed model m.hbnn"``).

    Raises:
        FormatError: a bit map or sign stream whose code does not match the record's plane sizes.
    """
    name = rec["name"]
    where = f"{file}: layer {index} ({name})"
    op, p = rec["op"], str(index)
    if op in ("conv2d", "linear"):
        return name, _affine_module(rec, tensors, p, where, backend)
    if op == "batch_norm":
        return name, _bn_module(rec, tensors, p)
    if op == "prelu":
        prelu = nn.PReLU(rec["num_parameters"])
        with torch.no_grad():
            prelu.weight.copy_(tensors[f"{p}.weight"])
        return name, prelu.eval()
    if op in CONSTANT_OPS:
        return name, CONSTANT_OPS[op](tensors[f"{p}.value"]).eval()
    return name, build_simple(op, dict(rec["attrs"]), where).eval()
