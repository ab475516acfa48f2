"""The constant-geometry panel packer (csrc/dense_body.c ``pack_panel``): interior micro-panels
of full activation planes at 3x3 (dense taps for C 8/16/32, word-per-tap rows for C 64/128)
are packed with fixed tap offsets.  Images here are large enough that most micro-panels are
interior (12 consecutive rows whose receptive fields lie inside the image), so counts and
floats must equal the reference's on every SIMD variant through that path, also when a
second activation plane is masked (packed row by row beside it) and with per-sample scales."""

from __future__ import annotations

import pytest
import torch

from hbnn.kernels import binary_conv2d, binary_conv2d_counts, pack_conv_input, pack_conv_weight, prepare_weight
from hbnn.kernels import reference as ref

CASES = [  # (C, stride, pad, dilation, nx, masked_x, B, H, W, O)
    (8, 1, 1, 1, 2, False, 2, 12, 14, 13),
    (16, 1, 1, 1, 1, False, 2, 13, 15, 16),
    (16, 2, 1, 1, 2, True, 3, 17, 16, 20),
    (32, 1, 0, 1, 2, False, 2, 12, 13, 33),
    (32, 1, 2, 2, 1, False, 2, 14, 14, 16),
    (64, 1, 1, 1, 2, False, 2, 12, 13, 17),
    (64, 2, 1, 1, 2, True, 2, 15, 16, 32),
    (128, 1, 1, 1, 1, False, 2, 12, 12, 16),
    (128, 1, 1, 2, 2, True, 2, 13, 14, 20),
]


def _planes(gen, case, per_row: bool):
    c, _, _, _, nx, masked, b, h, w, o = case
    signs = torch.rand(nx, b, c, h, w, generator=gen) > 0.5
    masks = None
    if masked:  # plane 0 full, plane 1 with random active entries
        masks = torch.ones_like(signs)
        masks[1:] = torch.rand(nx - 1, b, c, h, w, generator=gen) > 0.3
        signs &= masks
    scales = torch.rand((nx, b) if per_row else (nx,), generator=gen) + 0.25
    x = pack_conv_input(signs, masks, scales)
    wt = pack_conv_weight(torch.rand(2, o, c, 3, 3, generator=gen) > 0.5, None, torch.rand(2, o, generator=gen) + 0.25)
    return x, wt


@pytest.mark.parametrize("case", CASES, ids=lambda c: "C{}s{}p{}d{}x{}{}".format(*c[:5], "m" if c[5] else ""))
@pytest.mark.parametrize("per_row", [False, True])
def test_panel_packer_matches_reference_every_variant(c_variants, gen, case, per_row):
    x, w = _planes(gen, case, per_row)
    s, p, d = case[1], case[2], case[3]
    want = ref.binary_conv2d_ref(x, w, (s, s), (p, p), (d, d))
    want_c = ref.binary_conv2d_counts_ref(x, w, (s, s), (p, p), (d, d))
    for v in c_variants:
        pw = prepare_weight(w, variant=v)
        assert torch.equal(binary_conv2d(x, pw, stride=s, padding=p, dilation=d, variant=v), want), v
        assert torch.equal(binary_conv2d_counts(x, pw, stride=s, padding=p, dilation=d, variant=v), want_c), v
