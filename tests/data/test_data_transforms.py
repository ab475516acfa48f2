"""Transform maths: crop offsets, flips, crop-window geometry, normalisation (all exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hbnn.data.seeding import derive_seed, make_generator
from hbnn.data.transforms import (
    center_crop_params,
    crop_batch,
    hflip_where,
    image_to_uint8,
    normalize,
    pad_random_crop,
    random_hflip,
    random_resized_crop_image,
    random_resized_crop_params,
    resize_center_crop_image,
    to_float,
)


def images(b=6, c=3, h=7, w=5, seed=0):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_batch_matches_per_image_slicing():
    x = images()
    tops, lefts = torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([0, 1, 2, 0, 1, 2])
    out = crop_batch(x, tops, lefts, (4, 3))
    assert out.shape == (6, 3, 4, 3) and out.is_contiguous()
    for b in range(6):
        t, l = int(tops[b]), int(lefts[b])
        assert torch.equal(out[b], x[b, :, t : t + 4, l : l + 3])


def test_pad_random_crop_uses_the_documented_draws():
    x, p = images(), 2
    out = pad_random_crop(x, p, make_generator(5))
    replay = make_generator(5)
    tops = torch.randint(0, 2 * p + 1, (6,), generator=replay)
    lefts = torch.randint(0, 2 * p + 1, (6,), generator=replay)
    padded = torch.zeros(6, 3, 7 + 2 * p, 5 + 2 * p, dtype=torch.uint8)
    padded[:, :, p:-p, p:-p] = x
    assert out.shape == x.shape and out.dtype == torch.uint8
    for b in range(6):
        t, l = int(tops[b]), int(lefts[b])
        assert torch.equal(out[b], padded[b, :, t : t + 7, l : l + 5])
    assert torch.equal(pad_random_crop(x, 0, make_generator(5)), x)


def test_crop_at_offset_p_is_identity_and_shift_moves_pixels():
    x, p = images(b=1, c=1, h=4, w=4), 1
    centred = crop_batch(torch.nn.functional.pad(x, (p, p, p, p)), torch.tensor([p]), torch.tensor([p]), (4, 4))
    assert torch.equal(centred, x)
    shifted = crop_batch(torch.nn.functional.pad(x, (p, p, p, p)), torch.tensor([0]), torch.tensor([2]), (4, 4))
    # top 0 moves the image down one row (zero row on top); left 2 moves it left one column
    assert torch.equal(shifted[0, 0, 0], torch.zeros(4, dtype=torch.uint8))
    assert torch.equal(shifted[0, 0, 1:, :3], x[0, 0, :3, 1:])
    assert torch.equal(shifted[0, 0, :, 3], torch.zeros(4, dtype=torch.uint8))


def test_flips():
    x = images()
    mask = torch.tensor([True, False, True, False, False, True])
    out = hflip_where(x, mask)
    for b in range(6):
        assert torch.equal(out[b], x[b, :, :, torch.arange(4, -1, -1)] if mask[b] else x[b])
    replay_mask = torch.rand(6, generator=make_generator(9)) < 0.5
    assert torch.equal(random_hflip(x, make_generator(9)), hflip_where(x, replay_mask))
    assert torch.equal(random_hflip(x, make_generator(9), p=0.0), x)


def test_to_float_and_normalize_are_exact():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    f = to_float(x)
    assert f.dtype == torch.float32 and torch.equal(f[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    out = normalize(to_float(x), mean, std)
    want = (torch.tensor([0.0, 51 / 255, 1.0]) - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(out[0, :, 1, 1], want, atol=1e-7, rtol=0)


def test_random_resized_crop_windows_obey_scale_ratio_and_bounds():
    for seed in range(200):
        h, w = 40 + seed % 23, 60 - seed % 17
        top, left, ch, cw = random_resized_crop_params(h, w, make_generator(seed))
        assert 0 <= top <= h - ch and 0 <= left <= w - cw and ch > 0 and cw > 0
        area = ch * cw / (h * w)
        assert 0.08 * 0.7 <= area <= 1.0  # rounding of h, w can shave a little off
        assert 3 / 4 * 0.8 <= cw / ch <= 4 / 3 * 1.25
    again = random_resized_crop_params(30, 30, make_generator(1))
    assert random_resized_crop_params(30, 30, make_generator(1)) == again


def test_random_resized_crop_fallback_is_a_centred_clamped_window():
    never_fits = (2.0, 3.0)  # the window is always larger than the image
    assert random_resized_crop_params(10, 40, make_generator(0), scale=never_fits) == (0, 13, 10, 13)
    assert random_resized_crop_params(40, 10, make_generator(0), scale=never_fits) == (13, 0, 13, 10)
    assert random_resized_crop_params(20, 24, make_generator(0), scale=never_fits) == (0, 0, 20, 24)


def test_center_crop_params():
    assert center_crop_params(10, 7, 4) == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="size 8 exceeds the image 10x7"):
        center_crop_params(10, 7, 8)


def test_pillow_pipelines():
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert torch.equal(image_to_uint8(image), torch.from_numpy(pixels).permute(2, 0, 1))
    # shorter side already equal to `resize`: pure centre crop, exact pixels
    out = image_to_uint8(resize_center_crop_image(image, 12, 8))
    assert torch.equal(out, torch.from_numpy(pixels[2:10, 6:14]).permute(2, 0, 1))
    resized = resize_center_crop_image(image, 18, 16)
    assert resized.size == (16, 16)
    crop = random_resized_crop_image(image, 9, make_generator(3))
    top, left, h, w = random_resized_crop_params(12, 20, make_generator(3))
    assert crop.size == (9, 9)
    reference = image.crop((left, top, left + w, top + h)).resize((9, 9), Image.BILINEAR)
    assert torch.equal(image_to_uint8(crop), image_to_uint8(reference))
    gray = Image.fromarray(pixels[:, :, 0], mode="L")
    assert image_to_uint8(gray).shape == (3, 12, 20)


def test_seed_derivation_is_stable_and_sensitive():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(0, e, 1, 0, k) for e in range(5) for k in range(20)}) == 100
    assert 0 <= derive_seed(2**40, 7) < 2**63
    assert not math.isnan(float(torch.rand(1, generator=make_generator(0, 0))))
