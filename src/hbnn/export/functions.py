"""The functions and tensor methods a captured ``forward`` may call, as op modules (:mod:`hbnn.export.capture`).

Each supported ``torch.fx`` ``call_function`` / ``call_method`` node has a *maker*
``maker(node, ctx) -> module`` (or ``(module, [input nodes])`` when some arguments are
constants) that checks the arguments and returns the equivalent module of
:mod:`hbnn.export.ops` or ``torch.nn``:

* ``a + b`` / ``torch.add`` of two tensors -> ``Add``; ``a - b`` -> ``Sub``; ``a * b`` -> ``Mul`` (broadcast);
  ``x + c``, ``c + x``, ``x - c``, ``x * c``, ``c * x``, ``x / c`` with a constant ``c`` (a
  number, or a parameter/buffer read in ``forward``, possibly ``c.expand_as(x)``) ->
  ``AddConstant(c)`` (``AddConstant(-c)`` for ``x - c``: the same float32 operation),
  ``MulConstant(c)``, ``DivConstant(c)``;
* ``torch.cat(xs, dim)`` with ``dim`` not the batch -> ``Cat(dim)``;
* activations (``F.relu``, ``torch.relu``, ``x.relu()``, their in-place forms, ``F.relu6``,
  ``F.hardtanh``, ``x.clamp(lo, hi)`` -> ``Hardtanh(lo, hi)``, ``x.clamp(min=0)`` -> ``ReLU``,
  ``F.leaky_relu``, ``F.silu``, ``F.hardswish``, ``torch.sigmoid``, ``F.hardsigmoid``,
  ``torch.tanh``, ``F.softmax`` / ``F.log_softmax`` along a named non-batch dim) -> the ``nn`` module;
* ``F.max_pool2d``, ``F.avg_pool2d``, ``F.adaptive_avg_pool2d``, ``F.adaptive_max_pool2d``
  -> the ``nn`` pool; ``x.mean((2, 3))`` -> ``GlobalAvgPool``;
* shape ops: ``torch.flatten(x, s, e)`` (``s >= 1``) -> ``nn.Flatten``;
  ``view``/``reshape``/``squeeze(d)``/``unsqueeze(d)``/``unflatten`` -> ``nn.Flatten(1)``
  when the result is ``[N, -1]``, else ``Reshape(shape)``, provided the result keeps the
  batch dimension: run on batches of 2 and of 3 (:class:`Context`), its shape must be
  ``[2, *shape]`` and ``[3, *shape]`` (so ``x.view(-1, K)`` with ``K = C H W`` is a flatten
  and ``x.view(2, -1)`` is refused); ``x.squeeze()`` without dims is refused (at batch 1 it
  drops the batch dimension);
* ``F.conv2d(x, w, b, stride, padding, dilation, groups)`` / ``F.linear(x, w, b)`` with a
  constant float32 weight and bias (parameters, or expressions of them: a weight-standardized
  ``w``) -> a float ``nn.Conv2d`` / ``nn.Linear`` holding them;
* ``x[:, :, ::s, ::s]`` -> ``Subsample``; ``F.pad(x, (0, 0, 0, 0, a, b))`` -> ``PadChannels``; other zero
  padding ``F.pad(x, (l, r[, t, b[, f, k]]))`` -> ``ZeroPad``;
  ``F.dropout(x, training=False)``, ``x.contiguous()``, ``x.clone()``, ``x.detach()`` -> identity.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

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
)

__all__ = ["Unsupported", "Context", "FUNCTIONS", "METHODS", "VIEWS", "is_batch", "is_sizes", "is_shape_expr",
           "describe", "inplace_arg"]


class Unsupported(Exception):
    """An unsupported call or argument (the capture turns it into one line naming the node)."""


class Context:
    """What a maker may ask about the graph besides the node itself.

    Args:
        is_tensor: whether an fx node is a tensor value of the graph (computed from the input).
        const: the constant (tensor or number) an fx node or literal stands for, else None.
        shape: ``shape(node, n)``, the output shape of ``node`` for a batch of ``n`` inputs
            (``n`` in 2, 3); raises :class:`Unsupported` when the input shape is unknown.
    """

    def __init__(self, is_tensor: Callable[[Any], bool], const: Callable[[Any], Any],
                 shape: Callable[[Any, int], tuple[int, ...]]):
        self.is_tensor, self.const, self.shape = is_tensor, const, shape


def _arg(node, i: int, key: str, default=None):
    """Positional argument ``i`` (0 = the node's first argument) or keyword ``key`` of an fx node."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise Unsupported(what)


def _no_extra(node, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(node.kwargs) - set(allowed))
    _need(not extra, f"keyword arguments {extra}")


# ----------------------------------------------------------------------------- arithmetic

def _constant_of(ctx: Context, v) -> torch.Tensor | None:
    """``v`` as a float32 constant tensor (numbers: shape ``[]``), or None if it is no constant."""
    c = ctx.const(v)
    if c is None or isinstance(c, bool):
        return None
    if isinstance(c, (int, float)):
        return torch.tensor(float(c), dtype=torch.float32)
    if isinstance(c, torch.Tensor):
        _need(c.dtype == torch.float32, f"a constant of dtype {c.dtype} (float32 only)")
        return c.detach()
    return None


def _binary(node, ctx: Context, what: str, both, with_const, commutes: bool):
    """``a (op) b``: ``both()`` for two tensors, ``with_const(c)`` for a tensor and a constant."""
    a, b = node.args[0], node.args[1]
    if ctx.is_tensor(a) and ctx.is_tensor(b):
        _need(both is not None, f"a {what} of two tensors")
        return both()
    if ctx.is_tensor(a) and _constant_of(ctx, b) is not None:
        return with_const(_constant_of(ctx, b)), [a]
    if commutes and ctx.is_tensor(b) and _constant_of(ctx, a) is not None:
        return with_const(_constant_of(ctx, a)), [b]
    raise Unsupported(f"a {what} of anything but a tensor and a tensor or constant (constant first: "
                      f"{'allowed' if commutes else 'not allowed'})")


def _add(node, ctx: Context):
    _no_extra(node, ("alpha",))
    _need(len(node.args) == 2, "an add of anything but two values")
    _need(node.kwargs.get("alpha", 1) == 1, "torch.add with alpha != 1")
    return _binary(node, ctx, "add", Add, AddConstant, commutes=True)


def _sub(node, ctx: Context):
    _no_extra(node, ("alpha",))
    _need(len(node.args) == 2 and node.kwargs.get("alpha", 1) == 1, "a subtraction other than x - c")
    return _binary(node, ctx, "subtraction", Sub, lambda c: AddConstant(-c), commutes=False)


def _mul(node, ctx: Context):
    _no_extra(node, ())
    _need(len(node.args) == 2, "a product of anything but two values")
    return _binary(node, ctx, "product", Mul, MulConstant, commutes=True)


def _div(node, ctx: Context):
    _no_extra(node, ("rounding_mode",))
    _need(len(node.args) == 2 and node.kwargs.get("rounding_mode") is None, "a division other than x / c")
    return _binary(node, ctx, "division", None, DivConstant, commutes=False)


# ----------------------------------------------------------------------------- tensors and shapes

def _rank(ctx: Context, x) -> int:
    return len(ctx.shape(x, 2))


def _cat(node, ctx: Context) -> nn.Module:
    _no_extra(node, ("dim", "tensors"))
    xs, dim = _arg(node, 0, "tensors"), _arg(node, 1, "dim", 0)
    _need(isinstance(xs, (list, tuple)) and len(xs) >= 2 and all(ctx.is_tensor(a) for a in xs),
          "torch.cat of anything but a list of two or more tensors")
    _need(isinstance(dim, int), f"torch.cat along dim {dim!r}")
    if dim < 0:
        dim += _rank(ctx, xs[0])
    _need(dim >= 1, f"torch.cat along dim {_arg(node, 1, 'dim', 0)!r} (the batch dimension; dim >= 1 only)")
    return Cat(dim)


def _mean(node, ctx: Context) -> nn.Module:
    _no_extra(node, ("dim", "keepdim"))
    dims, keepdim = _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False)
    _need(isinstance(dims, (list, tuple)) and sorted(dims) in ([2, 3], [-2, -1]) and isinstance(keepdim, bool),
          f"mean over dims {dims!r} (global pooling over (2, 3) only)")
    return GlobalAvgPool(keepdim)


