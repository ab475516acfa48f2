"""Structured bit maps (per channel, per K-block, per sample/pixel, per channel group): the
plane-skipping paths (absent / full / sparse panels, row permutations, prepared weights) are
bit-identical to the pure-torch reference on every SIMD variant, for counts and floats."""

from __future__ import annotations

import pytest
import torch

from hbnn.kernels import (
    PreparedWeight,
    binary_conv2d,
    binary_conv2d_counts,
    binary_linear,
    binary_linear_counts,
    pack_conv_input,
    pack_conv_weight,
    pack_planes,
    prepare_weight,
)
from hbnn.kernels import reference as ref

MIX = (0.7, 0.2, 0.1)  # 1/2/3 bits: the paper's 70/20/10 mix


def levels(shape, gen, mix=MIX) -> torch.Tensor:
    """Random bitwidths 1..len(mix) of ``shape`` with the mix's fractions."""
    u = torch.rand(shape, generator=gen)
    edges = torch.tensor(mix).cumsum(0)[:-1]
    return 1 + (u[..., None] >= edges).sum(-1)


def planes_from_bits(bits: torch.Tensor, gen, per_row: bool):
    """``(signs, masks, scales)`` with plane ``i`` active where ``bits > i`` (scales per row or tensor)."""
    n = int(bits.max())
    signs = torch.rand((n, *bits.shape), generator=gen) > 0.5
    masks = torch.stack([bits > i for i in range(n)])
    scales = torch.rand((n, bits.shape[0]) if per_row else (n,), generator=gen) + 0.25
    return signs, masks, scales


