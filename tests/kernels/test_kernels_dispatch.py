"""Fast C kernels == pure-torch reference, bit for bit, for every dispatch variant this CPU runs.

The C kernels accumulate the float output in the reference's order with separately
rounded float32 operations, so floats are compared with ``atol=0, rtol=0`` too.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from hbnn.kernels import (
    binary_conv2d,
    binary_conv2d_counts,
    binary_linear,
    binary_linear_counts,
    pack_conv_input,
    pack_conv_weight,
    pack_planes,
)
from hbnn.kernels import reference as ref

EXACT = dict(atol=0, rtol=0)
PLANE_PAIRS = list(itertools.product([1, 2, 3], [1, 2, 3]))


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200, 1000])
def test_linear_every_variant_equals_reference(c_variants, gen, planes, k):
    for idx, (nw, nx) in enumerate(PLANE_PAIRS):
        wmask, xmask = idx % 2 == 0, idx % 3 != 0
        rows, outs = 1 + (idx * 7) % 26, 1 + (idx * 11) % 37
        w = pack_planes(*planes(gen, nw, (outs, k), wmask and nw > 1, per_row=idx % 2 == 1))
        x = pack_planes(*planes(gen, nx, (rows, k), xmask and nx > 1, per_row=idx % 4 == 0))
        counts, y = ref.binary_linear_counts_ref(x, w), ref.binary_linear_ref(x, w)
        for v in c_variants:
            torch.testing.assert_close(binary_linear_counts(x, w, backend="c", variant=v), counts, **EXACT)
            torch.testing.assert_close(binary_linear(x, w, backend="c", variant=v), y, **EXACT)


def test_linear_large_tiles_and_all_masked_pairs(c_variants, gen, planes):
    # > one 192-row chunk and > one 16-row weight panel, every (masked, masked) mode.
    w = pack_planes(*planes(gen, 3, (37, 130), True, per_row=True))
    x = pack_planes(*planes(gen, 3, (203, 130), True, per_row=True))
    counts, y = ref.binary_linear_counts_ref(x, w), ref.binary_linear_ref(x, w)
    for v in c_variants:
        torch.testing.assert_close(binary_linear_counts(x, w, backend="c", variant=v), counts, **EXACT)
        torch.testing.assert_close(binary_linear(x, w, backend="c", variant=v), y, **EXACT)


def test_linear_leading_dims_and_unpacked_triples(c_variants, gen, planes):
    xs, xm, xa = planes(gen, 2, (3, 4, 70), True, per_row=False)
    ws, wm, wa = planes(gen, 2, (5, 70), False, per_row=True)
    y = binary_linear((xs, xm, xa), (ws, wm, wa), backend="c")
    assert y.shape == (3, 4, 5)
    x2 = pack_planes(xs.reshape(2, 12, 70), xm.reshape(2, 12, 70), xa, backend="torch")
    expect = ref.binary_linear_ref(x2, pack_planes(ws, wm, wa, backend="torch"))
    torch.testing.assert_close(y.reshape(12, 5), expect, **EXACT)


CONV_CASES = [
    # (B, C, H, W, O, kernel, stride, padding, dilation)
    (2, 3, 7, 6, 5, 3, 1, 1, 1),
    (2, 70, 9, 8, 19, 3, 2, 1, 1),
    (1, 64, 5, 5, 17, 3, 1, 2, 2),
    (3, 130, 6, 7, 33, 1, 1, 0, 1),
    (2, 5, 8, 8, 3, (3, 2), (2, 1), (0, 2), (1, 2)),
    (1, 1, 3, 3, 2, 3, 1, 3, 1),  # padding larger than the image: some rows see nothing
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("nw,nx,masked", [(1, 1, False), (2, 3, True), (3, 1, True), (2, 2, False)])
def test_conv_every_variant_equals_reference(c_variants, gen, planes, case, nw, nx, masked):
    b, c, h, wd, o, kernel, stride, padding, dilation = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = pack_conv_input(*planes(gen, nx, (b, c, h, wd), masked and nx > 1, per_row=nx == 2))
    w = pack_conv_weight(*planes(gen, nw, (o, c, kh, kw), masked and nw > 1, per_row=True))
    args = dict(stride=stride, padding=padding, dilation=dilation)
    counts, y = ref.binary_conv2d_counts_ref(x, w, **args), ref.binary_conv2d_ref(x, w, **args)
    for v in c_variants:
        torch.testing.assert_close(binary_conv2d_counts(x, w, backend="c", variant=v, **args), counts, **EXACT)
        torch.testing.assert_close(binary_conv2d(x, w, backend="c", variant=v, **args), y, **EXACT)


def test_conv_accepts_unpacked_nchw_triples(c_variants, gen, planes):
    xt = planes(gen, 2, (2, 5, 6, 7), True, per_row=False)
    wt = planes(gen, 2, (3, 5, 3, 3), True, per_row=True)
    y = binary_conv2d(xt, wt, padding=1, stride=2, backend="c")
    expect = ref.binary_conv2d_ref(pack_conv_input(*xt), pack_conv_weight(*wt), padding=1, stride=2)
    assert y.shape == (2, 3, 3, 4)
    torch.testing.assert_close(y, expect, **EXACT)


def test_variant_from_environment(c_variants, gen, planes, monkeypatch):
    x = pack_planes(*planes(gen, 2, (13, 130), True, per_row=False))
    w = pack_planes(*planes(gen, 2, (17, 130), True, per_row=True))
    expect = ref.binary_linear_ref(x, w)
    for v in c_variants:
        monkeypatch.setenv("HBNN_KERNEL_VARIANT", v)
        torch.testing.assert_close(binary_linear(x, w, backend="c"), expect, **EXACT)
    monkeypatch.setenv("HBNN_KERNEL_VARIANT", "sse9")
    with pytest.raises(ValueError, match="variant"):
        binary_linear(x, w, backend="c")


def test_torch_backend_is_the_reference(gen, planes):
    x = pack_planes(*planes(gen, 2, (6, 99), True, per_row=False), backend="torch")
    w = pack_planes(*planes(gen, 3, (8, 99), True, per_row=True), backend="torch")
    torch.testing.assert_close(binary_linear(x, w, backend="torch"), ref.binary_linear_ref(x, w), **EXACT)


def test_bad_arguments_raise_clear_errors(gen, planes):
    x = pack_planes(*planes(gen, 1, (2, 10), False, per_row=False), backend="torch")
    w = pack_planes(*planes(gen, 1, (3, 11), False, per_row=False), backend="torch")
    with pytest.raises(ValueError, match="K=10"):
        binary_linear(x, w, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        binary_linear(x, x, backend="gpu")
    with pytest.raises(TypeError, match="PackedPlanes"):
        binary_linear(torch.zeros(2, 10), w)
    xc = pack_conv_input(*planes(gen, 1, (1, 3, 4, 4), False, per_row=False), backend="torch")
    wc = pack_conv_weight(*planes(gen, 1, (2, 4, 3, 3), False, per_row=False), backend="torch")
    with pytest.raises(ValueError, match="C=3"):
        binary_conv2d(xc, wc, backend="torch")
    wc = pack_conv_weight(*planes(gen, 1, (2, 3, 5, 5), False, per_row=False), backend="torch")
    with pytest.raises(ValueError, match="does not fit"):
        binary_conv2d(xc, wc, backend="torch")
