"""ONNX export of a packed model with standard ops only (built with ``onnx.helper``).

Quantized weights become constants ``w_hat * out_scale`` (the dequantized planes with the
folded output scale); activation binarization at the running estimates becomes
elementwise ops. For an input ``x`` with mix bitwidths ``b_0 < ... < b_{K-1}``,
thresholds ``t_j``, mean magnitude ``m`` and scales ``mu_i``::

    key = Abs(Sub(Abs(x), m))            middle_out   (top_down: Neg(Abs(x)), bottom_up: Abs(x))
    M   = b_0 + sum_j (b_{j+1} - b_j) * Cast(Greater(key, t_j))
    E_0 = x;  for i = 0..n-1:
        step_i = Where(Greater(E_i, 0), mu_i, -mu_i) * Cast(Greater(M, i))    (i > 0)
        x_hat += step_i;  E_{i+1} = E_i - step_i

which is the same float32 arithmetic as ``hbnn.quant`` at inference, so onnxruntime sees
the same ``x_hat`` and the convolutions differ from the packed kernels only by
summation order. The graph's nodes map one to one (``add`` / ``sub`` / ``mul`` -> ``Add`` /
``Sub`` / ``Mul``, ``cat`` -> ``Concat``, ``global_avg_pool`` -> ``ReduceMean``,
``subsample`` -> ``Slice`` with steps, ``pad_channels`` / ``zero_pad`` -> ``Pad``, ``reshape`` ->
``Reshape`` to ``[0, *shape]`` (0: the batch kept), ``add_constant`` / ``mul_constant`` /
``div_constant`` -> ``Add`` / ``Mul`` / ``Div`` with the constant, ``leaky_relu`` ->
``LeakyRelu``, ``prelu`` -> ``PRelu``, ``silu`` -> ``Mul(x, Sigmoid(x))``, ``hardswish`` ->
``HardSwish``, ``sigmoid``, ``tanh``, ``softmax`` / ``log_softmax`` -> ``Softmax`` /
``LogSoftmax`` on the same axis, ``hardsigmoid`` -> ``HardSigmoid(alpha=1/6, beta=1/2)``
(torch computes ``relu6(x + 3) / 6``: equal up to float32 rounding),
``adaptive_max_pool2d`` to 1x1 -> ``GlobalMaxPool``), each reading its inputs' values by
node. ``torch.onnx.export`` is not used: its default (dynamo) exporter needs
``onnxscript``, and hand-built graphs make the op set explicit. Opset 17.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from hbnn.errors import FormatError
from hbnn.export.engine import PackedConv2d, PackedLayer, PackedLinear, PackedModel
from hbnn.export.ops import (
    Add,
    AddConstant,
    Cat,
    DivConstant,
    GlobalAvgPool,
    Mul,
    MulConstant,
    PadChannels,
    Reshape,
    Sub,
    Subsample,
    ZeroPad,
    unsupported,
)
from hbnn.quant.functional import broadcast_scale

__all__ = ["OPSET", "build_onnx", "to_onnx"]

OPSET = 17


class _Graph:
    """Nodes and constant initializers with unique names."""

    def __init__(self, helper, numpy_helper):
        self.h, self.nh = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value, stem: str = "c") -> str:
        name = self.name(stem)
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        out = self.name(stem or op_type.lower())
        self.nodes.append(self.h.make_node(op_type, inputs, [out], **attrs))
        return out


def _f32(v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


def _act_ops(g: _Graph, x: str, act, where: str) -> str:
    """Elementwise binarization at the running estimates (see the module docstring).

    Raises:
        FormatError: a structured activation map (its unit keys have no ONNX form here).
    """
    spec, bits = act.spec, list(act.mix.bits)
    if not act.structure.is_entry and len(bits) > 1:
        raise FormatError(f"{where}: activation map structure {act.structure.name} has no ONNX form here "
                          "(per-entry maps only); run the packed file with hbnn.export.load")
    scales = act.running_scales.float()
    bitmap = None
    if len(bits) > 1:
        a = g.op("Abs", [x])
        if spec.heuristic == "middle_out":
            key = g.op("Abs", [g.op("Sub", [a, g.const(act.running_mean_abs.float())])])
        elif spec.heuristic == "top_down":
            key = g.op("Neg", [a])
        else:
            key = a
        bitmap = g.const(_f32(bits[0]), "b0")
        for j, t in enumerate(act.running_thresholds.float().tolist()):
            above = g.op("Cast", [g.op("Greater", [key, g.const(_f32(t), "t")])], to=1)
            bitmap = g.op("Add", [bitmap, g.op("Mul", [above, g.const(_f32(bits[j + 1] - bits[j]), "db")])])
    residual, out = x, None
    for i in range(scales.shape[0]):
        mu = float(scales[i])
        pos = g.op("Greater", [residual, g.const(_f32(0.0), "zero")])
        step = g.op("Where", [pos, g.const(_f32(mu), "mu"), g.const(_f32(-mu), "negmu")])
        if i > 0 and bitmap is not None:
            active = g.op("Cast", [g.op("Greater", [bitmap, g.const(_f32(i), "i")])], to=1)
            step = g.op("Mul", [step, active])
        out = step if out is None else g.op("Add", [out, step])
        residual = g.op("Sub", [residual, step])
    return out


def _scaled_weight(layer: PackedLayer) -> torch.Tensor:
    w = layer.weight.float()
    if layer.out_scale is not None:
        w = w * broadcast_scale(layer.out_scale, w, 0)
    return w


def _packed(g: _Graph, x: str, layer: PackedLayer, where: str) -> str:
    if layer.act is not None:
        x = _act_ops(g, x, layer.act, where)
    inputs = [x, g.const(_scaled_weight(layer), "w")]
    if layer.bias is not None:
        inputs.append(g.const(layer.bias.float(), "b"))
    if isinstance(layer, PackedLinear):
        return g.op("Gemm", inputs, transB=1)
    ph, pw = layer.padding
    return g.op("Conv", inputs, strides=list(layer.stride), pads=[ph, pw, ph, pw],
                dilations=list(layer.dilation), group=layer.groups)


def _conv(g: _Graph, x: str, m: nn.Conv2d, where: str) -> str:
    if m.padding_mode != "zeros":
        raise unsupported(f"{where}: Conv2d with padding_mode={m.padding_mode!r} in ONNX")
    attrs = dict(strides=list(m.stride), dilations=list(m.dilation), group=m.groups)
    if m.padding == "same":
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        ph, pw = (0, 0) if m.padding == "valid" else m.padding
        attrs["pads"] = [ph, pw, ph, pw]
    inputs = [x, g.const(m.weight)] + ([g.const(m.bias)] if m.bias is not None else [])
    return g.op("Conv", inputs, **attrs)


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _pool(g: _Graph, x: str, m: nn.Module, where: str) -> str:
    k, s, p = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding)
    if isinstance(m, nn.MaxPool2d):
        return g.op("MaxPool", [x], kernel_shape=k, strides=s, pads=p + p, dilations=_pair(m.dilation),
                    ceil_mode=int(m.ceil_mode))
    if m.divisor_override is not None:
        raise unsupported(f"{where}: AvgPool2d with divisor_override in ONNX")
    return g.op("AveragePool", [x], kernel_shape=k, strides=s, pads=p + p, ceil_mode=int(m.ceil_mode),
                count_include_pad=int(m.count_include_pad))


def _i64(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


_CONSTANT_ONNX = ((AddConstant, "Add"), (MulConstant, "Mul"), (DivConstant, "Div"))


def _graph_op(g: _Graph, xs: list[str], m: nn.Module, rank: int) -> str | None:
    """The graph-only and newer elementwise ops (None if ``m`` is none of them)."""
    x = xs[0]
    if isinstance(m, Add):
        return g.op("Add", xs)
    if isinstance(m, Sub):
        return g.op("Sub", xs)
    if isinstance(m, Mul):
        return g.op("Mul", xs)
    for cls, op_type in _CONSTANT_ONNX:
        if isinstance(m, cls):
            return g.op(op_type, [x, g.const(m.value.float())])
    if isinstance(m, Reshape):
        return g.op("Reshape", [x, g.const(_i64([0, *m.shape]))])
    if isinstance(m, Cat):
        return g.op("Concat", xs, axis=m.dim)
    if isinstance(m, GlobalAvgPool):
        return g.op("ReduceMean", [x], axes=[2, 3], keepdims=int(m.keepdim))
    if isinstance(m, Subsample):
        big = np.iinfo(np.int64).max
        return g.op("Slice", [x, g.const(_i64([0, 0])), g.const(_i64([big, big])), g.const(_i64([2, 3])),
                              g.const(_i64(list(m.stride)))])
    if isinstance(m, ZeroPad):
        left, right, top, bottom, front, back = m.padding
        return g.op("Pad", [x, g.const(_i64([0, front, top, left, 0, back, bottom, right]))], mode="constant")
    if isinstance(m, PadChannels):
        return g.op("Pad", [x, g.const(_i64([0, m.before, 0, 0, 0, m.after, 0, 0]))], mode="constant")
    if isinstance(m, nn.LeakyReLU):
        return g.op("LeakyRelu", [x], alpha=float(m.negative_slope))
    if isinstance(m, nn.PReLU):
        slope = m.weight.detach().float()
        if slope.numel() > 1:  # per channel (dim 1): broadcast over the trailing dims
            slope = slope.reshape(-1, *([1] * (rank - 2)))
        return g.op("PRelu", [x, g.const(slope)])
    if isinstance(m, nn.SiLU):
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    return _elementwise(g, x, m)


def _elementwise(g: _Graph, x: str, m: nn.Module) -> str | None:
    if isinstance(m, nn.Hardswish):
        return g.op("HardSwish", [x])
    if isinstance(m, nn.Sigmoid):
        return g.op("Sigmoid", [x])
    if isinstance(m, nn.Tanh):
        return g.op("Tanh", [x])
    if isinstance(m, nn.Softmax):
        return g.op("Softmax", [x], axis=m.dim)
    if isinstance(m, nn.LogSoftmax):
        return g.op("LogSoftmax", [x], axis=m.dim)
    if isinstance(m, nn.Hardsigmoid):
        return g.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    return None


def _float_op(g: _Graph, x: str, m: nn.Module, where: str) -> str:
    if isinstance(m, nn.Conv2d):
        return _conv(g, x, m, where)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return g.op("BatchNormalization", [x, g.const(m.weight), g.const(m.bias), g.const(m.running_mean),
                                           g.const(m.running_var)], epsilon=float(m.eps))
    if isinstance(m, nn.ReLU):
        return g.op("Relu", [x])
    if isinstance(m, nn.Hardtanh):
        return g.op("Clip", [x, g.const(_f32(m.min_val)), g.const(_f32(m.max_val))])
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool(g, x, m, where)
    if isinstance(m, nn.AdaptiveAvgPool2d) and _pair(m.output_size) == [1, 1]:
        return g.op("GlobalAveragePool", [x])
    if isinstance(m, nn.AdaptiveMaxPool2d) and _pair(m.output_size) == [1, 1]:
        return g.op("GlobalMaxPool", [x])
    if isinstance(m, nn.Flatten) and m.end_dim == -1:
        return g.op("Flatten", [x], axis=m.start_dim)
    if isinstance(m, nn.Identity):
        return x
    raise unsupported(f"{where}: {type(m).__name__}({m.extra_repr()}) in ONNX")


def build_onnx(model: PackedModel, *, input_shape=None):
    """The ``onnx.ModelProto`` of a packed model (input ``"input"``, output ``"logits"``, dynamic batch).

    Raises:
        FormatError: a layer has no ONNX form here (e.g. adaptive pooling to more than 1x1).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = input_shape or model.header.get("input_shape")
    if shape is None:
        raise FormatError("to_onnx: the packed model has no input_shape; pass input_shape=[C, H, W]")
    g = _Graph(helper, numpy_helper)
    ranks = _input_ranks(model, shape)
    values = {-1: "input"}
    for i, (name, layer) in enumerate(model.named_layers()):
        where = f"layer {i} ({name})"
        xs = [values[j] for j in model.inputs[i]]
        if isinstance(layer, (PackedConv2d, PackedLinear)):
            values[i] = _packed(g, xs[0], layer, where)
        else:
            out = _graph_op(g, xs, layer, ranks[i])
            values[i] = out if out is not None else _float_op(g, xs[0], layer, where)
    g.nodes.append(helper.make_node("Identity", [values[len(model.layers) - 1]], ["logits"]))
    out_shape = list(model(torch.zeros(1, *shape)).shape[1:])
    graph = helper.make_graph(
        g.nodes, "hbnn_packed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", *out_shape])], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hbnn")
    proto.ir_version = min(proto.ir_version, 8)  # readable by older onnxruntime builds too
    onnx.checker.check_model(proto)
    return proto


def _input_ranks(model: PackedModel, shape) -> list[int]:
    """The rank (batch included) of each node's first input, from a one-sample run of the
    graph one node at a time (fused steps would skip nodes)."""
    ranks: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: ranks.append(args[0].dim())) for layer in model.layers]
    try:
        with model.node_by_node():
            model(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
    return ranks


def to_onnx(model: PackedModel | str | os.PathLike, path: str | os.PathLike, *, input_shape=None) -> None:
    """Write the ONNX form of a packed model (a :class:`PackedModel` or a packed file), atomically."""
    from hbnn.export.format import load
    from hbnn.io import atomic_write_bytes

    if not isinstance(model, PackedModel):
        model = load(model)
    with torch.no_grad():
        proto = build_onnx(model, input_shape=input_shape)
    atomic_write_bytes(path, proto.SerializeToString())