def _flatten(node, ctx: Context) -> nn.Module:
    _no_extra(node, ("start_dim", "end_dim"))
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    _need(isinstance(start, int) and isinstance(end, int) and start >= 1,
          f"flatten(start_dim={start!r}, end_dim={end!r}) (start_dim >= 1)")
    return nn.Flatten(start, end)


def is_batch(v) -> bool:
    """``x.size(0)``, ``x.shape[0]`` or ``x.size()[0]``."""
    if getattr(v, "op", None) == "call_method" and v.target == "size":
        return len(v.args) == 2 and v.args[1] == 0 or v.kwargs.get("dim") == 0
    if getattr(v, "op", None) == "call_function" and v.target is operator.getitem and v.args[1] == 0:
        return is_sizes(v.args[0])
    return False


def is_sizes(v) -> bool:
    """``x.shape`` or ``x.size()``."""
    if getattr(v, "op", None) == "call_function" and v.target is getattr:
        return v.args[1] == "shape"
    return getattr(v, "op", None) == "call_method" and v.target == "size" and len(v.args) == 1 and not v.kwargs


_SIZE_ARITHMETIC = (operator.mul, operator.floordiv, operator.add, operator.sub, operator.getitem)


def is_shape_expr(v, shape_only: set) -> bool:
    """A size or shape of a tensor (``x.size(d)``, ``x.shape[d]``), or integer arithmetic on them."""
    if getattr(v, "op", None) == "call_method" and v.target == "size":
        return True
    if is_sizes(v):
        return True
    if getattr(v, "op", None) == "call_function" and v.target in _SIZE_ARITHMETIC:
        shaped = [hasattr(a, "op") and a in shape_only for a in v.args]
        return any(shaped) and all(s or isinstance(a, (int, slice)) for s, a in zip(shaped, v.args))
    return False


