"""Which layers a packed model may hold, and the model -> chain-of-layers walk.

An exportable model is a *chain*: every op consumes the previous op's output (all
registered hbnn models are). :func:`trace_chain` finds it with ``torch.fx`` (binarized
layers are leaves) and rejects anything else in one line.

Stateless ops are (de)serialised by :func:`simple_record` / :func:`build_simple`;
convolutions, linear layers and batch norm carry tensors and live in
:mod:`hbnn.export.format`.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from hbnn.errors import FormatError
from hbnn.nn import HBConv2d, HBLayerMixin, HBLinear

__all__ = ["SUPPORTED_LAYERS", "SIMPLE_OPS", "trace_chain", "simple_record", "build_simple", "unsupported"]

#: Module types an exported model may contain (``Dropout`` becomes the identity).
SUPPORTED_LAYERS = (
    "HBConv2d", "HBLinear", "Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d", "ReLU", "Hardtanh",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout", "Identity",
)


def _pair(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


# op name -> (module type(s), attrs of a module, module from attrs)
SIMPLE_OPS: dict[str, tuple[tuple[type, ...], Callable[[nn.Module], dict], Callable[..., nn.Module]]] = {
    "relu": ((nn.ReLU,), lambda m: {}, lambda: nn.ReLU()),
    "hardtanh": ((nn.Hardtanh,), lambda m: {"min_val": float(m.min_val), "max_val": float(m.max_val)},
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
    "flatten": ((nn.Flatten,), lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}, nn.Flatten),
    "identity": ((nn.Identity, nn.Dropout), lambda m: {}, lambda: nn.Identity()),
}


def unsupported(what: str) -> FormatError:
    """The one-line error for a layer or op a packed model cannot hold."""
    return FormatError(f"{what} is not supported by the packed format; supported layers: {', '.join(SUPPORTED_LAYERS)}")


def _tracer():
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, (HBLayerMixin, nn.Conv2d, nn.Linear)) or super().is_leaf_module(m, qualname)

    return _Tracer()


def _is_known(m: nn.Module) -> bool:
    if isinstance(m, (HBConv2d, HBLinear)):
        return True
    if type(m) in (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d):
        return True
    return any(type(m) in types for types, _, _ in SIMPLE_OPS.values())


def trace_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's ops in execution order, as ``(qualified name, module)``.

    Raises:
        FormatError: the model cannot be traced, is not a chain (branches, residual adds,
            functional ops), or holds a layer type outside :data:`SUPPORTED_LAYERS`.
    """
    tracer = _tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"cannot trace {type(model).__name__} into a chain of layers ({first})") from None
    chain: list[tuple[str, nn.Module]] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise FormatError(f"{type(model).__name__} takes more than one input; the packed format needs one")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise FormatError(f"{type(model).__name__} does not return its last layer's output")
            break
        if node.op != "call_module":
            raise unsupported(f"operation {node.target!r} ({node.op}) in {type(model).__name__}.forward")
        if len(node.args) != 1 or node.args[0] is not previous or node.kwargs:
            raise FormatError(f"layer {node.target!r} does not take the previous layer's output alone; "
                              "the packed format holds chains of layers only")
        module = model.get_submodule(node.target)
        if not _is_known(module):
            raise unsupported(f"layer {node.target!r} of type {type(module).__name__}")
        chain.append((str(node.target), module))
        previous = node
    return chain


def simple_record(module: nn.Module) -> tuple[str, dict] | None:
    """``(op, attrs)`` for a stateless op, or ``None`` if ``module`` is not one."""
    for op, (types, attrs, _) in SIMPLE_OPS.items():
        if type(module) in types:
            if isinstance(module, nn.MaxPool2d) and module.return_indices:
                raise unsupported("MaxPool2d with return_indices=True")
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
