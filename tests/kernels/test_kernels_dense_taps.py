"""Dense taps for narrow convs (C < 64, csrc/dense_body.c): the kh*kw*C bits of a receptive
field packed densely must give counts and floats bit-identical to the reference on every
SIMD variant, and the path must actually be taken for full activation planes."""

from __future__ import annotations

import pytest
import torch

from hbnn.kernels import _cbackend, binary_conv2d, binary_conv2d_counts, pack_conv_input, pack_conv_weight
from hbnn.kernels import prepare_weight
from hbnn.kernels import reference as ref
from hbnn.kernels.prepared import dense_conv_weight

CASES = [  # (C, k, stride, pad, nw, nx, B, H, W, O): B*OH*OW not a multiple of 12
    (1, 3, 1, 1, 1, 1, 2, 5, 7, 5),
    (3, 3, 1, 0, 2, 3, 3, 7, 9, 21),
    (16, 3, 1, 1, 1, 1, 2, 7, 9, 17),
    (16, 3, 2, 1, 2, 2, 3, 9, 8, 16),
    (24, 3, 2, 0, 3, 1, 2, 9, 11, 33),
    (32, 3, 1, 1, 2, 2, 3, 6, 5, 40),
    (48, 3, 2, 1, 1, 3, 2, 7, 7, 19),
    (16, 1, 1, 0, 1, 2, 3, 5, 5, 18),
    (32, 1, 2, 0, 2, 1, 2, 7, 9, 12),
    (24, 5, 1, 2, 2, 2, 2, 6, 7, 20),  # 600 bits: taps straddle word boundaries
    (8, 3, 1, 1, 2, 2, 2, 6, 7, 13),   # C 8 / 16 / 32 at 3x3: the unrolled row packers
    (32, 3, 2, 1, 1, 1, 2, 9, 9, 16),
]


@pytest.fixture
def dense_calls(monkeypatch):
    """Records the ``dense`` flag of every C GEMM call."""
    calls, real = [], _cbackend.gemm

    def spy(*args, **kw):
        calls.append(kw.get("dense", False))
        return real(*args, **kw)

    monkeypatch.setattr(_cbackend, "gemm", spy)
    return calls


def _planes(gen, case, per_row: bool):
    c, k, _, _, nw, nx, b, h, w, o = case
    x = pack_conv_input(torch.rand(nx, b, c, h, w, generator=gen) > 0.5, None,
                        torch.rand((nx, b) if per_row else (nx,), generator=gen) + 0.25)
    wt = pack_conv_weight(torch.rand(nw, o, c, k, k, generator=gen) > 0.5, None,
                          torch.rand(nw, o, generator=gen) + 0.25)
    return x, wt


@pytest.mark.parametrize("case", CASES, ids=lambda c: "C{}k{}s{}p{}w{}x{}".format(*c[:6]))
@pytest.mark.parametrize("per_row", [False, True])
def test_dense_taps_match_reference_every_variant(c_variants, gen, dense_calls, case, per_row):
    x, w = _planes(gen, case, per_row)
    s, p = case[2], case[3]
    want = ref.binary_conv2d_ref(x, w, (s, s), (p, p), (1, 1))
    want_c = ref.binary_conv2d_counts_ref(x, w, (s, s), (p, p), (1, 1))
    for v in c_variants:
        pw = prepare_weight(w, variant=v)
        assert torch.equal(binary_conv2d(x, pw, stride=s, padding=p, variant=v), want), v
        assert torch.equal(binary_conv2d_counts(x, pw, stride=s, padding=p, variant=v), want_c), v
        assert torch.equal(binary_conv2d(x, w, stride=s, padding=p, variant=v), want), v  # unprepared
    assert all(dense_calls) == (case[1] > 1) and any(dense_calls) == (case[1] > 1)


@pytest.mark.parametrize("c, kernel, stride, pad, dil", [
    (16, (3, 5), (1, 2), (1, 2), (2, 1)),   # window-row fields of 80 bits (2 words)
    (8, (5, 3), (2, 1), (0, 1), (1, 2)),
    (24, (2, 3), (1, 1), (1, 0), (1, 3)),   # 72-bit fields straddling words
    (48, (3, 1), (1, 1), (2, 0), (2, 1)),
])
def test_dense_taps_rectangular_dilated_every_variant(c_variants, gen, dense_calls, c, kernel, stride, pad, dil):
    """Rectangular kernels with dilation and unequal stride / padding per axis: the window-row
    fields (kh fields of kw*C bits per row) give exactly the reference's counts and floats."""
    nw, nx, b, h, w_, o = 2, 2, 2, 9, 11, 18
    x = pack_conv_input(torch.rand(nx, b, c, h, w_, generator=gen) > 0.5, None, torch.rand(nx, generator=gen) + 0.25)
    w = pack_conv_weight(torch.rand(nw, o, c, *kernel, generator=gen) > 0.5, None, torch.rand(nw, o, generator=gen) + 0.25)
    want = ref.binary_conv2d_ref(x, w, stride, pad, dil)
    want_c = ref.binary_conv2d_counts_ref(x, w, stride, pad, dil)
    for v in c_variants:
        pw = prepare_weight(w, variant=v)
        assert torch.equal(binary_conv2d(x, pw, stride=stride, padding=pad, dilation=dil, variant=v), want), v
        assert torch.equal(binary_conv2d_counts(x, pw, stride=stride, padding=pad, dilation=dil, variant=v), want_c), v
    assert dense_calls and all(dense_calls)


