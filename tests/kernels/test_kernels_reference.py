"""The pure-torch reference equals the float maths: exactly in integers, to float tolerance in floats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hbnn.kernels import pack_conv_input, pack_conv_weight, pack_planes
from hbnn.kernels import reference as ref

# Float results are sums of ~K terms of O(1) products in float32.
FLOAT_ATOL = 1e-4


def _pm_masked(signs: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Per-plane integer values ``(2 s - 1) * m`` as int64."""
    pm = signs.to(torch.int64) * 2 - 1
    return pm if masks is None else pm * masks


def test_popcount64_matches_python():
    vals = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 0x0F0F, -2], dtype=torch.int64)
    expect = [bin(v & (2**64 - 1)).count("1") for v in vals.tolist()]
    assert ref.popcount64(vals).tolist() == expect


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("nw,nx,masked", [(1, 1, False), (2, 3, True), (3, 2, True), (3, 3, False)])
def test_linear_counts_are_exact_integer_dots(gen, planes, k, nw, nx, masked):
    ws, wm, wa = planes(gen, nw, (7, k), masked, per_row=True)
    xs, xm, xa = planes(gen, nx, (5, k), masked, per_row=False)
    counts = ref.binary_linear_counts_ref(pack_planes(xs, xm, xa, backend="torch"), pack_planes(ws, wm, wa, backend="torch"))
    wi, xi = _pm_masked(ws, wm), _pm_masked(xs, xm)
    expect = torch.einsum("jbk,iok->ijbo", xi, wi).to(torch.int32)
    torch.testing.assert_close(counts, expect, atol=0, rtol=0)


@pytest.mark.parametrize("k", [1, 65, 1000])
def test_linear_matches_float_matmul(gen, planes, k):
    ws, wm, wa = planes(gen, 3, (9, k), True, per_row=True)
    xs, xm, xa = planes(gen, 2, (4, k), True, per_row=True)
    x, w = pack_planes(xs, xm, xa, backend="torch"), pack_planes(ws, wm, wa, backend="torch")
    y = ref.binary_linear_ref(x, w)
    torch.testing.assert_close(y, x.dequantize() @ w.dequantize().T, atol=FLOAT_ATOL, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), ((3, 2), (2, 1), (0, 2), (1, 2))]
)
def test_conv_counts_exact_and_output_matches_conv2d(gen, planes, kernel, stride, padding, dilation):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    xs, xm, xa = planes(gen, 2, (2, 5, 7, 6), True, per_row=False)
    ws, wm, wa = planes(gen, 2, (4, 5, kh, kw), True, per_row=True)
    x, w = pack_conv_input(xs, xm, xa, backend="torch"), pack_conv_weight(ws, wm, wa, backend="torch")
    args = dict(stride=stride, padding=padding, dilation=dilation)
    counts = ref.binary_conv2d_counts_ref(x, w, **args)
    xi, wi = _pm_masked(xs, xm).double(), _pm_masked(ws, wm).double()
    for i in range(2):
        for j in range(2):
            exact = F.conv2d(xi[j], wi[i], **args)  # small integers: exact in float64
            rows = exact.permute(0, 2, 3, 1).reshape(-1, 4).to(torch.int32)
            torch.testing.assert_close(counts[i, j], rows, atol=0, rtol=0)
    y = ref.binary_conv2d_ref(x, w, **args)
    expect = F.conv2d(x.dequantize().permute(0, 3, 1, 2), w.dequantize().permute(0, 3, 1, 2), **args)
    torch.testing.assert_close(y, expect, atol=FLOAT_ATOL, rtol=1e-5)
