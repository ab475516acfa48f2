"""The packed kernels as hbnn:: custom ops: same results as the public functions, opcheck, torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hbnn.kernels import (
    PackedPlanes,
    binary_conv2d,
    binary_linear,
    pack_activations,
    pack_conv_weight,
    pack_planes,
    prepare_weight,
)
from hbnn.kernels.library import as_planes, planes_args, weight_args

BACKENDS = ["auto", "torch"]
SCALES = torch.tensor([0.9, 0.35, 0.1])


def _bitmap(gen: torch.Generator, shape: tuple) -> torch.Tensor:
    return torch.randint(1, 4, shape, generator=gen).to(torch.int8)


def _linear_weight(gen, planes, masked: bool, per_row: bool, backend: str):
    return prepare_weight(pack_planes(*planes(gen, 3, (5, 70), masked, per_row), backend=backend), backend=backend)


def _conv_weight(gen, planes, masked: bool, backend: str):
    signs, masks, scales = planes(gen, 3, (6, 4, 3, 3), masked, True)
    return prepare_weight(pack_conv_weight(signs, masks, scales, backend=backend), backend=backend)


def _same_planes(a: PackedPlanes, b: PackedPlanes) -> bool:
    return (a.full == b.full and a.shape == b.shape and torch.equal(a.signs, b.signs) and torch.equal(a.scales, b.scales)
            and (a.masks is None) == (b.masks is None) and (a.masks is None or torch.equal(a.masks, b.masks)))


# ------------------------------------------------------------------ same as the public functions
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 70), (2, 5, 4, 3)], ids=["linear", "conv"])
@pytest.mark.parametrize("mapped", [False, True], ids=["full", "bitmap"])
def test_pack_activations_op_gives_the_packed_planes(backend, shape, mapped, gen):
    x = torch.randn(shape, generator=gen)
    bitmap = _bitmap(gen, shape) if mapped else None
    signs, masks, full = torch.ops.hbnn.pack_activations(x, SCALES, bitmap, backend)
    expected = pack_activations(x, SCALES, bitmap, backend=backend)
    got = as_planes(signs, masks, full, SCALES, list(expected.shape))
    assert _same_planes(got, expected)
    assert masks.shape == ((0,) if bitmap is None else signs.shape)


def test_pack_activations_op_returns_valid_words_when_every_plane_is_full():
    x = torch.randn(3, 70)
    signs, masks, full = torch.ops.hbnn.pack_activations(x, SCALES, torch.full((3, 70), 3, dtype=torch.int8), "auto")
    assert full.tolist() == [True, True, True]
    # 70 entries: one word of 64 ones, then 6 ones (bits past K stay zero)
    assert torch.equal(masks, torch.tensor([-1, 63]).expand(3, 3, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_binary_linear_op_equals_binary_linear(backend, masked, per_row, gen, planes):
    w = _linear_weight(gen, planes, masked, per_row, backend)
    x = torch.randn(4, 70, generator=gen)
    bitmap = _bitmap(gen, x.shape) if masked else None
    xp = pack_activations(x, SCALES, bitmap, backend=backend)
    y = torch.ops.hbnn.binary_linear(*planes_args(xp), *weight_args(w), backend, None)
    assert torch.equal(y, binary_linear(xp, w, backend=backend))
    assert y.shape == (4, 5) and y.is_contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geometry", [(1, 0, 1), (2, 1, 1), (1, 2, 2)], ids=["plain", "stride2_pad1", "dilated"])
def test_binary_conv2d_op_equals_binary_conv2d_in_channels_last_memory(backend, geometry, gen, planes):
    stride, padding, dilation = geometry
    w = _conv_weight(gen, planes, True, backend)
    x = torch.randn(2, 4, 7, 6, generator=gen)
    xp = pack_activations(x, SCALES, _bitmap(gen, x.shape), backend=backend)
    y = torch.ops.hbnn.binary_conv2d(*planes_args(xp), *weight_args(w), [stride] * 2, [padding] * 2, [dilation] * 2,
                                     backend, None)
    expected = binary_conv2d(xp, w, stride=stride, padding=padding, dilation=dilation, backend=backend)
    assert torch.equal(y, expected)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_weight_args_of_plain_planes_prepare_on_the_call(gen, planes):
    packed = pack_planes(*planes(gen, 2, (5, 70), True, False))
    x = pack_activations(torch.randn(3, 70, generator=gen), SCALES[:2])
    y = torch.ops.hbnn.binary_linear(*planes_args(x), *weight_args(packed), "auto", None)
    assert weight_args(packed)[5:] == ("", [], False)
    assert torch.equal(y, binary_linear(x, prepare_weight(packed)))


# ------------------------------------------------------------------------------- opcheck
def _opcheck_cases(gen, planes):
    w = _linear_weight(gen, planes, True, True, "auto")
    cw = _conv_weight(gen, planes, False, "auto")
    x = torch.randn(4, 70, generator=gen)
    xc = torch.randn(2, 4, 5, 5, generator=gen)
    bitmap = _bitmap(gen, x.shape)
    xp, xcp = pack_activations(x, SCALES, bitmap), pack_activations(xc, SCALES)
    return [
        (torch.ops.hbnn.pack_activations.default, (x, SCALES, bitmap, "auto")),
        (torch.ops.hbnn.pack_activations.default, (xc, SCALES, None, "torch")),
        (torch.ops.hbnn.binary_linear.default, (*planes_args(xp), *weight_args(w), "auto", None)),
        (torch.ops.hbnn.binary_conv2d.default, (*planes_args(xcp), *weight_args(cw), [2, 2], [1, 1], [1, 1], "auto",
                                                None)),
    ]


def test_opcheck_schema_fake_and_aot_dispatch(gen, planes):
    for op, args in _opcheck_cases(gen, planes):
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


# ------------------------------------------------------------------------- torch.compile
class _PackedNet(nn.Module):
    """Binarized conv then binarized linear, each a pack op and a kernel op (weights prepared once)."""

    def __init__(self, conv_weight, linear_weight):
        super().__init__()
        self.conv_args, self.linear_args = weight_args(conv_weight), weight_args(linear_weight)

    def forward(self, x: torch.Tensor, bitmap: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xp = torch.ops.hbnn.pack_activations(x, SCALES, bitmap, "auto")
        y = torch.ops.hbnn.binary_conv2d(*xp, SCALES, [b, h, w, c], *self.conv_args, [1, 1], [1, 1], [1, 1], "auto",
                                         None)
        y = torch.tanh(y).flatten(1)  # [B, 6 * 5 * 5] = [B, 150]
        yp = torch.ops.hbnn.pack_activations(y, SCALES[:2], None, "auto")
        return torch.ops.hbnn.binary_linear(*yp, SCALES[:2], [b, y.shape[1]], *self.linear_args, "auto", None)


@pytest.mark.slow
def test_a_module_of_the_ops_compiles_without_graph_breaks_and_equals_eager(gen, planes):
    conv = _conv_weight(gen, planes, True, "auto")
    linear = prepare_weight(pack_planes(*planes(gen, 3, (7, 150), True, True)))
    model = _PackedNet(conv, linear)
    inputs = [(torch.randn(b, 4, 5, 5, generator=gen), _bitmap(gen, (b, 4, 5, 5))) for b in (3, 3, 5)]
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*inputs[0])
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    targets = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"hbnn.pack_activations", "hbnn.binary_conv2d", "hbnn.binary_linear"} <= targets, targets
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any break would raise
    for x, bitmap in inputs:
        assert torch.equal(compiled(x, bitmap), model(x, bitmap))