def _shape_op(node, ctx: Context) -> nn.Module:
    """A view/reshape/squeeze/unsqueeze: a flatten or a reshape if it keeps the batch dimension."""
    x = node.args[0]
    sizes = list(node.args[1:])
    if node.target in ("view", "reshape", torch.reshape) and not node.kwargs:
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = list(sizes[0])
        if len(sizes) == 2 and is_batch(sizes[0]) and sizes[1] == -1:  # needs no input shape
            return nn.Flatten(1, -1)
    if node.target in ("squeeze", torch.squeeze):
        _need(len(node.args) > 1 or "dim" in node.kwargs, "squeeze() without dims (at batch 1 it would drop the "
                                                          "batch dimension; name the dims)")
    inp, out2, out3 = ctx.shape(x, 2), ctx.shape(node, 2), ctx.shape(node, 3)
    _need(len(out2) >= 1 and out2[0] == 2 and out3[0] == 3 and out2[1:] == out3[1:],
          f"a result that does not keep the batch dimension first ({list(out2)} for a batch of 2, {list(out3)} "
          "for 3)")
    rest = tuple(out2[1:])
    if rest == (math.prod(inp[1:]),):
        return nn.Flatten(1, -1)
    return Reshape(rest)


def _slice(node, ctx: Context) -> nn.Module:
    idx = node.args[1]
    full = slice(None, None, None)
    ok = isinstance(idx, tuple) and len(idx) == 4 and idx[0] == full and idx[1] == full and all(
        isinstance(s, slice) and s.start in (None, 0) and s.stop is None and isinstance(s.step, int) and s.step >= 1
        for s in idx[2:])
    _need(ok, f"indexing x[{idx!r}] (x[:, :, ::s, ::s] only)")
    return Subsample([idx[2].step or 1, idx[3].step or 1])


def _pad(node, ctx: Context) -> nn.Module:
    _no_extra(node, ("mode", "value"))
    pad, mode, value = _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)
    ok = (isinstance(pad, (list, tuple)) and len(pad) in (2, 4, 6) and mode == "constant" and value in (None, 0, 0.0)
          and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pad))
    _need(ok, f"F.pad(pad={pad!r}, mode={mode!r}, value={value!r}) (zeros, (left, right[, top, bottom[, front, "
              "back]]) >= 0)")
    full = [*pad, 0, 0, 0, 0][:6]
    return PadChannels(full[4], full[5]) if full[:4] == [0, 0, 0, 0] else ZeroPad(full)


# ----------------------------------------------------------------------------- activations and pools

def _act(make, *params: tuple[str, int, object]):
    """A maker for an op with named parameters ``(name, position, default)`` (plus ``inplace``)."""

    def maker(node, ctx: Context) -> nn.Module:
        _no_extra(node, ("inplace", *(p[0] for p in params)))
        _need(len(node.args) <= 1 + len(params) + 1, "extra positional arguments")
        return make(*(_arg(node, i, key, default) for key, i, default in params))
    return maker


