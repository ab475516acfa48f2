"""Graph capture for export: a model's eval ``forward`` as a DAG of supported ops (``torch.fx``).

:func:`capture` traces the model with :func:`torch.fx.symbolic_trace`'s machinery, binarized
layers, convolutions and linear layers (and every ``torch.nn`` layer, as fx does) being
leaves, and turns each graph node into a :class:`GraphNode` holding a module:

* a leaf module call keeps its module (its quantizers' state is read from it at export);
* a supported function or tensor method becomes the equivalent module: ``a + b``,
  ``a += b``, ``torch.add`` -> :class:`~hbnn.export.ops.Add`; ``torch.cat(xs, 1)`` ->
  :class:`~hbnn.export.ops.Cat`; ``F.relu``/``F.relu6``/``F.hardtanh``/``F.leaky_relu``/
  ``F.silu``/``F.hardswish`` -> ``nn.ReLU``/``nn.ReLU6``/...; ``x.mean((2, 3))`` ->
  :class:`~hbnn.export.ops.GlobalAvgPool`; ``torch.flatten``/``x.view(x.size(0), -1)``/
  ``x.reshape(x.shape[0], -1)`` -> ``nn.Flatten``; ``x[:, :, ::s, ::s]`` ->
  :class:`~hbnn.export.ops.Subsample`; ``F.pad(x, (0, 0, 0, 0, a, b))`` ->
  :class:`~hbnn.export.ops.PadChannels` (so the ResNets' option-A shortcut,
  ``hbnn.models._resnet_blocks.ZeroPadShortcut``, is traced through);
* ``x.size(0)`` / ``x.shape[0]`` only feed a flatten's batch dimension.

Node names are the leaf modules' qualified names; a function node is named
``<enclosing module>.<fx node name>`` (e.g. ``features.layer1.0.add``). Inputs refer to
earlier nodes by name, the model input being :data:`INPUT`. Anything else -- data-dependent
control flow (fx cannot trace it), an unsupported module, function or argument, a value
that is never used, more than one input or output -- is one :class:`hbnn.errors.FormatError`
line naming the module or op and listing what is supported
(:func:`hbnn.export.ops.unsupported`).

``torch.fx`` records ``a += b`` as ``a + b``: an in-place op on a tensor that is read again
(``y = conv(x); z = y; z += x; return y + z``) is captured as something else than the
model computes. :func:`verify_capture` therefore runs the traced graph and the model
(in eval mode, on one random batch) and requires identical outputs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hbnn.errors import FormatError
from hbnn.export.ops import INPUT, Add, Cat, GlobalAvgPool, PadChannels, Subsample, simple_record, unsupported
from hbnn.nn import HBConv2d, HBLayerMixin, HBLinear

__all__ = ["INPUT", "GraphNode", "capture", "verify_capture"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class GraphNode:
    """One op of a captured graph: ``module(*[value of n] for n in inputs)``."""

    name: str
    module: nn.Module
    inputs: list[str] = field(default_factory=list)


class _Unsupported(Exception):
    """An unsupported call or argument (turned into :func:`unsupported` naming the node)."""


def _tracer():
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        """Leaves: binarized layers, convs and linear layers (plus torch.nn's); remembers where tracing failed."""

        path: list[str] = []
        failed_in: str | None = None

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, (HBLayerMixin, nn.Conv2d, nn.Linear)) or super().is_leaf_module(m, qualname)

        def call_module(self, m, forward, args, kwargs):
            self.path.append(self.path_of_module(m))
            try:
                return super().call_module(m, forward, args, kwargs)
            except Exception:
                if self.failed_in is None:
                    self.failed_in = self.path[-1]
                raise
            finally:
                self.path.pop()

    tracer = _Tracer()
    tracer.path = []
    return tracer


