"""Eq. 4/5 on hand-computed tensors (exact), Fig. 2a on N(0,1), the STE gradient, dtypes."""

import pytest
import torch

from hbnn.quant import (
    binarize_planes,
    binarize_with_scales,
    dequantize_planes,
    hetero_binarize,
    make_bitmap,
    residual_binarize,
)
from hbnn.quant.mix import PAPER_MIXES

EXACT = dict(atol=0, rtol=0)


def test_one_bit_is_xnor_scaling():
    x = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    torch.testing.assert_close(residual_binarize(x, 1), torch.tensor([-1.5, -1.5, 1.5, 1.5]), **EXACT)


def test_two_bit_hand_computed():
    # mu1 = 2.25; E1 = [-1.75, .75, .25, -2.25]; mu2 = 1.25; s2 = [-1, 1, 1, -1]
    x = torch.tensor([0.5, -1.5, 2.5, -4.5])
    torch.testing.assert_close(residual_binarize(x, 2), torch.tensor([1.0, -1.0, 3.5, -3.5]), **EXACT)


def test_two_bits_reconstruct_four_levels_exactly():
    x = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    torch.testing.assert_close(residual_binarize(x, 2), x, **EXACT)


def test_sign_of_zero_is_minus_one():
    torch.testing.assert_close(residual_binarize(torch.tensor([0.0, 0.0, 2.0, 2.0]), 1), torch.tensor([-1.0, -1.0, 1.0, 1.0]), **EXACT)


def test_hetero_hand_computed():
    # mu1 = mean|x| = 3 -> [3,-3,3,-3]; E1 = [-2, 0, -1, -3]; bit 2 on entries 2,3: mu2 = 2
    x = torch.tensor([1.0, -3.0, 2.0, -6.0])
    out = hetero_binarize(x, torch.tensor([1, 1, 2, 2]))
    torch.testing.assert_close(out, torch.tensor([3.0, -3.0, 1.0, -5.0]), **EXACT)


def test_hetero_three_levels_hand_computed():
    # mu1 = 2 -> E1 = [-1, 2, -1, -2]; bit 2 on {1,2,3}: mu2 = 5/3... use dyadic data instead:
    x = torch.tensor([4.0, -4.0, 2.0, -6.0])  # mu1 = 4; E1 = [0, 0, -2, -2]
    m = torch.tensor([1, 3, 2, 3])  # bit 2 on {1,2,3}: mu2 = (0+2+2)/3
    out = hetero_binarize(x, m)
    mu2 = torch.tensor(4.0) / 3
    e2 = torch.stack([torch.tensor(0.0) + mu2, torch.tensor(-2.0) + mu2])  # entries 1, 3 after bit 2 (s = -1)
    mu3 = (e2.abs().sum()) / 2
    expected = torch.stack(
        [
            torch.tensor(4.0),
            -4.0 - mu2 + torch.where(e2[0] > 0, mu3, -mu3),
            4.0 - mu2,
            -4.0 - mu2 + torch.where(e2[1] > 0, mu3, -mu3),
        ]
    )
    torch.testing.assert_close(out, expected, **EXACT)


def test_homogeneous_bitmap_equals_residual():
    x = torch.randn(3, 7)
    for n in (1, 2, 3, 4):
        torch.testing.assert_close(hetero_binarize(x, torch.full(x.shape, n)), residual_binarize(x, n), **EXACT)


def test_per_channel_hand_computed():
    x = torch.tensor([[1.0, -3.0], [2.0, -6.0]])
    m = torch.tensor([[1, 2], [2, 2]])
    # row 0: mu1 = 2 -> [2, -2], E = [-1, -1]; bit 2 only on (0,1): mu2 = 1 -> -3
    # row 1: mu1 = 4 -> [4, -4], E = [-2, -2]; mu2 = 2 -> [2, -6]
    out = hetero_binarize(x, m, channel_dim=0)
    torch.testing.assert_close(out, torch.tensor([[2.0, -3.0], [2.0, -6.0]]), **EXACT)


def test_all_zero_tensor_gives_zeros():
    out = hetero_binarize(torch.zeros(4, 4), make_bitmap(torch.zeros(4, 4), 1.4))
    assert torch.equal(out, torch.zeros(4, 4))
    assert torch.equal(residual_binarize(torch.zeros(3), 3), torch.zeros(3))


def test_planes_reconstruct_exactly():
    x = torch.randn(8, 5, 3, 3)
    for cdim in (None, 0):
        m = make_bitmap(x, 1.4)
        signs, masks, scales = binarize_planes(x, m, channel_dim=cdim)
        assert signs.shape == (3, *x.shape) and masks.shape == (3, *x.shape)
        assert torch.equal(masks, torch.stack([m >= i for i in (1, 2, 3)]))
        shape = (3, 1, 1, 1, 1) if cdim is None else (3, 8, 1, 1, 1)
        pm = torch.where(signs, 1.0, -1.0)
        acc = torch.zeros_like(x)
        for i in range(3):
            acc += scales[i].reshape(shape[1:]) * pm[i] * masks[i]
        torch.testing.assert_close(acc, hetero_binarize(x, m, channel_dim=cdim), **EXACT)