def _clamp(node, ctx: Context) -> nn.Module:
    _no_extra(node, ("min", "max"))
    lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
    _need(all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)),
          "bounds that are not numbers")
    if hi is None and lo == 0:
        return nn.ReLU()
    _need(lo is not None and hi is not None and float(lo) < float(hi),
          f"clamp(min={lo!r}, max={hi!r}) (both bounds, min < max, or min=0 alone)")
    return nn.Hardtanh(float(lo), float(hi))


def _pool(make, names: tuple[str, ...], indices: str | None):
    """A maker for ``F.*_pool2d(x, *names)`` (refusing ``return_indices=True``)."""

    def maker(node, ctx: Context) -> nn.Module:
        _no_extra(node, (*names, *((indices,) if indices else ())))
        _need(len(node.args) <= 1 + len(names) + (1 if indices else 0), "extra positional arguments")
        if indices:
            _need(_arg(node, 1 + len(names), indices, False) is False, "return_indices=True")
        kwargs = {k: _arg(node, 1 + i, k) for i, k in enumerate(names)}
        return make(**{k: v for k, v in kwargs.items() if v is not None})
    return maker


def _softmax(make):
    """A maker for ``F.softmax(x, dim)`` / ``x.softmax(dim)`` (a named dim, no dtype)."""

    def maker(node, ctx: Context) -> nn.Module:
        _no_extra(node, ("dim", "_stacklevel", "dtype"))
        dim = _arg(node, 1, "dim")
        _need(isinstance(dim, int) and not isinstance(dim, bool) and node.kwargs.get("dtype") is None
              and len(node.args) <= 2, f"dim={dim!r} (a named dim, no dtype)")
        _need(dim > 0 or dim < 0 and dim + _rank(ctx, node.args[0]) > 0, f"dim={dim!r} (the batch dimension)")
        return make(dim)
    return maker


