"""Fused epilogue (bias, residual, clamp) of binary_conv2d / binary_linear: bit-identical on
every SIMD variant and the torch backend to running the kernel and then ``y + bias``,
``+ residual`` and the clamp as separate torch ops, for plain and permuted (channel-structured)
weights, dense taps and word-per-tap convs, with and without an ``out`` buffer."""

from __future__ import annotations

import math

import pytest
import torch

from hbnn.kernels import Epilogue, binary_conv2d, binary_linear, pack_conv_input, pack_conv_weight, pack_planes
from hbnn.kernels import prepare_weight


def _unfused(y: torch.Tensor, bias, res, clamp, channel_dim: int) -> torch.Tensor:
    y = y.clone()
    if bias is not None:
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        y = y + bias.reshape(shape)
    if res is not None:
        y = y + res
    if clamp is not None:
        y = torch.clamp(y, *clamp)
    return y


def _weight_masks(gen, n, o, shape, per_channel: bool):
    """None (full planes) or channel-structured masks: each output row keeps 1..n planes (permuted panels)."""
    if not per_channel:
        return None
    keep = torch.randint(1, n + 1, (o,), generator=gen)
    m = torch.arange(n)[:, None] < keep[None, :]
    return m.reshape(n, o, *([1] * len(shape))).expand(n, o, *shape).clone()


EPILOGUES = [  # (bias, residual, clamp)
    (True, False, None),
    (False, True, None),
    (True, True, (0.0, math.inf)),
    (True, False, (-1.0, 1.0)),
    (False, False, (0.0, math.inf)),
]


@pytest.mark.parametrize("bias, residual, clamp", EPILOGUES)
@pytest.mark.parametrize("c, per_channel", [(16, False), (16, True), (64, False), (70, True)])
def test_conv_epilogue_matches_unfused_every_variant(c_variants, gen, bias, residual, clamp, c, per_channel):
    b, h, w, o, n = 2, 9, 11, 37, 2
    x = pack_conv_input(torch.rand(n, b, c, h, w, generator=gen) > 0.5, None, torch.rand(n, generator=gen) + 0.25)
    masks = _weight_masks(gen, n, o, (c, 3, 3), per_channel)
    signs = torch.rand(n, o, c, 3, 3, generator=gen) > 0.5
    wt = pack_conv_weight(signs if masks is None else signs & masks, masks, torch.rand(n, o, generator=gen) + 0.25)
    bvec = torch.randn(o, generator=gen) if bias else None
    res = torch.randn(b, o, h, w, generator=gen).contiguous(memory_format=torch.channels_last) if residual else None
    epi = Epilogue(bvec, res, clamp)
    base = binary_conv2d(x, wt, padding=1, backend="torch")
    want = _unfused(base, bvec, res, clamp, 1)
    assert torch.equal(binary_conv2d(x, wt, padding=1, backend="torch", epilogue=epi), want)
    for v in c_variants:
        pw = prepare_weight(wt, variant=v)
        assert pw.panels is None or pw.panels["permuted"] == per_channel
        assert torch.equal(binary_conv2d(x, pw, padding=1, variant=v, epilogue=epi), want), v
        out = torch.empty(b * h * w * o)
        got = binary_conv2d(x, pw, padding=1, variant=v, epilogue=epi, out=out)
        assert torch.equal(got, want) and got.data_ptr() == out.data_ptr(), v
    if res is not None:  # an NCHW residual gives the same values (copied to rows for C)
        nchw = Epilogue(bvec, res.contiguous(), clamp)
        assert torch.equal(binary_conv2d(x, wt, padding=1, epilogue=nchw), want)


@pytest.mark.parametrize("bias, residual, clamp", EPILOGUES)
def test_linear_epilogue_matches_unfused_every_variant(c_variants, gen, bias, residual, clamp):
    rows, k, o, n = 29, 200, 45, 2
    x = pack_planes(torch.rand(n, rows, k, generator=gen) > 0.5, None, torch.rand(n, generator=gen) + 0.25)
    masks = _weight_masks(gen, n, o, (k,), True)
    wt = pack_planes((torch.rand(n, o, k, generator=gen) > 0.5) & masks, masks, torch.rand(n, o, generator=gen) + 0.25)
    bvec = torch.randn(o, generator=gen) if bias else None
    res = torch.randn(rows, o, generator=gen) if residual else None
    epi = Epilogue(bvec, res, clamp)
    want = _unfused(binary_linear(x, wt, backend="torch"), bvec, res, clamp, -1)
    assert torch.equal(binary_linear(x, wt, backend="torch", epilogue=epi), want)
    for v in c_variants:
        assert torch.equal(binary_linear(x, prepare_weight(wt, variant=v), variant=v, epilogue=epi), want), v


def test_epilogue_bad_input_one_line_errors(c_variants, gen):
    x = pack_planes(torch.rand(1, 4, 70, generator=gen) > 0.5, None, torch.ones(1))
    w = pack_planes(torch.rand(1, 5, 70, generator=gen) > 0.5, None, torch.ones(1))
    with pytest.raises(ValueError, match=r"bias must be a float32 CPU tensor of shape \[5\]"):
        binary_linear(x, w, epilogue=Epilogue(bias=torch.zeros(4)))
    with pytest.raises(ValueError, match=r"residual must be a float32 CPU tensor of shape \[4, 5\]"):
        binary_linear(x, w, epilogue=Epilogue(residual=torch.zeros(5, 4)))
    with pytest.raises(ValueError, match="clamp needs lo <= hi"):
        binary_linear(x, w, epilogue=Epilogue(clamp=(1.0, 0.0)))
    out = torch.empty(20)
    with pytest.raises(ValueError, match="must not share memory with out"):
        binary_linear(x, w, backend="c", out=out, epilogue=Epilogue(residual=out.view(4, 5)))