def test_masked_weights_and_masked_activations(c_variants, gen, planes, dense_calls):
    """Masked weights and masked activations take the dense path (exact)."""
    ws, wm, wsc = planes(gen, 3, (20, 16, 3, 3), True, True)
    w = pack_conv_weight(ws, wm, wsc)
    xs, xm, xsc = planes(gen, 2, (2, 16, 6, 7), False, False)
    xf = pack_conv_input(xs, xm, xsc)
    xs, xm, xsc = planes(gen, 2, (2, 16, 6, 7), True, False)
    xmk = pack_conv_input(xs, xm, xsc)
    for v in c_variants:
        pw = prepare_weight(w, variant=v)
        for x in (xf, xmk):
            want = ref.binary_conv2d_ref(x, w, (1, 1), (1, 1), (1, 1))
            assert torch.equal(binary_conv2d(x, pw, padding=1, variant=v), want), v
    assert dense_calls == [True, True] * len(c_variants)


def _masked_input(gen, kind: str, nx: int, b: int, c: int, h: int, w: int):
    """Activation planes with masks of one kind: ``entry`` (random entries), ``pixel`` (whole
    pixels on/off, as per-pixel bitwidths give), ``absent`` (an upper plane with no entry)."""
    signs = torch.rand(nx, b, c, h, w, generator=gen) > 0.5
    if kind == "entry":
        masks = torch.rand(nx, b, c, h, w, generator=gen) > 0.4
    else:
        masks = (torch.rand(nx, b, 1, h, w, generator=gen) > 0.6).expand(nx, b, c, h, w).clone()
        if kind == "absent":
            masks[-1] = False
    masks[0] = True  # plane 0 is active everywhere (as in every packed activation)
    return pack_conv_input(signs & masks, masks, torch.rand(nx, b, generator=gen) + 0.25)


@pytest.mark.parametrize("kind", ["entry", "pixel", "absent"])
@pytest.mark.parametrize("c, k, stride, pad", [(16, 3, 1, 1), (8, 3, 2, 1), (32, 3, 1, 0), (24, 5, 1, 2), (48, 3, 2, 1),
                                                (3, 3, 1, 1)])
def test_dense_taps_with_masked_activation_planes_every_variant(c_variants, gen, dense_calls, kind, c, k, stride, pad):
    """Masked activation planes on dense taps (mask bits packed like the signs, border taps
    absent): counts and floats equal the reference on every variant, full or masked weights."""
    x = _masked_input(gen, kind, 3, 2, c, 9, 8)
    for wmask in (False, True):
        ws = torch.rand(2, 20, c, k, k, generator=gen) > 0.5
        wm = torch.rand(2, 20, c, k, k, generator=gen) > 0.3 if wmask else torch.ones_like(ws)
        wm[0] = True
        w = pack_conv_weight(ws & wm, wm, torch.rand(2, 20, generator=gen) + 0.25)
        want = ref.binary_conv2d_ref(x, w, (stride, stride), (pad, pad), (1, 1))
        want_c = ref.binary_conv2d_counts_ref(x, w, (stride, stride), (pad, pad), (1, 1))
        for v in c_variants:
            pw = prepare_weight(w, variant=v)
            assert torch.equal(binary_conv2d(x, pw, stride=stride, padding=pad, variant=v), want), (v, wmask)
            assert torch.equal(binary_conv2d_counts(x, pw, stride=stride, padding=pad, variant=v), want_c), (v, wmask)
    assert dense_calls and all(dense_calls)


def test_dense_weight_is_the_ohwi_flatten(gen):
    w = pack_conv_weight(torch.rand(2, 5, 16, 3, 3, generator=gen) > 0.5, None, torch.ones(2))
    signs, _, _ = w.unpack()  # [n, O, kh, kw, C]
    d = dense_conv_weight(w)
    assert d.shape == (5, 144) and d.signs.shape == (2, 5, 3)
    assert torch.equal(d.unpack()[0], signs.reshape(2, 5, 144))


def test_prepared_weight_keeps_dense_panels_only_for_narrow_taps(c_variants, gen):
    """A narrow conv weight is prepared as its dense-tap flatten only (ceil(144/64) = 3 words
    per row for C 16 at 3x3); wide and pointwise convs keep one word run per tap."""
    narrow = pack_conv_weight(torch.rand(1, 4, 16, 3, 3, generator=gen) > 0.5, None, torch.ones(1))
    wide = pack_conv_weight(torch.rand(1, 4, 64, 3, 3, generator=gen) > 0.5, None, torch.ones(1))
    pointwise = pack_conv_weight(torch.rand(1, 4, 16, 1, 1, generator=gen) > 0.5, None, torch.ones(1))
    pn, pw_, pp = prepare_weight(narrow), prepare_weight(wide), prepare_weight(pointwise)
    assert pn.dense and not pw_.dense and not pp.dense
    assert pn.panels["ws"].shape[2] == 3 and pw_.panels["ws"].shape[2] == 9 and pp.panels["ws"].shape[2] == 1
