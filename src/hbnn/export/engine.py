"""The packed inference engine: binarized conv/linear layers on the bit-serial kernels.

A packed layer computes (``y`` per output channel ``o``)::

    y = out_scale[o] * op(Q_a(x), W)[o] + bias[o]

with ``Q_a`` the activation quantizer at its calibrated running estimates (elementwise:
map ``b_1 + sum_j (b_{j+1} - b_j) [key(x) > t_j]``, :meth:`hbnn.quant.ActQuantizer.running_bitmap`;
residual with fixed ``mu_j``), ``W`` the binarized weight ``sum_i mu_i (2 s_i - 1) 1{A_i}``
(:func:`hbnn.quant.functional.dequantize_planes`), and ``out_scale``/``bias`` holding the
layer's output scale, bias and any folded batch norm.

When both the input and the weight are binarized the layer runs
``hbnn.kernels.binary_conv2d``/``binary_linear``: the input is binarized and packed in one
pass (:func:`hbnn.kernels.pack_activations`) and the output is
``sum_i sum_j (mu_w_i out_scale) mu_x_j popcount-dot_ij + bias`` (``out_scale`` is folded
into the per-row weight scales; the weight is packed and prepared for the kernels once, at
load: :func:`hbnn.kernels.prepare_weight`); a grouped conv runs them per group
(:class:`PackedConv2d`). Otherwise (weights-only or activations-only layers) it runs
``F.conv2d``/``F.linear`` on ``Q_a(x)`` and the dequantized weight, which
is the training-time computation.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hbnn.kernels import (
    Epilogue,
    PackedPlanes,
    PreparedWeight,
    binary_conv2d,
    binary_linear,
    conv_output_hw,
    pack_activations,
    pack_conv_weight,
    pack_planes,
    prepare_weight,
)
from hbnn.export.ops import Add, Cat, ConstantOp, GlobalAvgPool, Mul, PadChannels, Reshape
from hbnn.export.topology import consumers, last_uses
from hbnn.quant import ActQuantizer, QuantSpec

__all__ = ["PackedLayer", "PackedConv2d", "PackedLinear", "PackedModel", "Step", "AddInto", "MaxPool2x2",
           "make_act_quantizer", "optimize_chain", "optimize_graph", "chain_inputs"]


def make_act_quantizer(bits, fractions, heuristic: str, scales, thresholds, mean_abs,
                       structure: str = "entry") -> ActQuantizer:
    """An eval-mode :class:`ActQuantizer` holding calibrated running estimates (thresholds on the
    key of each ``structure`` unit: an entry, a pixel's channels or a group of them)."""
    spec = QuantSpec(bits={int(b): float(f) for b, f in zip(bits, fractions)}, heuristic=heuristic,
                     structure=structure)
    q = ActQuantizer(spec)
    with torch.no_grad():
        q.running_scales.copy_(scales)
        q.running_thresholds.copy_(thresholds)
        q.running_mean_abs.copy_(mean_abs)
        q.num_batches_tracked.fill_(1)
    return q.eval()


class PackedLayer(nn.Module):
    """Shared state and forward pass of packed conv/linear layers (module docstring: the maths).

    Subclasses give the op twice -- :meth:`float_op` on float tensors and :meth:`kernel_op`
    on packed planes -- and ``CHANNEL_SHAPE``, the view of an ``[O]`` vector over the output.

    Args:
        weight: float weight: ``w_hat`` for a binarized weight, else the float weight.
        planes: the binarized weight as bool ``(signs, masks, scales)``, or None (float).
        act: calibrated activation quantizer, or None (float input).
        bias: ``[O]`` or None.
        out_scale: ``[O]`` or None.
        backend: kernel backend ``"auto"``, ``"c"`` or ``"torch"``.
    """

    def __init__(self, weight, planes, act, bias, out_scale, backend: str = "auto"):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("out_scale", out_scale)
        self.act = act
        self.planes = planes
        self.backend = backend
        self.kernel_weight: PreparedWeight | None = None
        #: Write the kernel output into the same memory on every call (per thread): saves the
        #: allocation and, for multi-MB outputs, the page faults of memory the allocator gave
        #: back to the OS. A returned output is overwritten by the layer's next call, so
        #: :class:`PackedModel` copies its final output when it is such a buffer.
        self.reuse_output = True
        self._out_bufs: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}

    def _out_buffer(self, xp: PackedPlanes) -> torch.Tensor | None:
        """This thread's output buffer from its last call on an input of ``xp``'s shape, or None
        (first call, another shape, or ``reuse_output`` off)."""
        key, buf = self._out_bufs.get(threading.get_ident(), (None, None)) if self.reuse_output else (None, None)
        return buf if key == xp.shape else None

    def _kept(self, xp: PackedPlanes, flat: torch.Tensor) -> torch.Tensor:
        """Remember ``flat`` (the kernel's contiguous output on ``xp``) for this thread's next call."""
        if self.reuse_output:
            self._out_bufs[threading.get_ident()] = (xp.shape, flat)
        return flat

    def output_buffers(self) -> list[torch.Tensor]:
        """The output buffers this layer reuses (one per calling thread)."""
        return [buf for _, buf in self._out_bufs.values()]

    @property
    def binary(self) -> bool:
        """True when this layer runs the bit-serial kernels."""
        return self.kernel_weight is not None

    def _kernel_scales(self) -> torch.Tensor:
        """Weight scales with ``out_scale`` folded in: ``[n]`` or ``[n, O]``."""
        scales = self.planes[2].to(torch.float32)
        if self.out_scale is None:
            return scales
        if scales.dim() == 1:
            scales = scales[:, None]
        return (scales * self.out_scale[None, :]).contiguous()

    def _finish(self, y: torch.Tensor, channel_shape: tuple[int, ...]) -> torch.Tensor:
        """Apply ``out_scale`` and the bias, in place on ``y`` (the float path; the kernel path
        has ``out_scale`` in its weight scales and the bias in its epilogue)."""
        if self.out_scale is not None:
            y.mul_(self.out_scale.reshape(channel_shape))
        if self.bias is not None:
            y.add_(self.bias.reshape(channel_shape))
        return y

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``Q_a(x)`` as a float tensor (identity for float inputs)."""
        return x if self.act is None else self.act(x)

    def pack_input(self, x: torch.Tensor) -> PackedPlanes:
        """Binarize ``x`` at the running estimates and pack it (the kernel path's first step).

        A 4-d input is packed from its NHWC view as ``(B*H*W, C)`` rows -- the same words
        :func:`hbnn.kernels.pack_conv_input` produces -- so a channels-last input (what
        the engine passes between layers) is packed without a transpose.
        """
        if x.dim() != 4:
            return self._pack_rows(x, self.act.running_bitmap(x))
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view when x is channels-last
        p = self._pack_rows(rows, self.act.running_bitmap(rows))
        return PackedPlanes(p.signs, p.masks, p.full, p.scales, (b, h, w, c))

    def _pack_rows(self, rows: torch.Tensor, bitmap: torch.Tensor | None) -> PackedPlanes:
        """:func:`hbnn.kernels.pack_activations` of ``[R, C]`` rows and their map (rows of
        ``C < 64`` entries with ``64 % C == 0`` are binarized ``64 / C`` at a time there)."""
        return pack_activations(rows, self.act.running_scales, bitmap, backend=self.backend)

    CHANNEL_SHAPE: tuple[int, ...] = (1, -1)

    def float_op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``op(x, weight) + bias`` on float tensors (the training-time computation)."""
        raise NotImplementedError

    def kernel_op(self, xp: PackedPlanes, epilogue: Epilogue) -> torch.Tensor:
        """The bit-serial op on packed input planes, ``out_scale`` included, then ``epilogue``."""
        raise NotImplementedError

    def output_shape(self, xp: PackedPlanes) -> tuple[int, ...]:
        """Shape of the layer's output on packed input ``xp``."""
        raise NotImplementedError

    def compute(self, xp: PackedPlanes, residual: torch.Tensor | None = None,
                clamp: tuple[float, float] | None = None) -> torch.Tensor:
        """Kernel path after packing: :meth:`kernel_op` with the bias, then ``+ residual`` (of
        :meth:`output_shape`) and ``clamp`` (``(lo, hi)``), fused into the kernel's store
        (:class:`hbnn.kernels.Epilogue`: bit-identical to the separate ops)."""
        return self.kernel_op(xp, Epilogue(self.bias, residual, clamp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``out_scale * op(Q_a(x), W) + bias`` (bit-serial when binary)."""
        if self.binary:
            return self.compute(self.pack_input(x))
        xq = self.quantize_input(x)
        if self.out_scale is None:  # bias inside the op, exactly as the float layer computes it
            return self.float_op(xq, self.bias)
        return self._finish(self.float_op(xq, None), self.CHANNEL_SHAPE)

    def train(self, mode: bool = True) -> "PackedLayer":
        """Packed layers are inference-only: they stay in eval mode."""
        return super().train(False)


class PackedConv2d(PackedLayer):
    """A packed 2-d convolution (zero padding, any stride/dilation and groups).

    A grouped binarized conv (``groups = g > 1``, e.g. depthwise) runs the bit-serial kernels
    per group: group ``k`` is a dense binary conv of input channels ``k C/g .. (k+1) C/g - 1``
    to output channels ``k O/g .. (k+1) O/g - 1`` (weight rows of that range, prepared
    once at load); the input is binarized once over all channels (so structured maps see
    whole pixels), packed per group, and the group outputs are concatenated along channels.
    """

    def __init__(self, weight, planes, act, bias, out_scale, *, stride, padding, dilation, groups, backend="auto"):
        super().__init__(weight, planes, act, bias, out_scale, backend)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self.group_weights: list[PreparedWeight] | None = None
        if planes is not None and act is not None:
            parts = self._prepare_groups(planes, backend)
            if groups == 1:
                self.kernel_weight = parts[0]
            else:
                self.group_weights = parts

    def _prepare_groups(self, planes, backend: str) -> list[PreparedWeight]:
        """One prepared weight per group: its ``O/g`` output rows, scales sliced likewise."""
        signs, masks, _ = planes
        scales = self._kernel_scales()
        rows = signs.shape[1] // self.groups
        parts = []
        for k in range(self.groups):
            sel = slice(k * rows, (k + 1) * rows)
            part_scales = scales if scales.dim() == 1 else scales[:, sel].contiguous()
            packed = pack_conv_weight(signs[:, sel], masks[:, sel], part_scales, backend=backend)
            parts.append(prepare_weight(packed, backend=backend))
        return parts

    @property
    def binary(self) -> bool:
        """True when this layer runs the bit-serial kernels (per group for a grouped conv)."""
        return self.kernel_weight is not None or self.group_weights is not None

    CHANNEL_SHAPE = (1, -1, 1, 1)

    def pack_input(self, x: torch.Tensor):
        """:meth:`PackedLayer.pack_input`, or for a grouped conv one packed input per group
        (the map computed on the whole input first)."""
        if self.group_weights is None:
            return super().pack_input(x)
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        bitmap = self.act.running_bitmap(rows)
        cg = c // self.groups
        parts = []
        for k in range(self.groups):
            sel = slice(k * cg, (k + 1) * cg)
            p = self._pack_rows(rows[:, sel], None if bitmap is None else bitmap[:, sel])
            parts.append(PackedPlanes(p.signs, p.masks, p.full, p.scales, (b, h, w, cg)))
        return parts

    def float_op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``conv2d(x, weight, bias)`` with the layer's geometry."""
        return F.conv2d(x, self.weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _conv(self, xp: PackedPlanes, w: PreparedWeight, out: torch.Tensor | None = None,
              epilogue: Epilogue | None = None) -> torch.Tensor:
        return binary_conv2d(xp, w, stride=self.stride, padding=self.padding, dilation=self.dilation,
                             backend=self.backend, out=out, epilogue=epilogue)

    def kernel_op(self, xp, epilogue: Epilogue) -> torch.Tensor:
        """``binary_conv2d`` of the packed input and weight with ``epilogue`` (per group,
        concatenated, then the epilogue in torch, for a grouped conv)."""
        if self.group_weights is None:
            y = self._conv(xp, self.kernel_weight, self._out_buffer(xp), epilogue)
            self._kept(xp, y.permute(0, 2, 3, 1))  # the contiguous NHWC buffer y views
            return y
        y = torch.cat([self._conv(p, w) for p, w in zip(xp, self.group_weights)], 1)
        return epilogue.apply_(y, 1)

    def output_shape(self, xp) -> tuple[int, ...]:
        """``(B, O, OH, OW)`` (``xp``: packed NHWC input, or one per group)."""
        b, h, w, _ = (xp[0] if isinstance(xp, list) else xp).shape
        oh, ow = conv_output_hw(h, w, tuple(self.weight.shape[2:]), self.stride, self.padding, self.dilation)
        return b, self.weight.shape[0], oh, ow

    def extra_repr(self) -> str:
        o, c, kh, kw = self.weight.shape
        return f"{c * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}, " \
               f"groups={self.groups}, binary={self.binary}, act={self.act is not None}, " \
               f"planes={self.planes is not None}"


class PackedLinear(PackedLayer):
    """A packed linear layer."""

    def __init__(self, weight, planes, act, bias, out_scale, *, backend="auto"):
        super().__init__(weight, planes, act, bias, out_scale, backend)
        if planes is not None and act is not None:
            signs, masks, _ = planes
            packed = pack_planes(signs, masks, self._kernel_scales(), backend=backend)
            self.kernel_weight = prepare_weight(packed, backend=backend)

    def float_op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``linear(x, weight, bias)``."""
        return F.linear(x, self.weight, bias)

    def kernel_op(self, xp: PackedPlanes, epilogue: Epilogue) -> torch.Tensor:
        """``binary_linear`` of the packed input and weight with ``epilogue``."""
        return self._kept(xp, binary_linear(xp, self.kernel_weight, backend=self.backend, out=self._out_buffer(xp),
                                            epilogue=epilogue))

    def output_shape(self, xp: PackedPlanes) -> tuple[int, ...]:
        """``(..., O)``."""
        return (*xp.shape[:-1], self.weight.shape[0])

    def extra_repr(self) -> str:
        o, k = self.weight.shape
        return f"{k}, {o}, binary={self.binary}, act={self.act is not None}, planes={self.planes is not None}"


_MONOTONE = (nn.ReLU, nn.Hardtanh)
#: Ops whose output is a new tensor, never a view of an input (so an in-place op after them
#: touches no other value); an activation made in-place only writes into such a value too.
_FRESH = (PackedLayer, Add, Mul, ConstantOp, Cat, PadChannels, Reshape, GlobalAvgPool, nn.MaxPool2d, nn.AvgPool2d,
          nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Conv2d, nn.Linear, *_MONOTONE)


class AddInto(Add):
    """``a + b`` written into input ``into`` (0: ``a``, 1: ``b``), a fresh value nothing else reads.

    IEEE addition is commutative, so ``a.add_(b)`` and ``b.add_(a)`` equal ``a + b`` bit for
    bit; no output buffer is allocated. Falls back to ``a + b`` when the sum would broadcast
    or change dtype.
    """

    def __init__(self, into: int):
        super().__init__()
        self.into = into

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dst, src = (a, b) if self.into == 0 else (b, a)
        if dst.shape != src.shape or dst.dtype != src.dtype:
            return a + b
        return dst.add_(src)

    def extra_repr(self) -> str:
        return f"into={self.into}"


class MaxPool2x2(nn.MaxPool2d):
    """``MaxPool2d(2)`` as two elementwise maxima of strided views of a channels-last input.

    ``y[n, c, i, j] = max(max(x[2i, 2j], x[2i, 2j+1]), max(x[2i+1, 2j], x[2i+1, 2j+1]))``
    (floor mode: an odd last row/column is dropped); ``max`` is exact and ``torch.maximum``
    propagates NaN as the pool does, so the result is the pool's. Other layouts run
    ``F.max_pool2d``.
    """

    def __init__(self):
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) or min(x.shape[2:]) < 2:
            return super().forward(x)
        h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
        top = torch.maximum(x[:, :, 0:h:2, 0:w:2], x[:, :, 0:h:2, 1:w:2])
        return torch.maximum(top, torch.maximum(x[:, :, 1:h:2, 0:w:2], x[:, :, 1:h:2, 1:w:2]), out=top)


def _is_pool2x2(m: nn.Module) -> bool:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (type(m) is nn.MaxPool2d and pair(m.kernel_size) == (2, 2) and pair(m.stride) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices)


def _with_inplace(act: nn.Module) -> nn.Module:
    return nn.ReLU(inplace=True) if isinstance(act, nn.ReLU) else nn.Hardtanh(act.min_val, act.max_val, inplace=True)


def optimize_graph(layers: list[tuple[str, nn.Module]], inputs: list[list[int]]) -> list[tuple[str, nn.Module]]:
    """Exact rewrites of a graph's modules for speed (the wiring ``inputs`` is unchanged).

    * ``act -> MaxPool2d`` becomes ``MaxPool2d -> act`` for a non-decreasing ``act``
      (ReLU, Hardtanh) whose only consumer is the pool: ``max_k f(x_k) = f(max_k x_k)``
      exactly, and ``f`` then touches a quarter of the values (for 2x2 pools). Every pool
      window holds at least one input. The two nodes swap modules.
    * An activation runs in place when its input is a fresh tensor (not the model input, not
      a view: the output of a conv/linear, batch norm, pool, add, mul, a constant op, cat,
      channel padding, reshape (a copy) or activation) that nothing else consumes; so does a
      residual add (:class:`AddInto`) when one of its inputs is such a tensor.
    * A 2x2/2 max-pool becomes :class:`MaxPool2x2` (the same maxima, faster on channels-last).
    """
    out = list(layers)
    users = consumers(inputs)
    for i in range(len(out)):
        after = users.get(i, [])
        if isinstance(out[i][1], _MONOTONE) and len(after) == 1:
            k = after[0]
            if isinstance(out[k][1], nn.MaxPool2d) and inputs[k] == [i]:
                out[i], out[k] = out[k], out[i]
    def owned(j: int) -> bool:  # a fresh value read by one node, once
        return j >= 0 and len(users[j]) == 1 and isinstance(out[j][1], _FRESH)

    for i, (name, m) in enumerate(out):
        if isinstance(m, _MONOTONE) and len(inputs[i]) == 1 and owned(inputs[i][0]):
            out[i] = (name, _with_inplace(m))
        elif type(m) is Add:
            into = [k for k, j in enumerate(inputs[i]) if owned(j)]
            if into:
                out[i] = (name, AddInto(into[0]))
        elif _is_pool2x2(m):
            out[i] = (name, MaxPool2x2())
    return out


def optimize_chain(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """:func:`optimize_graph` of a chain (each layer consumes the previous one's output)."""
    return optimize_graph(layers, chain_inputs(len(layers)))


def chain_inputs(n: int) -> list[list[int]]:
    """The ``inputs`` of an ``n``-layer chain (``-1``: the model input)."""
    return [[i - 1] for i in range(n)]


class Step(NamedTuple):
    """One step of a :class:`PackedModel`'s execution: ``module(*values of inputs)`` is the
    value of graph node ``node``; ``nodes`` are the graph nodes it computes (one, or a fused
    chain such as conv -> add -> ReLU, :mod:`hbnn.export.fusion`), first node first."""

    node: int
    module: nn.Module
    inputs: list[int]
    nodes: tuple[int, ...]


class PackedModel(nn.Module):
    """A graph of packed and float layers read from a packed file (inference only).

    Node ``i`` computes ``layers[i](*[value of j] for j in inputs[i])`` (``j = -1``: the
    model input); nodes run in order (the file's topological order), each value is freed
    after its last consumer, and the last node's value is the output. A chain is the case
    ``inputs[i] = [i - 1]``.

    The graph (``layers``, ``inputs``) is what the file says; it runs as ``steps``, one per
    node unless :meth:`set_steps` gave a plan that computes some chains in one step.

    Attributes:
        names: the source model's node names, one per entry of ``layers``.
        inputs: each node's inputs as node indices (``-1``: the model input).
        header: the file's JSON header (format, version, model config, layer records).
        steps: the execution plan (:class:`Step` list).
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], header: dict, inputs: list[list[int]] | None = None):
        super().__init__()
        self.names = [n for n, _ in layers]
        self.layers = nn.ModuleList(m for _, m in layers)
        self.inputs = [list(i) for i in inputs] if inputs is not None else chain_inputs(len(layers))
        self.header = header
        self.set_steps(self.graph_steps())
        self.eval()

    def graph_steps(self) -> list[Step]:
        """One step per graph node, each module called as a module (forward hooks fire)."""
        return [Step(i, m, ins, (i,)) for i, (m, ins) in enumerate(zip(self.layers, self.inputs))]

    @contextlib.contextmanager
    def node_by_node(self) -> Iterator["PackedModel"]:
        """Within the block the model runs :meth:`graph_steps` (every node's module is called,
        so hooks on any layer fire; same outputs), then its plan again."""
        steps = self.steps
        self.set_steps(self.graph_steps())
        try:
            yield self
        finally:
            self.set_steps(steps)

    def set_steps(self, steps: list[Step]) -> None:
        """Run the graph as ``steps`` (each value freed after the last step that reads it; the
        last step's value is the output)."""
        self.steps = list(steps)
        self._frees = last_uses([st.inputs for st in self.steps])

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of one input (the header's ``input_shape``), or None if it records none."""
        shape = self.header.get("input_shape") if isinstance(self.header, dict) else None
        return None if shape is None else tuple(shape)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError (one line: the expected and the given shape) unless ``x`` is ``[N, *input_shape]``."""
        shape = self.input_shape
        if shape is not None and (x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape):
            raise ValueError(f"packed model: input of shape {list(x.shape)}; expected [N, {', '.join(map(str, shape))}] "
                             f"(a batch of the file's input_shape {list(shape)})")

    def execute(self, x: torch.Tensor, on_error: Callable[[int, Exception], Exception] | None = None) -> torch.Tensor:
        """Run the nodes in order on ``x`` (no input check, no channels-last conversion).

        Args:
            x: the model input.
            on_error: if given, a ``RuntimeError``/``ValueError``/``IndexError`` raised by node
                ``i`` becomes ``on_error(i, exc)`` (raised instead).
        """
        values: dict[int, torch.Tensor] = {-1: x}
        for k, st in enumerate(self.steps):
            args = [values[j] for j in st.inputs]
            for j in self._frees[k]:
                del values[j]
            if on_error is None:
                values[st.node] = st.module(*args)
                continue
            try:
                values[st.node] = st.module(*args)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise on_error(st.nodes[0], exc) from None
        return values[self.steps[-1].node]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the graph on ``x``, a batch ``[N, *input_shape]`` (no autograd).

        Raises:
            ValueError: ``x`` is not a batch of the file's ``input_shape`` (:meth:`check_input`).
        """
        self.check_input(x)
        with torch.no_grad():
            if x.dim() == 4:  # NHWC end to end: packing needs no transpose, pools and convs run faster
                x = x.contiguous(memory_format=torch.channels_last)
            return self._detached(self.execute(x))

    def _detached(self, y: torch.Tensor) -> torch.Tensor:
        """``y``, or a copy of it when it lies in a layer's reused output buffer (a view of it
        would change at the next call)."""
        ptr = y.untyped_storage().data_ptr()
        for layer in self.layers:
            if isinstance(layer, PackedLayer) and any(b.untyped_storage().data_ptr() == ptr
                                                      for b in layer.output_buffers()):
                return y.clone(memory_format=torch.preserve_format)
        return y

    def train(self, mode: bool = True) -> "PackedModel":
        """A packed model is inference-only: it stays in eval mode."""
        return super().train(False)

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """``(source node name, engine module)`` pairs in execution order."""
        return list(zip(self.names, self.layers))
