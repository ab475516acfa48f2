"""Which ops a packed model may hold: their records (``op`` + ``attrs``) and engine modules.

A packed model is a graph of ops (:mod:`hbnn.export.capture` finds it with ``torch.fx``).
Convolutions, linear layers, batch norm, PReLU and the constant ops carry tensors
(:mod:`hbnn.export.records`); the stateless ops here are (de)serialised by
:func:`simple_record` / :func:`build_simple`. Every op takes one input except ``add`` and
``sub`` and ``mul`` (two) and ``cat`` (two or more). The graph-only ops (``N`` the batch size):

    add, sub        a + b, a - b                        (residual add, float; one shape)
    mul             a * b                               (b broadcast to a's shape or a to b's:
                                                         squeeze-and-excitation scaling)
    cat             torch.cat([x_1, ..., x_k], dim)     dim >= 1 (never the batch)
    global_avg_pool x.mean((2, 3), keepdim)             -> [N, C] or [N, C, 1, 1]
    subsample       x[:, :, ::s_h, ::s_w]               -> [N, C, ceil(H / s_h), ceil(W / s_w)]
    pad_channels    F.pad(x, (0, 0, 0, 0, before, after)), zeros -> [N, before + C + after, H, W]
    zero_pad        F.pad(x, (l, r, t, b, f, k)), zeros  -> [N, f + C + k, t + H + b, l + W + r]
    reshape         x.reshape(N, *shape)                (the batch dimension kept)
    leaky_relu      max(x, 0) + negative_slope min(x, 0)
    silu, hardswish x sigmoid(x), x relu6(x + 3) / 6
    sigmoid, hardsigmoid, tanh  1 / (1 + exp(-x)), relu6(x + 3) / 6, tanh(x)
    softmax, log_softmax        exp(x_i) / sum_j exp(x_j) along dim (never the batch), its log
    add_constant, mul_constant, div_constant   x + c, x * c, x / c  (c a stored float32 tensor,
                                                broadcast to x's shape: a learnable bias or scale)

``ReLU6`` is stored as ``hardtanh`` with bounds 0 and 6 (the same function); ``x - c``
is stored as ``x + (-c)`` (the same float32 operation).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from hbnn.errors import FormatError

__all__ = ["INPUT", "SUPPORTED_LAYERS", "SUPPORTED_FUNCTIONS", "SIMPLE_OPS", "CONSTANT_OPS", "ARITY", "Add", "Sub",
           "Mul", "Cat", "GlobalAvgPool", "Subsample", "PadChannels", "ZeroPad", "Reshape", "ConstantOp",
           "AddConstant", "MulConstant", "DivConstant", "simple_record", "build_simple", "unsupported", "arity"]

#: The name by which graph nodes refer to the model input.
INPUT = "input"

#: Module types an exported model may contain (containers such as ``Sequential`` are traced
#: through; dropout becomes the identity, ``ReLU6`` a hardtanh).
SUPPORTED_LAYERS = (
    "HBConv2d", "HBLinear", "Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d", "ReLU", "ReLU6", "Hardtanh",
    "LeakyReLU", "PReLU", "SiLU", "Hardswish", "Sigmoid", "Hardsigmoid", "Tanh", "Softmax", "LogSoftmax",
    "MaxPool2d", "AvgPool2d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "ZeroPad2d", "Flatten", "Dropout", "Dropout1d", "Dropout2d", "Identity",
)
#: Functions and tensor methods a model's ``forward`` may call (:mod:`hbnn.export.capture`).
SUPPORTED_FUNCTIONS = (
    "a + b / a += b / torch.add / a - b (two tensors of one shape)", "a * b (SE scaling, broadcast)",
    "x + c / x - c / x * c / x / c (c a number, parameter or buffer broadcast to x)",
    "torch.cat (dim >= 1)", "F.relu", "F.relu6", "F.hardtanh", "x.clamp(lo, hi) / x.clamp(min=0)", "F.leaky_relu",
    "F.silu", "F.hardswish", "torch.sigmoid", "F.hardsigmoid", "torch.tanh", "F.softmax / F.log_softmax (dim >= 1)",
    "F.max_pool2d", "F.avg_pool2d",
    "F.adaptive_avg_pool2d", "F.adaptive_max_pool2d", "F.dropout (eval)", "x.mean((2, 3)) (global pooling)",
    "flatten / view / reshape / squeeze(d) / unsqueeze(d) keeping the batch dimension", "x[:, :, ::s, ::s]",
    "F.pad with zeros (any of W, H, C)", "F.conv2d / F.linear with constant weights", "x.contiguous()",
)


class Add(nn.Module):
    """``a + b`` (the residual add, in float)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Sub(nn.Module):
    """``a - b`` (two tensors of one shape)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


class Mul(nn.Module):
    """``a * b`` (elementwise, one input broadcast to the other's shape: SE-style scaling)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Cat(nn.Module):
    """``torch.cat(xs, dim)`` along a dimension other than the batch (1: channels)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GlobalAvgPool(nn.Module):
    """``x.mean((2, 3), keepdim)``: ``[N, C, H, W]`` -> ``[N, C]`` (or ``[N, C, 1, 1]``)."""

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"keepdim={self.keepdim}"


class Subsample(nn.Module):
    """``x[:, :, ::s_h, ::s_w]`` (the option-A shortcut's spatial step)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = tuple(stride) if isinstance(stride, (list, tuple)) else (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride[0], :: self.stride[1]]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class PadChannels(nn.Module):
    """``F.pad(x, (0, 0, 0, 0, before, after))``: zero channels before and after ``x``'s."""

    def __init__(self, before: int, after: int):
        super().__init__()
        self.before, self.after = before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

    def extra_repr(self) -> str:
        return f"before={self.before}, after={self.after}"


class ZeroPad(nn.Module):
    """``F.pad(x, (left, right, top, bottom, front, back))`` with zeros (``nn.ZeroPad2d``: front = back = 0)."""

    def __init__(self, padding):
        super().__init__()
        self.padding = tuple(int(p) for p in padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.padding)

    def extra_repr(self) -> str:
        return f"padding={list(self.padding)}"


class Reshape(nn.Module):
    """``x.reshape(N, *shape)``: any view/reshape/squeeze/unsqueeze that keeps the batch dimension.

    The result is a fresh tensor, never a view of ``x`` (the engine may run the next
    activation in place on a node's output).
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(x.shape[0], *self.shape)
        return y.clone() if y._base is not None or y.data_ptr() == x.data_ptr() else y

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}"


class ConstantOp(nn.Module):
    """``x (op) c`` with a stored float32 constant ``c`` that broadcasts to ``x``'s shape
    (a parameter or buffer read in ``forward``, or a number: ``c`` of shape ``[]``)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value.detach().to(torch.float32).clone())

    def extra_repr(self) -> str:
        return f"shape={list(self.value.shape)}"


class AddConstant(ConstantOp):
    """``x + c`` (``x - c`` is ``x + (-c)``, the same float32 operation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


class MulConstant(ConstantOp):
    """``x * c``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value


class DivConstant(ConstantOp):
    """``x / c``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value


#: Op name -> module of the ops that hold one constant tensor ``value`` (:mod:`hbnn.export.records`).
CONSTANT_OPS: dict[str, type[ConstantOp]] = {"add_constant": AddConstant, "mul_constant": MulConstant,
                                             "div_constant": DivConstant}


def _pair(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def _hardtanh_attrs(m: nn.Module) -> dict:
    return {"min_val": float(m.min_val), "max_val": float(m.max_val)}


# op name -> (module type(s), attrs of a module, module from attrs)
SIMPLE_OPS: dict[str, tuple[tuple[type, ...], Callable[[nn.Module], dict], Callable[..., nn.Module]]] = {
    "relu": ((nn.ReLU,), lambda m: {}, lambda: nn.ReLU()),
    "hardtanh": ((nn.Hardtanh, nn.ReLU6), _hardtanh_attrs,
                 lambda min_val, max_val: nn.Hardtanh(float(min_val), float(max_val))),
    "max_pool2d": ((nn.MaxPool2d,), lambda m: {
        "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
        "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}, nn.MaxPool2d),
    "avg_pool2d": ((nn.AvgPool2d,), lambda m: {
        "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
        "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad),
        "divisor_override": m.divisor_override}, nn.AvgPool2d),
    "adaptive_avg_pool2d": ((nn.AdaptiveAvgPool2d,), lambda m: {"output_size": _pair(m.output_size)},
                            nn.AdaptiveAvgPool2d),
    "adaptive_max_pool2d": ((nn.AdaptiveMaxPool2d,), lambda m: {"output_size": _pair(m.output_size)},
                            nn.AdaptiveMaxPool2d),
    "flatten": ((nn.Flatten,), lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}, nn.Flatten),
    "identity": ((nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d), lambda m: {}, lambda: nn.Identity()),
    "leaky_relu": ((nn.LeakyReLU,), lambda m: {"negative_slope": float(m.negative_slope)},
                   lambda negative_slope: nn.LeakyReLU(float(negative_slope))),
    "silu": ((nn.SiLU,), lambda m: {}, lambda: nn.SiLU()),
    "hardswish": ((nn.Hardswish,), lambda m: {}, lambda: nn.Hardswish()),
    "sigmoid": ((nn.Sigmoid,), lambda m: {}, lambda: nn.Sigmoid()),
    "hardsigmoid": ((nn.Hardsigmoid,), lambda m: {}, lambda: nn.Hardsigmoid()),
    "tanh": ((nn.Tanh,), lambda m: {}, lambda: nn.Tanh()),
    "softmax": ((nn.Softmax,), lambda m: {"dim": m.dim}, lambda dim: nn.Softmax(dim)),
    "log_softmax": ((nn.LogSoftmax,), lambda m: {"dim": m.dim}, lambda dim: nn.LogSoftmax(dim)),
    "add": ((Add,), lambda m: {}, Add),
    "sub": ((Sub,), lambda m: {}, Sub),
    "mul": ((Mul,), lambda m: {}, Mul),
    "reshape": ((Reshape,), lambda m: {"shape": list(m.shape)}, Reshape),
    "cat": ((Cat,), lambda m: {"dim": m.dim}, Cat),
    "global_avg_pool": ((GlobalAvgPool,), lambda m: {"keepdim": m.keepdim}, GlobalAvgPool),
    "subsample": ((Subsample,), lambda m: {"stride": list(m.stride)}, Subsample),
    "pad_channels": ((PadChannels,), lambda m: {"before": m.before, "after": m.after}, PadChannels),
    "zero_pad": ((ZeroPad, nn.ZeroPad2d), lambda m: {"padding": [*m.padding, 0, 0][:6]}, ZeroPad),
}

#: ``(least, most)`` inputs of an op (``None``: no upper bound); every other op takes one.
ARITY: dict[str, tuple[int, int | None]] = {"add": (2, 2), "sub": (2, 2), "mul": (2, 2), "cat": (2, None)}


def arity(op: str) -> tuple[int, int | None]:
    """``(least, most)`` inputs of ``op``."""
    return ARITY.get(op, (1, 1))


def unsupported(what: str) -> FormatError:
    """The one-line error for a layer or op a packed model cannot hold (lists what it can)."""
    return FormatError(f"{what} is not supported by the packed format; supported layers: {', '.join(SUPPORTED_LAYERS)}"
                       f"; supported functions: {'; '.join(SUPPORTED_FUNCTIONS)}")


def simple_record(module: nn.Module) -> tuple[str, dict] | None:
    """``(op, attrs)`` for a stateless op, or ``None`` if ``module`` is not one."""
    for op, (types, attrs, _) in SIMPLE_OPS.items():
        if type(module) in types:
            if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and module.return_indices:
                raise unsupported(f"{type(module).__name__} with return_indices=True")
            if isinstance(module, (nn.Softmax, nn.LogSoftmax)) and not isinstance(module.dim, int):
                raise unsupported(f"{type(module).__name__} with dim={module.dim!r} (name the dim)")
            return op, attrs(module)
    return None


def build_simple(op: str, attrs: dict, where: str) -> nn.Module:
    """The module of a stateless op record.

    Raises:
        FormatError: unknown op or attributes that do not fit it.
    """
    if op not in SIMPLE_OPS:
        raise FormatError(f"{where}: unknown layer op {op!r}; supported layers: {', '.join(SUPPORTED_LAYERS)}")
    try:
        return SIMPLE_OPS[op][2](**attrs)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: invalid attributes for {op}: {attrs!r} ({exc})") from None