def test_binarize_with_own_scales_matches():
    x = torch.randn(100)
    m = make_bitmap(x, 1.4)
    _, _, scales = binarize_planes(x, m)
    torch.testing.assert_close(binarize_with_scales(x, m, scales), hetero_binarize(x, m), **EXACT)


def normalized_error(x, x_hat):
    return ((x - x_hat).norm() / x.norm()).item()


@pytest.fixture(scope="module")
def gaussian():
    return torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bits,paper", [(1, 0.60), (2, 0.36), (3, 0.24), (4, 0.18)])
def test_fig2a_homogeneous(gaussian, bits, paper):
    assert abs(normalized_error(gaussian, residual_binarize(gaussian, bits)) - paper) <= 0.02


FIG2A = {
    "middle_out": [0.45, 0.44, 0.35, 0.33, 0.29, 0.29, 0.26, 0.24, 0.25],
    "bottom_up": [0.45, 0.44, 0.44, 0.41, 0.49, 0.44, 0.45, 0.44, 0.45],
    "top_down": [0.56, 0.56, 0.50, 0.50, 0.50, 0.49, 0.49, 0.50, 0.50],
    "random": [0.58, 0.58, 0.54, 0.53, 0.50, 0.51, 0.48, 0.46, 0.45],
}


@pytest.mark.parametrize("heuristic", list(FIG2A))
def test_fig2a_heterogeneous(gaussian, heuristic):
    for avg, paper in zip(sorted(PAPER_MIXES), FIG2A[heuristic]):
        err = normalized_error(gaussian, hetero_binarize(gaussian, make_bitmap(gaussian, avg, heuristic)))
        assert abs(err - paper) <= 0.02, (heuristic, avg, err, paper)


def test_ste_gradient_matches_explicit_reference():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.0000001, 3.0], requires_grad=True)
    g = torch.arange(1.0, 9.0)
    m = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2])
    (hetero_binarize(x, m) * g).sum().backward()
    expected = g * torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # |x| = 1 passes
    torch.testing.assert_close(x.grad, expected, **EXACT)


def test_ste_gradient_residual_and_per_channel():
    x = torch.randn(4, 9, requires_grad=True)
    g = torch.randn(4, 9)
    (residual_binarize(x, 2, channel_dim=0) * g).sum().backward()
    torch.testing.assert_close(x.grad, g * (x.detach().abs() <= 1), **EXACT)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    x64 = torch.randn(2000, dtype=torch.float64)
    m = make_bitmap(x64, 1.4)
    out = hetero_binarize(x64.to(dtype), m)
    assert out.dtype == dtype
    ref = hetero_binarize(x64.to(dtype).double(), m)
    tol = {torch.float64: 0, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol * 4, rtol=tol)


