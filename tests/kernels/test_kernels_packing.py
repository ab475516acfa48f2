"""Packed layout: round trips, canonical words, C packers == torch packers == hbnn.quant maths."""

from __future__ import annotations

import pytest
import torch

from hbnn.kernels import PackedPlanes, pack_activations, pack_conv_input, pack_conv_weight, pack_planes
from hbnn.kernels.layout import pack_bits, unpack_bits, valid_words

EXACT = dict(atol=0, rtol=0)


def _same(a: PackedPlanes, b: PackedPlanes) -> None:
    assert a.full == b.full and a.shape == b.shape
    torch.testing.assert_close(a.signs, b.signs, **EXACT)
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        torch.testing.assert_close(a.masks, b.masks, **EXACT)
    torch.testing.assert_close(a.scales, b.scales, **EXACT)


def test_bit_order_is_lsb_first_with_zero_padding():
    bits = torch.zeros(1, 130, dtype=torch.bool)
    bits[0, [0, 63, 64, 129]] = True
    words = pack_bits(bits)
    assert words.tolist() == [[-(2**63) + 1, 1, 2]]  # bits 0 and 63 | bit 0 | bit 1
    assert valid_words(65).tolist() == [-1, 1]
    torch.testing.assert_close(unpack_bits(words, 130), bits, **EXACT)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
def test_round_trip_and_canonical_signs(gen, planes, k):
    signs, masks, scales = planes(gen, 3, (4, 5, k), True, per_row=True)
    p = pack_planes(signs, masks, scales, backend="torch")
    assert p.shape == (4, 5, k) and p.signs.shape == (3, 20, (k + 63) // 64) and p.full[0]
    s2, m2, a2 = p.unpack()
    torch.testing.assert_close(m2, masks, **EXACT)
    torch.testing.assert_close(s2, signs & masks, **EXACT)  # inactive signs are stored as 0
    expect = (scales.reshape(3, 4, 1, 1) * (signs.float() * 2 - 1) * masks).sum(0)
    torch.testing.assert_close(p.dequantize(), expect, atol=1e-6, rtol=0)


def test_all_full_planes_store_no_masks(gen, planes):
    signs, _, scales = planes(gen, 2, (3, 70), False, per_row=False)
    p = pack_planes(signs, torch.ones_like(signs), scales, backend="torch")
    assert p.masks is None and p.full == (True, True)


def test_c_packers_equal_torch_packers(c_variants, gen, planes, monkeypatch):
    cases = [(pack_planes, planes(gen, 3, shape, True, per_row=True)) for shape in [(5, 1), (3, 64), (7, 200)]]
    cases.append((pack_conv_input, planes(gen, 2, (2, 70, 5, 3), True, per_row=True)))
    cases.append((pack_conv_input, planes(gen, 1, (1, 3, 9, 9), False, per_row=False)))  # > one 64-position tile
    cases.append((pack_conv_weight, planes(gen, 3, (6, 130, 3, 3), True, per_row=True)))
    for variant in c_variants:
        monkeypatch.setenv("HBNN_KERNEL_VARIANT", variant)
        for packer, args in cases:
            _same(packer(*args, backend="c"), packer(*args, backend="torch"))


def test_conv_packing_is_nhwc_and_ohwi(gen, planes):
    signs, masks, scales = planes(gen, 2, (2, 3, 4, 5), True, per_row=False)
    p = pack_conv_input(signs, masks, scales, backend="torch")
    assert p.shape == (2, 4, 5, 3)
    s2, m2, _ = p.unpack()
    torch.testing.assert_close(m2, masks.permute(0, 1, 3, 4, 2), **EXACT)
    ws, wm, wa = planes(gen, 2, (6, 3, 3, 2), True, per_row=True)
    q = pack_conv_weight(ws, wm, wa, backend="torch")
    assert q.shape == (6, 3, 2, 3)
    torch.testing.assert_close(q.unpack()[0], (ws & wm).permute(0, 1, 3, 4, 2), **EXACT)


@pytest.mark.parametrize("shape", [(6, 130), (2, 70, 3, 5), (1, 3, 9, 8)])
@pytest.mark.parametrize("hetero", [False, True])
def test_pack_activations_equals_quant_residual_planes(c_variants, gen, shape, hetero, monkeypatch):
    """Fused C binarize+pack == hbnn.quant's residual loop with fixed scales, bit for bit."""
    from hbnn.quant.functional import binarize_with_scales, residual_forward

    x = torch.randn(shape, generator=gen)
    x.view(-1)[:7] = 0.0  # sign(0) = -1
    scales = torch.tensor([0.8, 0.3, 0.1])
    bitmap = torch.randint(1, 4, shape, generator=gen, dtype=torch.int8) if hetero else None
    _, _, signs, masks = residual_forward(x, bitmap, 3, scales=scales, keep_planes=True)
    packer = pack_planes if x.dim() == 2 else pack_conv_input
    expect = packer(signs, masks, scales, backend="torch")
    _same(pack_activations(x, scales, bitmap, backend="torch"), expect)
    for variant in c_variants:
        monkeypatch.setenv("HBNN_KERNEL_VARIANT", variant)
        _same(pack_activations(x, scales, bitmap, backend="c"), expect)
    got = expect.dequantize()
    if x.dim() == 4:
        got = got.permute(0, 3, 1, 2)
    torch.testing.assert_close(got, binarize_with_scales(x, bitmap, scales), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 7, 8, 15, 16, 17, 31, 33, 48, 63, 64, 100])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_vector_row_packers_equal_torch_at_every_tail(c_variants, gen, k, n, monkeypatch):
    """The SIMD row packers (16- and 8-float vectors) == the torch packer bit for bit, at every
    row tail, with levels outside 1..n in the map (< 1 counts as 1) and exact residual ties."""
    x = torch.randn(37, k, generator=gen)
    scales = torch.tensor([0.5, 0.25, 0.125][:n])
    x.view(-1)[::5] = 0.5  # e - mu_0 == 0 exactly: sign(0) = -1 on plane 1
    x.view(-1)[1::7] = 0.0
    bitmap = torch.randint(-1, n + 2, (37, k), generator=gen, dtype=torch.int8)
    for bm in (None, bitmap):
        expect = pack_activations(x, scales, bm, backend="torch")
        for variant in c_variants:
            monkeypatch.setenv("HBNN_KERNEL_VARIANT", variant)
            _same(pack_activations(x, scales, bm, backend="c"), expect)


def test_invalid_inputs_raise(gen, planes):
    signs, masks, scales = planes(gen, 2, (3, 10), True, per_row=False)
    with pytest.raises(TypeError, match="bool"):
        pack_planes(signs.float(), masks, scales)
    with pytest.raises(ValueError, match="planes"):
        pack_planes(torch.zeros(9, 3, 10, dtype=torch.bool), None, torch.ones(9))
    with pytest.raises(ValueError, match="scales"):
        pack_planes(signs, masks, torch.ones(3))
    with pytest.raises(ValueError, match="first dim"):
        pack_planes(signs, masks, torch.ones(2, 10), backend="torch")
    with pytest.raises(ValueError, match="signs"):
        PackedPlanes(torch.zeros(2, 3, 2, dtype=torch.int64), None, (True, True), torch.ones(2), (3, 10))