def _is_known(m: nn.Module) -> bool:
    if isinstance(m, (HBConv2d, HBLinear)):
        return True
    if type(m) in (nn.Conv2d, nn.Linear, nn.PReLU, *_BN):
        return True
    return simple_record(m) is not None


# ----------------------------------------------------------------------------- functions -> modules

def _arg(node, i: int, key: str, default=None):
    """Positional argument ``i`` (0 = the node's first argument) or keyword ``key`` of an fx node."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Unsupported(what)


def _no_extra(node, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(node.kwargs) - set(allowed))
    _need(not extra, f"keyword arguments {extra}")


def _add(node, nodes_type) -> nn.Module:
    _no_extra(node, ("alpha",))
    _need(len(node.args) == 2 and all(isinstance(a, nodes_type) for a in node.args),
          "an add of anything but two tensors")
    _need(node.kwargs.get("alpha", 1) == 1, "torch.add with alpha != 1")
    return Add()


def _cat(node, nodes_type) -> nn.Module:
    _no_extra(node, ("dim",))
    xs, dim = _arg(node, 0, "tensors"), _arg(node, 1, "dim", 0)
    _need(isinstance(xs, (list, tuple)) and len(xs) >= 2 and all(isinstance(a, nodes_type) for a in xs),
          "torch.cat of anything but a list of two or more tensors")
    _need(dim == 1, f"torch.cat along dim {dim!r} (the channel dimension 1 only)")
    return Cat(1)


def _mean(node, nodes_type) -> nn.Module:
    _no_extra(node, ("dim", "keepdim"))
    dims, keepdim = _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False)
    _need(isinstance(dims, (list, tuple)) and sorted(dims) in ([2, 3], [-2, -1]) and isinstance(keepdim, bool),
          f"mean over dims {dims!r} (global pooling over (2, 3) only)")
    return GlobalAvgPool(keepdim)


def _flatten(node, nodes_type) -> nn.Module:
    _no_extra(node, ("start_dim", "end_dim"))
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    _need(isinstance(start, int) and isinstance(end, int) and start >= 1,
          f"flatten(start_dim={start!r}, end_dim={end!r}) (start_dim >= 1)")
    return nn.Flatten(start, end)


def _is_batch(v) -> bool:
    """``x.size(0)``, ``x.shape[0]`` or ``x.size()[0]``."""
    if getattr(v, "op", None) == "call_method" and v.target == "size":
        return len(v.args) == 2 and v.args[1] == 0 or v.kwargs.get("dim") == 0
    if getattr(v, "op", None) == "call_function" and v.target is operator.getitem and v.args[1] == 0:
        return _is_sizes(v.args[0])
    return False


def _is_sizes(v) -> bool:
    """``x.shape`` or ``x.size()``."""
    if getattr(v, "op", None) == "call_function" and v.target is getattr:
        return v.args[1] == "shape"
    return getattr(v, "op", None) == "call_method" and v.target == "size" and len(v.args) == 1 and not v.kwargs


def _view(node, nodes_type) -> nn.Module:
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    _need(not node.kwargs and len(sizes) == 2 and _is_batch(sizes[0]) and sizes[1] == -1,
          "view/reshape other than to [x.size(0), -1]")
    return nn.Flatten(1, -1)


def _slice(node, nodes_type) -> nn.Module:
    idx = node.args[1]
    full = slice(None, None, None)
    ok = isinstance(idx, tuple) and len(idx) == 4 and idx[0] == full and idx[1] == full and all(
        isinstance(s, slice) and s.start in (None, 0) and s.stop is None and isinstance(s.step, int) and s.step >= 1
        for s in idx[2:])
    _need(ok, f"indexing x[{idx!r}] (x[:, :, ::s, ::s] only)")
    return Subsample([idx[2].step or 1, idx[3].step or 1])


def _pad(node, nodes_type) -> nn.Module:
    _no_extra(node, ("mode", "value"))
    pad, mode, value = _arg(node, 1, "pad"), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)
    ok = (isinstance(pad, (list, tuple)) and len(pad) == 6 and list(pad[:4]) == [0, 0, 0, 0]
          and all(isinstance(p, int) and p >= 0 for p in pad[4:]) and mode == "constant" and value in (None, 0, 0.0))
    _need(ok, f"F.pad(pad={pad!r}, mode={mode!r}, value={value!r}) (zero channels: (0, 0, 0, 0, before, after))")
    return PadChannels(pad[4], pad[5])


def _act(make, *params: tuple[str, int, object]):
    """A maker for an elementwise activation with named parameters ``(name, position, default)``."""

    def maker(node, nodes_type) -> nn.Module:
        _no_extra(node, ("inplace", *(p[0] for p in params)))
        _need(len(node.args) <= 1 + len(params) + 1, "extra positional arguments")
        return make(*(_arg(node, i, key, default) for key, i, default in params))
    return maker


def _dropout(node, nodes_type) -> nn.Module:
    _need(_arg(node, 2, "training", True) is False, "F.dropout in training mode")
    return nn.Identity()


_FUNCTIONS = {
    operator.add: _add, operator.iadd: _add, torch.add: _add, torch.cat: _cat, torch.concat: _cat,
    torch.mean: _mean, torch.flatten: _flatten, torch.reshape: _view, operator.getitem: _slice, F.pad: _pad,
    F.relu: _act(nn.ReLU), torch.relu: _act(nn.ReLU), F.relu6: _act(nn.ReLU6),
    F.hardtanh: _act(lambda lo, hi: nn.Hardtanh(float(lo), float(hi)), ("min_val", 1, -1.0), ("max_val", 2, 1.0)),
    F.leaky_relu: _act(lambda s: nn.LeakyReLU(float(s)), ("negative_slope", 1, 0.01)),
    F.silu: _act(nn.SiLU), F.hardswish: _act(nn.Hardswish),
    F.adaptive_avg_pool2d: _act(nn.AdaptiveAvgPool2d, ("output_size", 1, None)), F.dropout: _dropout,
}
_METHODS = {"add": _add, "mean": _mean, "flatten": _flatten, "view": _view, "reshape": _view,
            "relu": _act(nn.ReLU), "contiguous": lambda node, t: nn.Identity()}


def _describe(node) -> str:
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    target = node.target
    return f"function {getattr(target, '__module__', None) or ''}.{getattr(target, '__name__', target)}".replace(
        "_operator.", "operator.").replace("builtins.", "")


def _owner(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else v for v in stack.values()]
    return str(paths[-1]) if paths and paths[-1] else ""


# ----------------------------------------------------------------------------- the walk

class _Names:
    """Unique node names: a module's qualified name, ``<owner>.<fx name>`` for functions."""

    def __init__(self):
        self.used = {INPUT}

    def take(self, name: str) -> str:
        base, k = name, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _trace(model: nn.Module):
    tracer = _tracer()
    try:
        return tracer.trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"module {tracer.failed_in!r} of " if tracer.failed_in else ""
        raise unsupported(f"cannot capture {where}{type(model).__name__} with torch.fx ({first}); "
                          "data-dependent control flow") from None


