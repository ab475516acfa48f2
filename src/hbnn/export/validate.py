"""Validation of a packed file before anything in it is used: every header field, every tensor.

:func:`check_header` validates the decoded JSON header before any tensor is decoded (it
runs inside :func:`hbnn.export.format.read_packed`, after the digests), and
:func:`check_tensors` the tensors against the validated layer records. The engine
(:mod:`hbnn.export.records`), the size report and ``hbnn hw estimate --packed`` then only
ever see well-typed, in-range values:

* JSON booleans are not integers and integers are not booleans (``true`` is not ``1``);
  fields written as floats (hardtanh bounds, batch-norm ``eps``) are JSON floats, finite
  and within float32's range (the engine computes in float32; ``hardtanh`` needs
  ``min_val < max_val`` in float32, ``eps`` at least float32's smallest normal number);
  bit-mix fractions are finite numbers;
* every object has exactly the keys of its kind (``docs/deploy.md``), every op is one of
  :data:`OPS`, the layer list is not empty;
* geometry: channel counts, kernel sizes, strides, dilations and groups are positive
  integers (``[h, w]`` pairs where the layer has two dimensions), paddings are ``>= 0``
  and at most ``dilation * (kernel_size - 1)`` for a convolution (more padding only adds
  outputs that see no input) and half the (dilated) window for a pool; a ``reshape``
  target (1..4 dims) and a constant op's ``shape`` (0..4 dims) are positive integers,
  ``cat``'s ``dim`` is 1..4 (never the batch dimension 0);
* bit mixes are valid :class:`hbnn.quant.mix.BitMix` es (increasing bitwidths in
  ``1..8``, fractions > 0 summing to 1), plane counts and stream lengths agree with the
  weight's shape;
* structures (version 3; version-2 records have none and are per entry): a weight's
  ``entry``, ``block<K>`` (``K`` at most a row's inputs, no legacy ``block``) or
  ``channel``, with ``units`` its unit count and ``map_bits`` exactly ``units * ceil(log2 K)``;
  an activation's ``entry``, ``pixel`` (conv inputs) or ``group<G>`` (``G`` at most the
  input's channels); a structured weight's unit codes are in range and give the record's
  ``plane_counts`` (:mod:`hbnn.export.units`, checked with the tensors);
* graph (version 3): every record names its ``inputs``, earlier records or ``"input"``,
  as many as its op takes; no missing nodes, cycles, duplicate names or unused nodes
  (:mod:`hbnn.export.topology`); version-2 files are chains of the version-2 ops;
* ``model``, ``meta`` and ``input_shape`` (required): :mod:`hbnn.export.provenance`
  (``model.config`` and ``model.quant`` valid for their schemas, ``meta.data`` /
  ``meta.source`` typed);
* shapes propagate through the graph from ``input_shape`` to ``[N, K]`` logits (:mod:`hbnn.export.shapes`,
  after every field is checked);
* tensors: exactly the ones the records name, each with the dtype and shape its record
  implies, all values finite, batch-norm variances ``>= 0``.

Every violation raises :class:`hbnn.errors.FormatError` with one line naming the file,
the layer and the field: ``packed model m.hbnn: layer 2 (features.2): attrs.min_val:
invalid value nan; allowed: a finite number``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from hbnn.errors import FormatError
from hbnn.export._checks import MAX_INT, At, is_int, is_number, short
from hbnn.export.ops import CONSTANT_OPS, SIMPLE_OPS
from hbnn.export.provenance import MAX_INPUT_ELEMENTS, check_input_shape, check_meta, check_model
from hbnn.export.shapes import check_shapes
from hbnn.export.units import code_width, decode_unit_levels, parse_record_structure, weight_structure
from hbnn.quant.bitmap import block_view_shape
from hbnn.quant.checks import HEURISTICS
from hbnn.quant.mix import MAX_BITS, MIN_BITS, BitMix
from hbnn.quant.structure import Structure

__all__ = ["EXPORT_COMMAND", "RECREATE", "OPS", "OPS_V2", "MAX_PAD_CHANNELS", "MAX_RANK", "MAX_INT",
           "MAX_INPUT_ELEMENTS", "MAX_SIDE", "ACT_HEURISTICS", "check_header", "check_tensors", "tensor_specs"]

#: The command that writes a packed file (told to whoever holds one this hbnn cannot read).
EXPORT_COMMAND = "hbnn export RUN --out FILE"
#: How to replace a packed file this hbnn cannot read.
RECREATE = f"re-create it with `{EXPORT_COMMAND}`"
#: Layer op names a packed file may hold.
OPS = ("conv2d", "linear", "batch_norm", *SIMPLE_OPS, "prelu", *CONSTANT_OPS)
#: Layer op names of a version-2 file (a chain of these).
OPS_V2 = ("conv2d", "linear", "batch_norm", "relu", "hardtanh", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
          "flatten", "identity")
#: Largest number of zeros a ``pad_channels`` or ``zero_pad`` op may add on either side of a dimension.
MAX_PAD_CHANNELS = 2 ** 16
#: Most dimensions of a ``reshape`` target (the batch dimension left out) and of a constant.
MAX_RANK = 4
#: Largest adaptive-pool output side (no input side allowed by :data:`MAX_INPUT_ELEMENTS` is larger).
MAX_SIDE = 2 ** 12
#: Activation heuristics that run elementwise at inference (``random`` does not).
ACT_HEURISTICS = tuple(h for h in HEURISTICS if h != "random")

_TOP_KEYS = ("format", "version", "hbnn_version", "torch_version", "model", "meta", "input_shape", "source_params",
             "fold_bn", "layers", "payload_sha256", "header_sha256")
_AFFINE_KEYS = ("op", "name", "folded", "geometry", "weight", "act", "bias", "out_scale")
_CONV_KEYS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_PLANES_KEYS_V2 = ("encoding", "bits", "fractions", "heuristic", "block", "per_channel", "planes", "units",
                   "plane_counts", "sign_bits", "map_bits")
_PLANES_KEYS = (*_PLANES_KEYS_V2, "structure")
_ACT_KEYS_V2 = ("bits", "fractions", "heuristic")
_ACT_KEYS = (*_ACT_KEYS_V2, "structure")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_FLOAT32_TINY = torch.finfo(torch.float32).tiny
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ----------------------------------------------------------------------------- header

def check_header(header: dict, where: Any) -> None:
    """Validate every field of a packed header except ``format`` and ``version`` (checked first by the reader).

    Args:
        header: the decoded JSON header.
        where: the file (or what is being written), for messages.

    Raises:
        FormatError: the first invalid field, in one line (module docstring: the rules).
    """
    at = At(f"packed model {where}")
    for key in header:
        if key not in _TOP_KEYS:
            raise FormatError(f"{at.where}: {key}: unknown field; allowed: {', '.join(_TOP_KEYS)}")
    for key in _TOP_KEYS:
        if key not in header and key != "header_sha256":
            raise FormatError(f"{at.where}: {key}: missing; required keys: {', '.join(_TOP_KEYS)}")
    at.text("hbnn_version", header["hbnn_version"])
    at.text("torch_version", header["torch_version"])
    check_model(at, header["model"])
    check_meta(at, header["meta"])
    check_input_shape(at, header["input_shape"], header["model"])
    at.int("source_params", header["source_params"], 0, 2 ** 63 - 1)
    at.bool("fold_bn", header["fold_bn"])
    if not isinstance(header["payload_sha256"], str) or not _SHA256.fullmatch(header["payload_sha256"]):
        raise at.fail("payload_sha256", header["payload_sha256"], "64 lower-case hex digits")
    layers = header["layers"]
    if not isinstance(layers, list):
        raise at.fail("layers", layers, "a list of layer records")
    if not layers:
        raise FormatError(f"{at.where} has no layers; {RECREATE}")
    v2 = header.get("version") == 2  # the reader has checked the version; the writer writes the newest
    for i, rec in enumerate(layers):
        _check_layer(i, rec, at.where, v2)
    check_shapes(header, at.where)


# ----------------------------------------------------------------------------- layer records

def _check_layer(i: int, rec: Any, where: str, v2: bool = False) -> None:
    at = At(f"{where}: layer {i}")
    if not isinstance(rec, dict):
        raise at.fail("record", rec, "an object with an op and a name")
    name = at.text("name", rec.get("name"))
    at = At(f"{where}: layer {i} ({name})")
    op, ops = rec.get("op"), OPS_V2 if v2 else OPS
    if not isinstance(op, str) or op not in ops:
        raise FormatError(f"{at.where}: unknown layer op {short(op)}; supported ops: {', '.join(ops)}")
    graph = () if v2 else ("inputs",)  # version 3: every record names its inputs (hbnn.export.topology)
    if op in ("conv2d", "linear"):
        _check_affine(at, rec, v2)
    elif op == "prelu":
        at.keys("", rec, ("op", "name", "num_parameters", *graph))
        at.int("num_parameters", rec["num_parameters"], 1)
    elif op in CONSTANT_OPS:
        at.keys("", rec, ("op", "name", "shape", *graph))
        _check_dims(at, "shape", rec["shape"], 0)
    elif op == "batch_norm":
        at.keys("", rec, ("op", "name", "dim", "num_features", "eps", *graph))
        if at.int("dim", rec["dim"], 1) not in (1, 2):
            raise at.fail("dim", rec["dim"], "1 or 2")
        at.int("num_features", rec["num_features"], 1)
        if at.number("eps", rec["eps"]) < _FLOAT32_TINY:
            raise at.fail("eps", rec["eps"], f"a finite number > 0 (at least {_FLOAT32_TINY:.4g}, float32's smallest "
                                             "normal number)")
    else:
        at.keys("", rec, ("op", "name", "attrs", *graph))
        _ATTRS[op](at, rec["attrs"])


def _check_affine(at: At, rec: dict, v2: bool = False) -> None:
    at.keys("", rec, _AFFINE_KEYS if v2 else (*_AFFINE_KEYS, "inputs"))
    folded = rec["folded"]
    if not isinstance(folded, list) or not all(isinstance(n, str) and n.isprintable() for n in folded):
        raise at.fail("folded", folded, "a list of layer names")
    shape = _weight_shape(at, rec["op"], rec["geometry"])
    binarized = _check_weight(at, rec["weight"], shape, v2)
    if rec["act"] is not None:
        at.keys("act.", rec["act"], _ACT_KEYS_V2 if v2 else _ACT_KEYS)
        _check_mix(at, "act", rec["act"], ACT_HEURISTICS)
        if not v2:
            _check_act_structure(at, rec["act"]["structure"], rec["op"], rec["geometry"])
    at.bool("bias", rec["bias"])
    at.bool("out_scale", rec["out_scale"])
    g = rec["geometry"]
    if rec["op"] == "conv2d" and (binarized or rec["act"] is not None) and (
            isinstance(g["padding"], str) or g["padding_mode"] != "zeros"):
        raise at.fail("geometry.padding", [g["padding"], g["padding_mode"]],
                      "integer zero padding for a binarized conv (padding_mode zeros)")


def _weight_shape(at: At, op: str, g: Any) -> tuple[int, ...]:
    """The weight shape a validated ``geometry`` implies (``[O, I]`` or ``[O, I / groups, kh, kw]``)."""
    if op == "linear":
        at.keys("geometry.", g, ("in_features", "out_features"))
        shape: tuple[int, ...] = (at.int("geometry.out_features", g["out_features"], 1),
                                  at.int("geometry.in_features", g["in_features"], 1))
    else:
        at.keys("geometry.", g, _CONV_KEYS)
        cin = at.int("geometry.in_channels", g["in_channels"], 1)
        cout = at.int("geometry.out_channels", g["out_channels"], 1)
        groups = at.int("geometry.groups", g["groups"], 1)
        if cin % groups or cout % groups:
            raise at.fail("geometry.groups", groups, f"a divisor of in_channels {cin} and out_channels {cout}")
        kernel = at.ints("geometry.kernel_size", g["kernel_size"], 1)
        stride = at.ints("geometry.stride", g["stride"], 1)
        dilation = at.ints("geometry.dilation", g["dilation"], 1)
        at.choice("geometry.padding_mode", g["padding_mode"], _PADDING_MODES)
        _check_conv_padding(at, g["padding"], kernel, stride, dilation)
        shape = (cout, cin // groups, *kernel)
    if math.prod(shape) > MAX_INT:
        raise at.fail("geometry", g, f"a weight of at most {MAX_INT} entries")
    return shape


def _check_conv_padding(at: At, padding: Any, kernel: list[int], stride: list[int], dilation: list[int]) -> None:
    if isinstance(padding, str):
        if at.choice("geometry.padding", padding, ("same", "valid")) == "same" and stride != [1, 1]:
            raise at.fail("geometry.padding", padding, "'same' only with stride [1, 1]")
        return
    pad = at.ints("geometry.padding", padding, 0)
    most = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if any(p > m for p, m in zip(pad, most)):
        raise at.fail("geometry.padding", pad, f"0..{most} (dilation * (kernel_size - 1); more padding only adds "
                                               "outputs that see no input)")


def _check_mix(at: At, field: str, rec: dict, heuristics: tuple[str, ...]) -> list[int]:
    """The ``bits`` of a validated ``{bits, fractions, heuristic}`` mix record."""
    bits, fractions = rec["bits"], rec["fractions"]
    if (not isinstance(bits, list) or not bits or not all(is_int(b) and MIN_BITS <= b <= MAX_BITS for b in bits)
            or bits != sorted(set(bits))):
        raise at.fail(f"{field}.bits", bits, f"a non-empty increasing list of integers in {MIN_BITS}..{MAX_BITS}")
    allowed = f"{len(bits)} finite numbers > 0 (one per bitwidth) summing to 1"
    if not isinstance(fractions, list) or len(fractions) != len(bits) or not all(
            is_number(f) and f > 0 for f in fractions):
        raise at.fail(f"{field}.fractions", fractions, allowed)
    try:
        BitMix(dict(zip(bits, fractions)))
    except ValueError:
        raise at.fail(f"{field}.fractions", fractions, allowed) from None
    at.choice(f"{field}.heuristic", rec["heuristic"], heuristics)
    return bits


def _check_weight(at: At, w: Any, shape: tuple[int, ...], v2: bool = False) -> bool:
    """Validate a weight record for ``shape``; True when it holds bit planes."""
    if not isinstance(w, dict):
        raise at.fail("weight", w, "an object with encoding float32 or planes")
    if at.choice("weight.encoding", w.get("encoding"), ("float32", "planes")) == "float32":
        at.keys("weight.", w, ("encoding",))
        return False
    at.keys("weight.", w, _PLANES_KEYS_V2 if v2 else _PLANES_KEYS)
    bits = _check_mix(at, "weight", w, HEURISTICS)
    block = at.int("weight.block", w["block"], 1)
    at.bool("weight.per_channel", w["per_channel"])
    n, entries = bits[-1], math.prod(shape)
    if at.int("weight.planes", w["planes"], 1) != n:
        raise at.fail("weight.planes", w["planes"], f"{n}, the largest of bits {bits}")
    structure = Structure() if v2 else _weight_structure(at, w["structure"], block, shape)
    if structure.is_entry:
        rows, blocks, _ = block_view_shape(torch.Size(shape), block)
        units, what = (entries if block == 1 else rows * blocks), f"block {block}"
    else:
        units, what = structure.n_units(shape), f"structure {structure.name}"
    if at.int("weight.units", w["units"]) != units:
        raise at.fail("weight.units", w["units"], f"{units} for a {list(shape)} weight with {what}")
    counts = w["plane_counts"]
    if (not isinstance(counts, list) or len(counts) != n or not all(is_int(c) and 0 <= c <= entries for c in counts)
            or counts[0] != entries or any(a < b for a, b in zip(counts, counts[1:]))):
        raise at.fail("weight.plane_counts", counts, f"{n} non-increasing counts, the first {entries} (every entry)")
    if at.int("weight.sign_bits", w["sign_bits"], 0, 2 ** 63 - 1) != sum(counts):
        raise at.fail("weight.sign_bits", w["sign_bits"], f"{sum(counts)}, the sum of plane_counts")
    if structure.is_entry:
        lo, hi = (0, 0) if len(bits) == 1 else (units, units * (len(bits) - 1))
    else:
        lo = hi = units * code_width(len(bits))
    if not lo <= at.int("weight.map_bits", w["map_bits"], 0, 2 ** 63 - 1) <= hi:
        code = "nested-mask" if structure.is_entry else f"{code_width(len(bits))}-bit"
        raise at.fail("weight.map_bits", w["map_bits"], f"{lo}..{hi} for {units} units and {len(bits)} bitwidths "
                                                        f"({code} code)")
    return True


def _weight_structure(at: At, name: Any, block: int, shape: tuple[int, ...]) -> Structure:
    """The validated ``weight.structure`` of a version-3 record (fits the weight's rows, no legacy block)."""
    try:
        structure = parse_record_structure(name, "weight")
    except ValueError as exc:
        raise at.fail("weight.structure", name, f"{exc} (weight structures)") from None
    if not structure.is_entry and block != 1:
        raise at.fail("weight.block", block, f"1 with structure {structure.name} (block is the legacy per-entry "
                                             "map's OIHW runs)")
    row = math.prod(shape[1:])
    if structure.kind == "block" and structure.size > row:
        raise at.fail("weight.structure", name, f"block<K> with K <= {row} (the inputs of one output row), "
                                                "or channel")
    return structure


def _check_act_structure(at: At, name: Any, op: str, g: dict) -> None:
    """``act.structure``: ``entry``, ``pixel`` (conv inputs) or ``group<G>`` with ``G`` <= the input's channels."""
    try:
        structure = parse_record_structure(name, "act")
    except ValueError as exc:
        raise at.fail("act.structure", name, f"{exc} (activation structures)") from None
    channels = g["in_channels"] if op == "conv2d" else g["in_features"]
    if structure.kind == "pixel" and op != "conv2d":
        raise at.fail("act.structure", name, f"entry or group<G> with G <= {channels} (pixel applies to conv inputs)")
    if structure.kind == "group" and structure.size > channels:
        raise at.fail("act.structure", name, f"group<G> with G <= {channels}, the input's channels")


# ----------------------------------------------------------------------------- stateless ops

def _check_dims(at: At, field: str, dims: Any, least: int) -> list[int]:
    """A shape: ``least..MAX_RANK`` positive integers with at most :data:`MAX_INT` elements in all."""
    if not isinstance(dims, list) or not least <= len(dims) <= MAX_RANK or not all(
            is_int(d) and 1 <= d <= MAX_INT for d in dims) or math.prod(dims) > MAX_INT:
        raise at.fail(field, dims, f"a list of {least}..{MAX_RANK} positive integers (at most {MAX_INT} elements)")
    return dims


def _no_attrs(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ())


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def _hardtanh(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("min_val", "max_val"))
    lo = at.number("attrs.min_val", attrs["min_val"])
    if _float32(at.number("attrs.max_val", attrs["max_val"])) <= _float32(lo):
        raise at.fail("attrs.max_val", attrs["max_val"], f"a finite number > min_val ({lo:g}) in float32")


def _pool(at: At, attrs: Any, keys: tuple[str, ...]) -> None:
    at.keys("attrs.", attrs, keys)
    kernel = at.ints("attrs.kernel_size", attrs["kernel_size"], 1, scalar=True)
    at.ints("attrs.stride", attrs["stride"], 1, scalar=True)
    dilation = at.ints("attrs.dilation", attrs["dilation"], 1, scalar=True) if "dilation" in keys else [1, 1]
    pad = at.ints("attrs.padding", attrs["padding"], 0, scalar=True)
    most = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dilation)]
    if any(p > m for p, m in zip(pad, most)):
        raise at.fail("attrs.padding", attrs["padding"], f"0..{most} (half the dilated kernel size)")
    at.bool("attrs.ceil_mode", attrs["ceil_mode"])
    if "count_include_pad" in keys:
        at.bool("attrs.count_include_pad", attrs["count_include_pad"])
        if attrs["divisor_override"] is not None:
            at.int("attrs.divisor_override", attrs["divisor_override"], 1)