def _weights(node, ctx: Context, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The constant float32 weight and bias (or None) of a functional conv/linear node."""
    _no_extra(node, names)
    _need(len(node.args) <= 1 + len(names), "extra positional arguments")
    w, b = _arg(node, 1, "weight"), _arg(node, 2, "bias")
    weight, bias = ctx.const(w), (None if b is None else ctx.const(b))
    _need(isinstance(weight, torch.Tensor) and weight.dtype == torch.float32 and (
        b is None or isinstance(bias, torch.Tensor) and bias.dtype == torch.float32),
        "a weight or bias that is not a float32 constant (a parameter or an expression of parameters)")
    return weight, bias


def _functional_conv(node, ctx: Context):
    names = ("weight", "bias", "stride", "padding", "dilation", "groups")
    weight, bias = _weights(node, ctx, names)
    geo = {k: _arg(node, 3 + i, k, d) for i, (k, d) in enumerate(zip(names[2:], (1, 0, 1, 1)))}
    _need(weight.dim() == 4 and not isinstance(geo["padding"], str), "a weight other than [O, I/g, kh, kw] or "
                                                                     "string padding")
    conv = nn.Conv2d(weight.shape[1] * geo["groups"], weight.shape[0], tuple(weight.shape[2:]), bias=bias is not None,
                     **geo)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv.eval(), [node.args[0]]


def _functional_linear(node, ctx: Context):
    weight, bias = _weights(node, ctx, ("weight", "bias"))
    _need(weight.dim() == 2, "a weight other than [O, I]")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.eval(), [node.args[0]]


def _dropout(node, ctx: Context) -> nn.Module:
    _need(_arg(node, 2, "training", True) is False, "F.dropout in training mode")
    return nn.Identity()


def _identity(node, ctx: Context) -> nn.Module:
    _no_extra(node, ("memory_format",))
    return nn.Identity()


_HARDTANH = _act(lambda lo, hi: nn.Hardtanh(float(lo), float(hi)), ("min_val", 1, -1.0), ("max_val", 2, 1.0))
_LEAKY = _act(lambda s: nn.LeakyReLU(float(s)), ("negative_slope", 1, 0.01))
_MAX_POOL = _pool(nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"), "return_indices")
_AVG_POOL = _pool(nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                 "divisor_override"), None)

#: fx ``call_function`` targets -> makers.
FUNCTIONS: dict[Any, Callable] = {
    operator.add: _add, operator.iadd: _add, torch.add: _add, operator.sub: _sub, operator.isub: _sub, torch.sub: _sub,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul, operator.truediv: _div, operator.itruediv: _div,
    torch.div: _div, torch.cat: _cat, torch.concat: _cat, torch.mean: _mean, torch.flatten: _flatten,
    torch.reshape: _shape_op, torch.squeeze: _shape_op, torch.unsqueeze: _shape_op, operator.getitem: _slice,
    F.pad: _pad, F.relu: _act(nn.ReLU), torch.relu: _act(nn.ReLU), F.relu_: _act(nn.ReLU),
    torch.relu_: _act(nn.ReLU), F.relu6: _act(nn.ReLU6), F.hardtanh: _HARDTANH, F.hardtanh_: _HARDTANH,
    torch.clamp: _clamp, torch.clip: _clamp, F.leaky_relu: _LEAKY, F.leaky_relu_: _LEAKY, F.silu: _act(nn.SiLU),
    F.hardswish: _act(nn.Hardswish), torch.sigmoid: _act(nn.Sigmoid), F.sigmoid: _act(nn.Sigmoid),
    F.hardsigmoid: _act(nn.Hardsigmoid), torch.tanh: _act(nn.Tanh), F.tanh: _act(nn.Tanh),
    F.softmax: _softmax(nn.Softmax), torch.softmax: _softmax(nn.Softmax), F.log_softmax: _softmax(nn.LogSoftmax),
    torch.log_softmax: _softmax(nn.LogSoftmax), F.max_pool2d: _MAX_POOL, F.avg_pool2d: _AVG_POOL,
    F.adaptive_avg_pool2d: _act(nn.AdaptiveAvgPool2d, ("output_size", 1, None)),
    F.adaptive_max_pool2d: _pool(nn.AdaptiveMaxPool2d, ("output_size",), "return_indices"),
    F.conv2d: _functional_conv, F.linear: _functional_linear,
    F.dropout: _dropout, F.dropout1d: _dropout, F.dropout2d: _dropout,
}
#: fx ``call_method`` targets (tensor methods) -> makers.
METHODS: dict[str, Callable] = {
    "add": _add, "add_": _add, "sub": _sub, "sub_": _sub, "mul": _mul, "mul_": _mul, "div": _div, "div_": _div,
    "mean": _mean, "flatten": _flatten, "view": _shape_op, "reshape": _shape_op, "squeeze": _shape_op,
    "unsqueeze": _shape_op, "unflatten": _shape_op, "relu": _act(nn.ReLU), "relu_": _act(nn.ReLU),
    "clamp": _clamp, "clamp_": _clamp, "clip": _clamp, "sigmoid": _act(nn.Sigmoid), "sigmoid_": _act(nn.Sigmoid),
    "tanh": _act(nn.Tanh), "tanh_": _act(nn.Tanh), "softmax": _softmax(nn.Softmax),
    "log_softmax": _softmax(nn.LogSoftmax), "contiguous": _identity, "clone": _identity,
    "detach": lambda node, ctx: nn.Identity(),
}

#: Methods and functions whose result may share memory with their first argument.
VIEWS = ({"view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten", "expand", "expand_as", "contiguous",
          "detach", "view_as", "transpose", "permute", "narrow", "select"},
         {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem, F.dropout, F.dropout1d,
          F.dropout2d})

#: Position of ``inplace`` among the arguments of functions that take it.
_INPLACE_AT = {F.relu: 1, F.relu6: 1, F.hardtanh: 3, F.leaky_relu: 2, F.silu: 1, F.hardswish: 1, F.hardsigmoid: 1}


def inplace_arg(node) -> bool:
    """Whether a function or method node writes into its first argument."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op != "call_function":
        return False
    if node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
        return True
    if getattr(node.target, "__name__", "").endswith("_"):
        return True
    at = _INPLACE_AT.get(node.target)
    return at is not None and _arg(node, at, "inplace", False) is True


def describe(node) -> str:
    """``tensor method .view()`` / ``function torch.cat`` for messages."""
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    target = node.target
    return f"function {getattr(target, '__module__', None) or ''}.{getattr(target, '__name__', target)}".replace(
        "_operator.", "operator.").replace("builtins.", "")
