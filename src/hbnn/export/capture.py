"""Graph capture for export: a model's eval ``forward`` as a DAG of supported ops (``torch.fx``).

:func:`capture` traces the model in eval mode (so ``self.training`` reads ``False``) with
:func:`torch.fx.symbolic_trace`'s machinery, binarized layers, convolutions and linear
layers (and every ``torch.nn`` layer, as fx does; containers such as ``nn.Sequential``
are traced through) being leaves, and turns each graph node into a :class:`GraphNode`
holding a module:

* a leaf module call keeps its module (its quantizers' state is read from it at export);
* a supported function or tensor method becomes the equivalent module
  (:mod:`hbnn.export.functions` lists them: residual add, ``a * b``, arithmetic with
  constants, ``torch.cat``, functional activations and pools, global mean, flatten /
  view / reshape / squeeze keeping the batch dimension, option-A subsample and channel pad);
* ``x.size(d)`` / ``x.shape[d]`` (and integer arithmetic on them) only feed shape
  arguments;
* a parameter or buffer read in ``forward`` (fx ``get_attr``), and any expression of
  constants alone (``self.bias.view(1, -1, 1, 1)``, ``c.expand_as(x)`` -- kept unexpanded:
  it only feeds a broadcasting op), is a constant that an arithmetic op stores.

Shape-dependent forms (``x.view(-1, K)``, ``x.squeeze(3)``, ``torch.cat(xs, -1)``) are
resolved by running the traced graph on batches of 2 and 3 inputs of ``input_shape``.

Node names are the leaf modules' qualified names; a function node is named
``<enclosing module>.<fx node name>`` (e.g. ``features.layer1.0.add``). Inputs refer to
earlier nodes by name, the model input being :data:`INPUT`. Anything else -- data-dependent
control flow (fx cannot trace it), an unsupported module, function or argument, a value
that is never used, more than one input or output -- is one :class:`hbnn.errors.FormatError`
line naming the module or op and listing what is supported
(:func:`hbnn.export.ops.unsupported`).

In-place ops (``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``, ``x.relu_()``,
``x.add_(y)``) are captured as their out-of-place forms, which is what the model computes
unless the overwritten tensor -- or a view sharing its memory -- is read again after the
in-place op; such a model is refused. ``torch.fx`` records ``a += b`` as ``a + b``, so that
case is invisible in the graph: :func:`verify_capture` runs the traced graph and the model
(in eval mode, on one random batch) and requires identical outputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from hbnn.errors import FormatError
from hbnn.export.functions import (
    FUNCTIONS,
    METHODS,
    VIEWS,
    Context,
    Unsupported,
    describe,
    inplace_arg,
    is_shape_expr,
)
from hbnn.export.ops import INPUT, simple_record, unsupported
from hbnn.nn import HBConv2d, HBLayerMixin, HBLinear

__all__ = ["INPUT", "GraphNode", "capture", "verify_capture"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_ALIAS_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


@dataclass
class GraphNode:
    """One op of a captured graph: ``module(*[value of n] for n in inputs)``."""

    name: str
    module: nn.Module
    inputs: list[str] = field(default_factory=list)


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


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, every module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _trace(model: nn.Module):
    tracer = _tracer()
    try:
        with _eval_mode(model):
            return tracer.trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"module {tracer.failed_in!r} of " if tracer.failed_in else ""
        raise unsupported(f"cannot capture {where}{type(model).__name__} with torch.fx ({first}); "
                          "data-dependent control flow") from None


def _owner(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else v for v in stack.values()]
    return str(paths[-1]) if paths and paths[-1] else ""


def _where(node) -> str:
    return _owner(node) or "forward"


class _Shapes:
    """Output shapes of the traced graph's tensor nodes for batches of 2 and 3 (run once, on demand)."""

    def __init__(self, model: nn.Module, graph, input_shape):
        self.model, self.graph, self.input_shape = model, graph, input_shape
        self.shapes: dict[int, dict] | None = None

    def of(self, node, n: int) -> tuple[int, ...]:
        if self.input_shape is None:
            raise Unsupported("a shape-dependent form and no known input shape (pass input_shape=[C, H, W])")
        if self.shapes is None:
            self.shapes = {k: self._run(k) for k in (2, 3)}
        return self.shapes[n][node]

    def _run(self, n: int) -> dict:
        import torch.fx as fx

        found: dict = {}

        class _Recorder(fx.Interpreter):
            def run_node(self, node):
                result = super().run_node(node)
                if isinstance(result, torch.Tensor):
                    found[node] = tuple(result.shape)
                return result

        x = torch.randn(n, *self.input_shape, generator=torch.Generator().manual_seed(0))
        try:
            with _eval_mode(self.model), torch.no_grad():
                _Recorder(fx.GraphModule(self.model, self.graph)).run(x)
        except Exception as exc:  # the user's model on its own input shape
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FormatError(f"{type(self.model).__name__} fails on inputs of shape [{n}, "
                              f"{', '.join(map(str, self.input_shape))}] ({first}); check input_shape") from None
        return found