def _adaptive(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("output_size",))
    size = attrs["output_size"]
    ok = (lambda s: is_int(s) and 1 <= s <= MAX_SIDE)
    if not (ok(size) or isinstance(size, list) and len(size) == 2 and all(s is None or ok(s) for s in size)):
        raise at.fail("attrs.output_size", size, f"an integer in 1..{MAX_SIDE} or a list of two (or null)")


def _flatten(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("start_dim", "end_dim"))
    at.int("attrs.start_dim", attrs["start_dim"], -4, 3)
    at.int("attrs.end_dim", attrs["end_dim"], -4, 3)


def _leaky_relu(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("negative_slope",))
    at.number("attrs.negative_slope", attrs["negative_slope"])


def _cat(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("dim",))
    at.int("attrs.dim", attrs["dim"], 1, MAX_RANK)  # never 0, the batch dimension


def _softmax(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("dim",))
    if at.int("attrs.dim", attrs["dim"], -MAX_RANK, MAX_RANK) == 0:
        raise at.fail("attrs.dim", 0, f"an integer in -{MAX_RANK}..{MAX_RANK} other than 0 (the batch dimension)")


def _reshape(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("shape",))
    _check_dims(at, "attrs.shape", attrs["shape"], 1)


def _global_avg_pool(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("keepdim",))
    at.bool("attrs.keepdim", attrs["keepdim"])