def weight_bits(structure: str, o: int, taps: int, c: int, gen, block: int = 64) -> torch.Tensor:
    """Bitwidths ``[O, taps, C]`` (OHWI rows) for ``entry``, ``channel`` or ``block`` structure."""
    if structure == "entry":
        return levels((o, taps, c), gen)
    if structure == "channel":
        return levels((o, 1, 1), gen).expand(o, taps, c).clone()
    k = taps * c  # runs of `block` inputs of the flattened OHWI row
    per_block = levels((o, (k + block - 1) // block), gen)
    return per_block.repeat_interleave(block, dim=1)[:, :k].reshape(o, taps, c)


def act_bits(structure: str, rows: int, pix: int, c: int, gen, group: int = 64) -> torch.Tensor:
    """Bitwidths ``[rows, pix, C]`` (NHWC) for ``entry``, ``pixel`` (all C of a pixel / a
    linear row) or ``group`` (runs of ``group`` channels of a pixel) structure."""
    if structure == "entry":
        return levels((rows, pix, c), gen)
    if structure == "pixel":
        return levels((rows, pix, 1), gen).expand(rows, pix, c).clone()
    per_group = levels((rows, pix, (c + group - 1) // group), gen)
    return per_group.repeat_interleave(group, dim=2)[:, :, :c]


def split(name: str) -> tuple[str, int]:
    """``"block17"`` -> ``("block", 17)``; no number -> 64."""
    kind = name.rstrip("0123456789")
    return kind, int(name[len(kind):] or 64)


def check_linear(x, w, variants):
    counts, y = ref.binary_linear_counts_ref(x, w), ref.binary_linear_ref(x, w)
    pw = prepare_weight(w)
    for v in variants:
        for ww in (w, pw):
            assert torch.equal(binary_linear_counts(x, ww, backend="c", variant=v), counts), v
            assert torch.equal(binary_linear(x, ww, backend="c", variant=v), y), v
    return pw


W_STRUCT = ["entry", "channel", "block", "block17"]
X_STRUCT = ["entry", "pixel", "group", "group24"]


@pytest.mark.parametrize("ws", W_STRUCT)
@pytest.mark.parametrize("xs", X_STRUCT)
def test_linear_structures_every_variant(c_variants, gen, ws, xs):
    for k, o, rows in ((200, 37, 29), (64, 16, 12), (1000, 50, 7)):
        (wk, wsize), (xk, xsize) = split(ws), split(xs)
        wb = weight_bits(wk, o, 1, k, gen, block=wsize)
        xb = act_bits(xk, rows, 1, k, gen, group=xsize)
        w = pack_planes(*planes_from_bits(wb.reshape(o, k), gen, per_row=True))
        x = pack_planes(*planes_from_bits(xb.reshape(rows, k), gen, per_row=k == 200))
        check_linear(x, w, c_variants)


CONV_CASES = [
    # (B, C, H, W, O, kernel, stride, padding, dilation)
    (2, 70, 7, 6, 21, 3, 1, 1, 1),
    (1, 130, 6, 5, 17, 3, 2, 1, 1),
    (2, 64, 5, 7, 33, 3, 1, 2, 2),
    (3, 5, 5, 5, 9, 1, 1, 0, 1),
    (1, 40, 6, 6, 16, (3, 2), (2, 1), (0, 1), (1, 2)),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("ws,xs", [("entry", "entry"), ("channel", "pixel"), ("block", "group"),
                                   ("channel", "group24"), ("block17", "pixel"), ("entry", "pixel")])
def test_conv_structures_every_variant(c_variants, gen, case, ws, xs):
    b, c, h, wd, o, kernel, stride, padding, dilation = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    (wk, wsize), (xk, xsize) = split(ws), split(xs)
    wb = weight_bits(wk, o, kh * kw, c, gen, block=wsize)
    xb = act_bits(xk, b, h * wd, c, gen, group=xsize)
    wt = planes_from_bits(wb.reshape(o, kh, kw, c).permute(0, 3, 1, 2), gen, per_row=True)
    xt = planes_from_bits(xb.reshape(b, h, wd, c).permute(0, 3, 1, 2), gen, per_row=b == 2)
    x, w = pack_conv_input(*xt), pack_conv_weight(*wt)
    args = dict(stride=stride, padding=padding, dilation=dilation)
    counts, y = ref.binary_conv2d_counts_ref(x, w, **args), ref.binary_conv2d_ref(x, w, **args)
    pw = prepare_weight(wt)
    assert isinstance(pw, PreparedWeight) and pw.shape == (o, kh, kw, c)
    for v in c_variants:
        for ww in (w, pw):
            assert torch.equal(binary_conv2d_counts(x, ww, backend="c", variant=v, **args), counts), v
            assert torch.equal(binary_conv2d(x, ww, backend="c", variant=v, **args), y), v


def test_channel_weights_are_permuted_and_the_permutation_is_undone(c_variants, gen):
    # Per-output-channel bitwidths interleaved 3, 1, 2, 1, ...: panels are uniform only after sorting.
    o, k = 70, 150
    bits = torch.tensor([3, 1, 2, 1, 1])[torch.arange(o) % 5][:, None].expand(o, k)
    w = pack_planes(*planes_from_bits(bits, gen, per_row=True))
    pw = prepare_weight(w)
    perm = pw.perm
    assert pw.permuted
    assert sorted(perm[perm >= 0].tolist()) == list(range(o))
    order = bits[perm[perm >= 0], 0]
    assert torch.equal(order, order.sort(descending=True, stable=True).values)  # most planes first
    status = pw.status_counts()
    assert status["absent"] > 0 and status["masked"] <= 2 * 2  # one mixed panel per plane boundary at most
    x = pack_planes(*planes_from_bits(act_bits("pixel", 40, 1, k, gen).reshape(40, k), gen, per_row=True))
    check_linear(x, w, c_variants)
    x_full = pack_planes(torch.rand(2, 40, k, generator=gen) > 0.5, None, torch.tensor([0.5, 0.25]))
    check_linear(x_full, w, c_variants)


def test_block_weights_use_sparse_panels(c_variants, gen):
    # Long rows (48 words): the 10% plane is cheaper by per-row word lists (HBNN_SP_* cost model).
    o, k = 40, 64 * 48
    w = pack_planes(*planes_from_bits(weight_bits("block", o, 1, k, gen).reshape(o, k), gen, per_row=False))
    pw = prepare_weight(w)
    assert not pw.permuted and pw.status_counts()["sparse"] > 0
    x = pack_planes(torch.rand(2, 30, k, generator=gen) > 0.5, None, torch.tensor([0.5, 0.25]))
    check_linear(x, w, c_variants)
    # Masked activations too (weight-side word lists against masked micro-panels, or the
    # activation side's lists when those are cheaper).
    for xs in ("entry", "group", "pixel"):
        x = pack_planes(*planes_from_bits(act_bits(xs, 30, 1, k, gen).reshape(30, k), gen, per_row=True))
        check_linear(x, w, c_variants)


@pytest.mark.parametrize("wstruct", ["channel", "entry", "block"])
def test_pixel_activations_in_a_larger_conv(c_variants, gen, wstruct):
    # Enough rows per chunk for the tap-compacted path (per-pixel bitwidths, 10% 3-bit pixels).
    b, c, h, wd, o = 2, 96, 24, 23, 20
    xb = act_bits("pixel", b, h * wd, c, gen)
    wb = weight_bits(wstruct, o, 9, c, gen)
    xt = planes_from_bits(xb.reshape(b, h, wd, c).permute(0, 3, 1, 2), gen, per_row=False)
    wt = planes_from_bits(wb.reshape(o, 3, 3, c).permute(0, 3, 1, 2), gen, per_row=True)
    x, w = pack_conv_input(*xt), pack_conv_weight(*wt)
    for args in (dict(padding=1), dict(stride=2, padding=0, dilation=2)):
        counts, y = ref.binary_conv2d_counts_ref(x, w, **args), ref.binary_conv2d_ref(x, w, **args)
        for v in c_variants:
            assert torch.equal(binary_conv2d_counts(x, w, backend="c", variant=v, **args), counts), v
            assert torch.equal(binary_conv2d(x, w, backend="c", variant=v, **args), y), v


@pytest.mark.parametrize("density", [(0.3, 0.1), (0.9, 0.02)])
def test_pixel_planes_skip_packing_exactly(c_variants, gen, density):
    # Pixel planes (every input pixel all-or-nothing) take the tap path from the pixel states
    # alone (no micro-panels packed) when cheaper; C = 100 (a partial last word), per-sample
    # scales, borders, stride/dilation, an all-absent fourth plane, and a dense plane (90%)
    # that stays on the packed path next to a sparse one.
    b, c, h, wd, o = 2, 100, 17, 19, 40
    u = torch.rand(b, 1, h, wd, generator=gen)
    act = torch.stack([torch.ones_like(u, dtype=torch.bool), u < density[0], u < density[1],
                       torch.zeros_like(u, dtype=torch.bool)]).expand(4, b, c, h, wd)
    xt = (torch.rand(4, b, c, h, wd, generator=gen) > 0.5, act.clone(), torch.rand(4, b, generator=gen) + 0.25)
    wt = planes_from_bits(weight_bits("channel", o, 9, c, gen).reshape(o, 3, 3, c).permute(0, 3, 1, 2), gen,
                          per_row=True)
    x, w = pack_conv_input(*xt), pack_conv_weight(*wt)
    pw = prepare_weight(wt)
    for args in (dict(padding=1), dict(stride=2, padding=2, dilation=2), dict(padding=0)):
        counts, y = ref.binary_conv2d_counts_ref(x, w, **args), ref.binary_conv2d_ref(x, w, **args)
        for v in c_variants:
            for ww in (w, pw):
                assert torch.equal(binary_conv2d_counts(x, ww, backend="c", variant=v, **args), counts), v
                assert torch.equal(binary_conv2d(x, ww, backend="c", variant=v, **args), y), v


def test_all_absent_planes_and_single_plane(c_variants, gen):
    # Every row 1 bit except one: planes 2-3 are absent on all panels but the first.
    o, k = 33, 90
    bits = torch.ones(o, k, dtype=torch.int64)
    bits[5] = 3
    w = pack_planes(*planes_from_bits(bits, gen, per_row=True))
    assert prepare_weight(w).status_counts()["absent"] >= 2
    xb = torch.ones(20, k, dtype=torch.int64)
    xb[3, :10] = 2
    x = pack_planes(*planes_from_bits(xb, gen, per_row=False))
    check_linear(x, w, c_variants)


def test_prepared_weight_without_c_uses_the_reference(gen, monkeypatch):
    monkeypatch.setenv("HBNN_KERNELS", "off")
    w = pack_planes(*planes_from_bits(levels((9, 70), gen), gen, per_row=True), backend="torch")
    x = pack_planes(*planes_from_bits(levels((4, 70), gen), gen, per_row=False), backend="torch")
    pw = prepare_weight(w)
    assert pw.panels is None and pw.status_counts() == {}
    assert torch.equal(binary_linear(x, pw), ref.binary_linear_ref(x, w))
    assert torch.equal(binary_linear_counts(x, pw), ref.binary_linear_counts_ref(x, w))


def test_prepare_weight_rejects_bad_input():
    with pytest.raises(TypeError, match="PackedPlanes"):
        prepare_weight(torch.zeros(3, 4))