def test_float64_hand_exact():
    x = torch.tensor([0.5, -1.5, 2.5, -4.5], dtype=torch.float64)
    torch.testing.assert_close(residual_binarize(x, 2), torch.tensor([1.0, -1.0, 3.5, -3.5], dtype=torch.float64), **EXACT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda():
    x = torch.randn(1000)
    m = make_bitmap(x, 1.4)
    torch.testing.assert_close(hetero_binarize(x.cuda(), m.cuda()).cpu(), hetero_binarize(x, m))


@pytest.mark.parametrize(
    "x,bitmap,exc,match",
    [
        (torch.tensor([1.0, float("nan")]), torch.tensor([1, 1]), ValueError, "x: contains NaN"),
        (torch.tensor([]), torch.tensor([], dtype=torch.long), ValueError, "x: expected a non-empty"),
        (torch.tensor([1, 2]), torch.tensor([1, 1]), TypeError, "floating-point"),
        (torch.randn(3), torch.tensor([1, 1]), ValueError, r"bitmap: shape \(2,\) does not match x's shape \(3,\)"),
        (torch.randn(2), torch.tensor([1, 9]), ValueError, r"bitmap: values \[9\] are not allowed"),
        (torch.randn(2), torch.tensor([0, 1]), ValueError, r"bitmap: values \[0\]"),
        (torch.randn(2), torch.tensor([1.0, 2.0]), TypeError, "bitmap: expected an integer tensor"),
    ],
)
def test_hetero_bad_input(x, bitmap, exc, match):
    with pytest.raises(exc, match=match):
        hetero_binarize(x, bitmap)


def test_bitmap_values_outside_the_mix():
    with pytest.raises(ValueError, match=r"bitmap: values \[2\] are not allowed; allowed bitwidths are \[1, 3\]"):
        hetero_binarize(torch.randn(3), torch.tensor([1, 2, 3]), mix="80/0/20")


@pytest.mark.parametrize("bits", [0, 9, 1.5, True])
def test_residual_bad_bits(bits):
    with pytest.raises(ValueError, match="bits: expected an integer in 1..8"):
        residual_binarize(torch.randn(3), bits)


def test_per_channel_on_a_1d_tensor_is_one_entry_per_channel():
    # Each slice of channel_dim=0 is one entry: mu_1 = |x_j|, so one bit reconstructs x exactly.
    x = torch.tensor([1.0, -3.0, 2.0, -6.0])
    assert torch.equal(residual_binarize(x, 1, channel_dim=0), x)
    assert torch.equal(hetero_binarize(x, torch.tensor([1, 2, 1, 2]), channel_dim=0), x)


def test_bad_channel_dim():
    with pytest.raises(ValueError, match="channel_dim"):
        residual_binarize(torch.randn(3, 3), 1, channel_dim=2)


# ------------------------------------------------------------------ finite in, finite out
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def test_issue_examples_at_float32_maximum_are_exact():
    x = torch.tensor([2e38, -2e38])
    assert torch.equal(residual_binarize(x, 1), x)  # mu = 2e38: the mean, not the sum, must fit
    assert torch.equal(residual_binarize(x, 2), x)  # E_1 = 0, mu_2 = 0
    y = torch.full((1000,), 1e36) * torch.tensor([1.0, -1.0]).repeat(500)
    torch.testing.assert_close(residual_binarize(y, 3), y, atol=0, rtol=1e-6)


def _saturated_reference(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn`` as if the exponent range were unbounded, rounded with saturation: ``fn(x / 256)``
    (no overflow there; dividing by a power of two is exact) times 256, clamped to the range."""
    big = torch.finfo(x.dtype).max
    return (fn(x * 2.0**-8).double() * 2.0**8).clamp(-big, big).to(x.dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_dtype_maximum_is_finite_and_saturates_the_unbounded_result(dtype, bits):
    big = torch.finfo(dtype).max
    x = torch.tensor([big, -big, 0.0, big / 3, -big / 7, big], dtype=dtype)
    out = residual_binarize(x, bits)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert torch.equal(out, _saturated_reference(lambda t: residual_binarize(t, bits), x))
    m = torch.tensor([1, bits, 1, bits, 2 if bits > 1 else 1, bits])
    for cdim in (None, 0):
        het = hetero_binarize(x, m, channel_dim=cdim)
        assert bool(torch.isfinite(het).all())
        assert torch.equal(het, _saturated_reference(lambda t: hetero_binarize(t, m, channel_dim=cdim), x))
        planes = binarize_planes(x, m, channel_dim=cdim)
        assert bool(torch.isfinite(planes[2]).all())
        assert torch.equal(dequantize_planes(*planes, channel_dim=0, dtype=dtype), het)


def test_two_planes_that_overflow_saturate_in_float16():
    # mu1 = 2/3 max, mu2 = 4/9 max: x_hat_0 = 10/9 max would be inf; the nearest finite is max.
    x = torch.tensor([65504.0, -65504.0, 0.0], dtype=torch.float16)
    expected = torch.tensor([65504.0, -65504.0, -14560.0], dtype=torch.float16)
    assert torch.equal(residual_binarize(x, 2), expected)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_scaled_path_is_exact_power_of_two_scaling(bits):
    # max|x| * N beyond float32's range: the loop runs on x * 2^-k and must give
    # exactly 2^120 times the result for x (scaling by a power of two is exact).
    x = torch.randn(1000, generator=torch.Generator().manual_seed(bits))
    m = make_bitmap(x, 1.4)
    scale = 2.0 ** 120
    assert torch.equal(residual_binarize(x * scale, bits), residual_binarize(x, bits) * scale)
    assert torch.equal(hetero_binarize(x * scale, m), hetero_binarize(x, m) * scale)
    signs, masks, scales = binarize_planes(x * scale, m)
    assert torch.equal(scales, binarize_planes(x, m)[2] * scale)
    assert torch.equal(dequantize_planes(signs, masks, scales), hetero_binarize(x, m) * scale)


def test_ste_gradient_finite_at_maximum():
    x = torch.tensor([3.4e38, -3.4e38, 0.5, -1.0], requires_grad=True)
    residual_binarize(x, 3).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_fixed_scales_at_maximum_are_finite():
    x = torch.tensor([3.4e38, -3.4e38, 1.0])
    out = binarize_with_scales(x, None, torch.tensor([3.0e38, 3.0e38, 1e38]))
    assert bool(torch.isfinite(out).all())
    # x_0: 3e38 + 3e38 - 1e38 saturates; x_2: 1 - 3e38 rounds to -3e38, so E_2 = 0 and s_3 = -1.
    assert torch.equal(out, torch.tensor([3.4028234663852886e38, -3.4028234663852886e38, -1e38]))