def _subsample(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("stride",))
    at.ints("attrs.stride", attrs["stride"], 1)


def _zero_pad(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("padding",))
    pads = at.ints("attrs.padding", attrs["padding"], 0, n=6)
    if max(pads) > MAX_PAD_CHANNELS:
        raise at.fail("attrs.padding", pads, f"6 integers in 0..{MAX_PAD_CHANNELS}")


def _pad_channels(at: At, attrs: Any) -> None:
    at.keys("attrs.", attrs, ("before", "after"))
    at.int("attrs.before", attrs["before"], 0, MAX_PAD_CHANNELS)
    at.int("attrs.after", attrs["after"], 0, MAX_PAD_CHANNELS)


_ATTRS = {
    **dict.fromkeys(("relu", "identity", "silu", "hardswish", "sigmoid", "hardsigmoid", "tanh", "add", "sub", "mul"),
                    _no_attrs),
    "softmax": _softmax,
    "log_softmax": _softmax,
    "reshape": _reshape,
    "leaky_relu": _leaky_relu,
    "cat": _cat,
    "global_avg_pool": _global_avg_pool,
    "subsample": _subsample,
    "pad_channels": _pad_channels,
    "zero_pad": _zero_pad,
    "hardtanh": _hardtanh,
    "max_pool2d": lambda at, a: _pool(at, a, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "avg_pool2d": lambda at, a: _pool(at, a, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                              "divisor_override")),
    "adaptive_avg_pool2d": _adaptive,
    "adaptive_max_pool2d": _adaptive,
    "flatten": _flatten,
}


