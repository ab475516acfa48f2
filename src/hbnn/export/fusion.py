"""Execution plans that fuse a bit-serial layer with the residual add and activation after it.

A binarized conv/linear whose only consumer is a residual add (``conv -> add``), an
activation (``conv -> ReLU``/``Hardtanh``) or both (``conv -> add -> ReLU``) runs as one
:class:`FusedEpilogue` step: the kernel stores ``clamp(y + bias + residual)`` directly
(:class:`hbnn.kernels.Epilogue`), instead of writing ``y`` and reading it back once per op.
Each op is the same float32 operation as before, so the plan is bit-identical to the graph
(IEEE addition is commutative, so ``residual + y == y + residual``; ReLU is
``clamp(y, 0, inf)``, Hardtanh ``clamp(y, min, max)``).

The graph itself (``PackedModel.layers``/``inputs``, what ONNX export and summaries read)
is unchanged; only ``PackedModel.steps`` differ. The fused step sits where the add (or the
conv, without an add) was, so the shortcut's value exists when it runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hbnn.export.engine import PackedLayer, PackedModel, Step
from hbnn.export.ops import Add
from hbnn.export.topology import consumers

__all__ = ["FusedEpilogue", "fuse_epilogues", "clamp_of"]


def clamp_of(m: nn.Module) -> tuple[float, float] | None:
    """``(lo, hi)`` of an activation that is a clamp (ReLU, Hardtanh), else None."""
    if type(m) is nn.ReLU:
        return 0.0, math.inf
    if type(m) is nn.Hardtanh:
        return float(m.min_val), float(m.max_val)
    return None


class FusedEpilogue(nn.Module):
    """``clamp(layer(x) + residual)`` in one kernel call (module docstring).

    ``forward(x)`` or ``forward(x, residual)``. A residual that does not have the layer's
    output shape and dtype (a broadcasting add) is added after the kernel instead, as the
    unfused add would (``y + residual``), then clamped: the same values either way.
    """

    def __init__(self, layer: PackedLayer, clamp: tuple[float, float] | None, nodes: tuple[str, ...]):
        super().__init__()
        self.layer, self.clamp, self.nodes = layer, clamp, nodes

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        xp = self.layer.pack_input(x)
        if residual is None or (residual.dtype == torch.float32
                                and tuple(residual.shape) == tuple(self.layer.output_shape(xp))):
            return self.layer.compute(xp, residual, self.clamp)
        y = self.layer.compute(xp) + residual
        return y if self.clamp is None else y.clamp_(*self.clamp)

    def extra_repr(self) -> str:
        return f"nodes={list(self.nodes)}, clamp={self.clamp}"


def _only_user(users: dict[int, list[int]], i: int) -> int | None:
    after = users.get(i, [])
    return after[0] if len(after) == 1 else None


def _chain(model: PackedModel, users: dict[int, list[int]], i: int) -> tuple[list[int], int | None, tuple | None]:
    """``(nodes, residual input or None, clamp or None)`` of the chain fused onto node ``i``:
    ``nodes`` is ``[i]``, then the add it alone feeds (if any), then the clamp activation
    that alone reads the last of those (if any)."""
    nodes, res, clamp = [i], None, None
    k = _only_user(users, i)
    if k is not None and isinstance(model.layers[k], Add) and len(model.inputs[k]) == 2 \
            and model.inputs[k].count(i) == 1:
        nodes.append(k)
        res = next(j for j in model.inputs[k] if j != i)
    r = _only_user(users, nodes[-1])
    if r is not None and clamp_of(model.layers[r]) is not None and model.inputs[r] == [nodes[-1]]:
        nodes.append(r)
        clamp = clamp_of(model.layers[r])
    return nodes, res, clamp


def fuse_epilogues(model: PackedModel) -> list[Step]:
    """The model's execution plan with every fusable chain (module docstring) as one step."""
    users = consumers(model.inputs)
    steps: list[Step] = []
    absorbed: set[int] = set()
    pending: dict[int, Step] = {}  # add node -> the fused step that runs in its place
    for i, layer in enumerate(model.layers):
        if i in pending:
            steps.append(pending.pop(i))
            continue
        if i in absorbed:
            continue
        single = Step(i, layer, model.inputs[i], (i,))
        if not (isinstance(layer, PackedLayer) and layer.binary and len(model.inputs[i]) == 1):
            steps.append(single)
            continue
        nodes, res, clamp = _chain(model, users, i)
        add = nodes[1] if res is not None else None
        if add in pending:  # both inputs of an add are bit-serial layers: the first one takes it
            nodes, res, clamp, add = [i], None, None, None
        if len(nodes) == 1:
            steps.append(single)
            continue
        fused = FusedEpilogue(layer, clamp, tuple(model.names[n] for n in nodes))
        step = Step(nodes[-1], fused, model.inputs[i] + ([] if res is None else [res]), tuple(nodes))
        absorbed.update(nodes[1:])
        if add is None:
            steps.append(step)
        else:
            pending[add] = step
    return steps