def _module_node(model: nn.Module, node, seen: set[str]) -> nn.Module:
    module = model.get_submodule(node.target)
    if not _is_known(module):
        raise unsupported(f"layer {node.target!r} of type {type(module).__name__}")
    if isinstance(module, (nn.Conv2d, nn.Linear, nn.PReLU, *_BN)):
        if node.target in seen:
            raise unsupported(f"calling layer {node.target!r} more than once (a weight is stored once per node)")
        seen.add(node.target)
    return module


def _function_node(node, nodes_type) -> nn.Module:
    makers = _METHODS if node.op == "call_method" else _FUNCTIONS
    maker = makers.get(node.target)
    if maker is None:
        raise unsupported(f"operation {_describe(node)} ({node.op}) in {_owner(node) or 'forward'}")
    try:
        return maker(node, nodes_type)
    except _Unsupported as exc:
        raise unsupported(f"{_describe(node)} in {_owner(node) or 'forward'} with {exc}") from None


def _tensor_args(node, skip: set) -> list:
    """The fx nodes among a node's arguments, in order and with repeats (``x + x`` has two)."""
    import torch.fx as fx

    found: list = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a not in skip else None)
    return found


def capture(model: nn.Module) -> list[GraphNode]:
    """The model's ops as a DAG in execution (topological) order.

    Returns:
        :class:`GraphNode` s; the last one's output is the model's output.

    Raises:
        FormatError: the model cannot be traced, holds an unsupported module, function or
            argument, has more than one input or output, or computes a value nobody uses.
    """
    import torch.fx as fx

    owner = type(model).__name__
    graph = _trace(model)
    names, seen = _Names(), set()
    out: list[GraphNode] = []
    value: dict[fx.Node, str] = {}
    shape_only: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if value:
                raise FormatError(f"{owner} takes more than one input; the packed format needs one")
            value[node] = INPUT
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node) or result not in value:
                raise FormatError(f"{owner} does not return one tensor computed from its input; the packed format "
                                  "returns one [N, K] tensor")
            if value[result] == INPUT:
                raise FormatError(f"{owner} returns its input unchanged; nothing to export")
            _check_used(out, value[result], owner)
            return out
        if _is_batch(node) or _is_sizes(node):
            shape_only.add(node)
            continue
        if node.op == "call_module":
            module = _module_node(model, node, seen)
            name = names.take(str(node.target))
        elif node.op in ("call_function", "call_method"):
            module = _function_node(node, fx.Node)
            name = names.take(f"{_owner(node)}.{node.name}" if _owner(node) else node.name)
        else:  # get_attr: a parameter or buffer used as a tensor in forward
            raise unsupported(f"use of attribute {node.target!r} as a tensor in {owner}.forward")
        if node.target is operator.iadd and len(node.args[0].users) > 1:
            raise unsupported(f"in-place add ({name}) on a tensor that is used elsewhere")
        inputs = _tensor_args(node, shape_only)
        missing = [a for a in inputs if a not in value]
        if missing:
            raise unsupported(f"operation {name} on a value that is not a tensor of the graph")
        out.append(GraphNode(name, module, [value[a] for a in inputs]))
        value[node] = name
    raise FormatError(f"{owner}.forward returns nothing")  # fx graphs always end in an output node