# ----------------------------------------------------------------------------- tensors

def _words(bits: int) -> int:
    return -(-bits // 64)


def tensor_specs(index: int, rec: dict) -> dict[str, tuple[torch.dtype, tuple[int, ...], str]]:
    """``{tensor name: (dtype, shape, note)}`` a validated record implies (note: extra text for messages)."""
    p, f32, out = str(index), torch.float32, {}
    if rec["op"] == "batch_norm":
        n = rec["num_features"]
        return {f"{p}.{k}": (f32, (n,), "") for k in ("weight", "bias", "running_mean", "running_var")}
    if rec["op"] == "prelu":
        return {f"{p}.weight": (f32, (rec["num_parameters"],), "")}
    if rec["op"] in CONSTANT_OPS:
        return {f"{p}.value": (f32, tuple(rec["shape"]), "")}
    if rec["op"] not in ("conv2d", "linear"):
        return {}
    shape = _weight_shape(At(""), rec["op"], rec["geometry"])
    w = rec["weight"]
    if w["encoding"] == "float32":
        out[f"{p}.weight"] = (f32, shape, "")
    else:
        n = w["planes"]
        out[f"{p}.signs"] = (torch.int64, (_words(w["sign_bits"]),), f" (words for {w['sign_bits']} bits)")
        if len(w["bits"]) > 1:
            out[f"{p}.map"] = (torch.int64, (_words(w["map_bits"]),), f" (words for {w['map_bits']} bits)")
        out[f"{p}.scales"] = (f32, (n, shape[0]) if w["per_channel"] else (n,), "")
    if rec["bias"]:
        out[f"{p}.bias"] = (f32, (shape[0],), "")
    if rec["out_scale"]:
        out[f"{p}.out_scale"] = (f32, (shape[0],), "")
    act = rec["act"]
    if act is not None:
        out[f"{p}.act.scales"] = (f32, (act["bits"][-1],), "")
        out[f"{p}.act.mean_abs"] = (f32, (), "")
        if len(act["bits"]) > 1:
            out[f"{p}.act.thresholds"] = (f32, (len(act["bits"]) - 1,), "")
    return out


def _check_unit_codes(i: int, rec: dict, tensors: dict, layer: str) -> None:
    """A structured weight's unit codes: in range, and their plane sizes are the record's (the sign stream's)."""
    w = rec.get("weight") or {}
    if w.get("encoding") == "planes" and weight_structure(w).kind in ("block", "channel"):
        decode_unit_levels(w, tensors, str(i), _weight_shape(At(""), rec["op"], rec["geometry"]), layer)


def check_tensors(header: dict, tensors: dict[str, torch.Tensor], where: Any) -> None:
    """Require exactly the tensors the (validated) records name, with their dtypes and shapes, all finite.

    Raises:
        FormatError: a missing, extra, mis-typed, mis-shaped or non-finite tensor, or a
            negative batch-norm variance.
    """
    named: set[str] = set()
    for i, rec in enumerate(header["layers"]):
        layer = f"packed model {where}: layer {i} ({rec['name']})"
        for key, (dtype, shape, note) in tensor_specs(i, rec).items():
            named.add(key)
            t = tensors.get(key)
            if t is None:
                raise FormatError(f"{layer}: tensor {key!r} is missing")
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise FormatError(f"{layer}: tensor {key!r} has {t.dtype} {list(t.shape)}, "
                                  f"expected {dtype} {list(shape)}{note}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise FormatError(f"{layer}: tensor {key!r}: invalid values (NaN or inf); allowed: finite numbers")
            if key.endswith(".running_var") and bool((t < 0).any()):
                raise FormatError(f"{layer}: tensor {key!r}: invalid values (negative); allowed: numbers >= 0")
        _check_unit_codes(i, rec, tensors, layer)
    for key in sorted(set(tensors) - named):
        raise FormatError(f"packed model {where}: tensor {key!r} belongs to no layer record")