# ----------------------------------------------------------------------------- in-place ops

def _writes_input(model: nn.Module, node) -> bool:
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        return getattr(m, "inplace", False) is True and not isinstance(m, _ALIAS_MODULES)
    return inplace_arg(node)


def _is_alias(model: nn.Module, node) -> bool:
    """Whether ``node``'s result may share memory with its first argument."""
    if node.op == "call_method":
        return node.target in VIEWS[0] or inplace_arg(node)
    if node.op == "call_function":
        return node.target in VIEWS[1] or inplace_arg(node)
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _ALIAS_MODULES) or _writes_input(model, node)
    return False


def _check_inplace(model: nn.Module, graph) -> None:
    """Refuse in-place ops whose overwritten memory is read (through any alias) after them.

    The aliases of the written tensor are found by walking up to the tensor that owns the
    memory (through views and in-place results) and back down through every view of it,
    except through the in-place op itself (whose readers see the new values, as the
    engine's out-of-place op gives them).
    """
    import torch.fx as fx

    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or not _writes_input(model, node):
            continue
        root = node.args[0] if node.args else None
        if not isinstance(root, fx.Node):
            continue
        while _is_alias(model, root) and root.args and isinstance(root.args[0], fx.Node):
            root = root.args[0]
        members, todo = set(), [root]
        while todo:
            m = todo.pop()
            if m in members or m is node:
                continue
            members.add(m)
            todo.extend(u for u in m.users if _is_alias(model, u) and u.args and u.args[0] is m)
        for m in members:
            late = [u for u in m.users if u is not node and order[u] > order[node]]
            if late:
                what = f"layer {node.target!r}" if node.op == "call_module" else f"{describe(node)} in {_where(node)}"
                raise unsupported(f"in-place {what} on a tensor that is read again after it "
                                  f"(by {late[0].name}); the packed engine computes it out of place: write "
                                  "y = f(x) without inplace")


# ----------------------------------------------------------------------------- the walk

def _module_node(model: nn.Module, node, seen: set[str]) -> nn.Module:
    module = model.get_submodule(node.target)
    if not _is_known(module):
        raise unsupported(f"layer {node.target!r} of type {type(module).__name__}")
    if isinstance(module, (nn.Conv2d, nn.Linear, nn.PReLU, *_BN)):
        if node.target in seen:
            raise unsupported(f"calling layer {node.target!r} more than once (a weight is stored once per node)")
        seen.add(node.target)
    return module


def _tensor_args(node, skip: set) -> list:
    """The fx nodes among a node's arguments, in order and with repeats (``x + x`` has two)."""
    import torch.fx as fx

    found: list = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a not in skip else None)
    return found