def verify_capture(model: nn.Module, input_shape) -> None:
    """Run the traced graph and ``model`` in eval mode on 2 random inputs of ``input_shape``:
    the outputs must be identical (the same float ops in the same order). Modes are restored.

    Raises:
        FormatError: they differ (in-place ops on tensors read again, or Python state fx cannot see).
    """
    import torch.fx as fx

    modes = [(m, m.training) for m in model.modules()]
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        model.eval()
        with torch.no_grad():
            traced = fx.GraphModule(model, _trace(model))(x)
            ref = model(x)
    finally:
        for m, mode in modes:
            m.training = mode
    if not (isinstance(ref, torch.Tensor) and ref.shape == traced.shape and torch.equal(ref, traced)):
        raise FormatError(f"the torch.fx graph of {type(model).__name__} computes something else than its forward "
                          "(an in-place op such as += on a tensor that is read again, or state fx cannot see); "
                          "rewrite forward without it to export")


def _check_used(nodes: list[GraphNode], output: str, owner: str) -> None:
    """Every node's value is consumed by a later node or is the output."""
    used = {n for node in nodes for n in node.inputs} | {output}
    for node in nodes:
        if node.name not in used:
            raise FormatError(f"{owner}: the output of {node.name} ({type(node.module).__name__}) is never used; "
                              "the packed format needs every op to feed the output (remove dead code or in-place "
                              "ops whose result is dropped)")