def _attribute(model: nn.Module, target: str, owner: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise unsupported(f"use of attribute {target!r} ({type(obj).__name__}) as a value in {owner}.forward")
    return obj.detach()


class _Walk:
    """The state of one capture: graph values, constants, shape-only nodes."""

    def __init__(self, model: nn.Module, graph, input_shape):
        import torch.fx as fx

        self.fx, self.model, self.owner = fx, model, type(model).__name__
        self.shapes = _Shapes(model, graph, input_shape)
        self.value: dict = {}      # fx node -> graph node name
        self.consts: dict = {}     # fx node -> constant tensor or number
        self.shape_only: set = set()
        self.ctx = Context(lambda a: a in self.value, self._const, self.shapes.of)

    def _const(self, a):
        if isinstance(a, self.fx.Node):
            return self.consts.get(a)
        return a if isinstance(a, (int, float)) else None

    def fold(self, node) -> bool:
        """Record ``node`` as a constant if it computes from constants alone (True if it does)."""
        if node.op == "get_attr":
            self.consts[node] = _attribute(self.model, node.target, self.owner)
            return True
        args = _tensor_args(node, set())
        base = node.args[0] if node.args else None
        if node.op == "call_method" and node.target in ("expand_as", "expand") and base in self.consts:
            self.consts[node] = self.consts[base]  # broadcast by the op that reads it
            return True
        if node.op not in ("call_function", "call_method") or not all(a in self.consts for a in args):
            return False
        a, kw = self.fx.node.map_arg((node.args, node.kwargs), lambda n: self.consts[n])
        try:
            with torch.no_grad():
                out = node.target(*a, **kw) if node.op == "call_function" else getattr(a[0], node.target)(*a[1:], **kw)
        except Exception as exc:  # the model's own constant expression
            raise unsupported(f"constant expression {describe(node)} in {_where(node)} ({exc})") from None
        self.consts[node] = out.detach() if isinstance(out, torch.Tensor) else out
        return True

    def function(self, node):
        makers = METHODS if node.op == "call_method" else FUNCTIONS
        maker = makers.get(node.target)
        if maker is None:
            raise unsupported(f"operation {describe(node)} ({node.op}) in {_where(node)}")
        try:
            made = maker(node, self.ctx)
        except Unsupported as exc:
            raise unsupported(f"{describe(node)} in {_where(node)} with {exc}") from None
        return made if isinstance(made, tuple) else (made, None)


def capture(model: nn.Module, input_shape=None) -> list[GraphNode]:
    """The model's ops as a DAG in execution (topological) order.

    Args:
        model: the model (its modes are left as they are; it is traced in eval mode).
        input_shape: the shape of one input, needed only by shape-dependent forms.

    Returns:
        :class:`GraphNode` s; the last one's output is the model's output.

    Raises:
        FormatError: the model cannot be traced, holds an unsupported module, function or
            argument, has more than one input or output, overwrites in place a tensor that
            is read again, or computes a value nobody uses.
    """
    graph = _trace(model)
    _check_inplace(model, graph)
    walk, names, seen = _Walk(model, graph, input_shape), _Names(), set()
    owner, out = walk.owner, []
    for node in graph.nodes:
        if node.op == "placeholder":
            if walk.value:
                raise FormatError(f"{owner} takes more than one input; the packed format needs one")
            walk.value[node] = INPUT
            continue
        if node.op == "output":
            return _finish(out, walk.value, node.args[0], owner)
        if is_shape_expr(node, walk.shape_only):
            walk.shape_only.add(node)
            continue
        if walk.fold(node):
            continue
        inputs = None
        if node.op == "call_module":
            module = _module_node(model, node, seen)
            name = names.take(str(node.target))
        else:
            module, inputs = walk.function(node)
            name = names.take(f"{_owner(node)}.{node.name}" if _owner(node) else node.name)
        inputs = inputs if inputs is not None else _tensor_args(node, walk.shape_only)
        if any(a not in walk.value for a in inputs):
            raise unsupported(f"operation {name} on a value that is not a tensor of the graph (a constant or a size "
                              "where a tensor computed from the input is needed)")
        out.append(GraphNode(name, module, [walk.value[a] for a in inputs]))
        walk.value[node] = name
    raise FormatError(f"{owner}.forward returns nothing")  # fx graphs always end in an output node


def _finish(out: list[GraphNode], value: dict, result, owner: str) -> list[GraphNode]:
    if result not in value:
        raise FormatError(f"{owner} does not return one tensor computed from its input; the packed format "
                          "returns one [N, K] tensor")
    if value[result] == INPUT:
        raise FormatError(f"{owner} returns its input unchanged; nothing to export")
    _check_used(out, value[result], owner)
    return out


def verify_capture(model: nn.Module, input_shape) -> None:
    """Run the traced graph and ``model`` in eval mode on 2 random inputs of ``input_shape``:
    the outputs must be identical (the same float ops in the same order). Modes are restored.

    Raises:
        FormatError: they differ (in-place ops on tensors read again, or Python state fx cannot see).
    """
    import torch.fx as fx

    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with _eval_mode(model), torch.no_grad():
        traced = fx.GraphModule(model, _trace(model))(x)
        ref = model(x)
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

