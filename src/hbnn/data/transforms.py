"""Image transforms: batched tensor augmentation, per-image Pillow ops, normalisation.

Two families, both deterministic given a ``torch.Generator``:

* **Batched** (in-memory datasets: IDX, CIFAR): operate on ``uint8 [B, C, H, W]`` with
  tensor indexing, one generator per batch. Draw order is fixed (crop offsets for all
  samples, then flip coins for all samples), so a batch is a pure function of its
  images and its generator.
* **Per image** (image folders): Pillow ops on one decoded image, one generator per
  sample; the result is turned into ``uint8 [C, H, W]``.

Both end in :func:`to_float` + :func:`normalize`, applied by the loader to whole batches.
Pillow is imported only inside the per-image functions.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "crop_batch",
    "pad_random_crop",
    "hflip_where",
    "random_hflip",
    "random_resized_crop_params",
    "center_crop_params",
    "random_resized_crop_image",
    "resize_center_crop_image",
    "image_to_uint8",
    "to_float",
    "normalize",
]


# ----------------------------------------------------------------- batched tensor ops


def crop_batch(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop a different window from each image of a batch.

    ``out[b] = images[b, :, tops[b] : tops[b] + h, lefts[b] : lefts[b] + w]``.

    Args:
        images: ``[B, C, H, W]`` tensor of any dtype.
        tops, lefts: int64 ``[B]`` window corners, with ``0 <= tops[b] <= H - h`` etc.
        size: ``(h, w)`` of the window.

    Returns:
        ``[B, C, h, w]`` contiguous tensor.
    """
    h, w = size
    batch = images.shape[0]
    rows = tops.view(batch, 1) + torch.arange(h)  # [B, h]
    cols = lefts.view(batch, 1) + torch.arange(w)  # [B, w]
    b = torch.arange(batch).view(batch, 1, 1)
    channels_last = images.permute(0, 2, 3, 1)  # index H, W together, keep C whole
    out = channels_last[b, rows.view(batch, h, 1), cols.view(batch, 1, w)]  # [B, h, w, C]
    return out.permute(0, 3, 1, 2).contiguous()


def pad_random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side, then crop back to ``H x W`` at a random offset.

    Offsets are drawn as ``tops = randint(0, 2p + 1, [B])`` then ``lefts`` likewise,
    from ``generator``; a crop at offset ``(p, p)`` returns the original image.

    Args:
        images: ``[B, C, H, W]`` (typically uint8).
        padding: pixels of zero padding ``p >= 0``.
        generator: source of the offsets.

    Returns:
        ``[B, C, H, W]`` tensor of the input dtype.
    """
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    tops = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    lefts = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    return crop_batch(padded, tops, lefts, (height, width))


def hflip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of ``[B, C, H, W]`` whose bool ``mask[b]`` is True."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def random_hflip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image with probability ``p``: ``mask = rand([B], generator) < p``."""
    mask = torch.rand(images.shape[0], generator=generator) < p
    return hflip_where(images, mask)


# ------------------------------------------------------------- crop-window geometry


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator))


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, high, (1,), generator=generator))


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Choose the window of a random-resized crop (Inception-style).

    Up to 10 tries: area fraction ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``,
    ``w = round(sqrt(s*H*W*r))``, ``h = round(sqrt(s*H*W/r))``; the first window that
    fits is placed uniformly at random. Otherwise fall back to the largest centred
    window whose aspect is ``W/H`` clamped to ``ratio``.

    Args:
        height, width: image size.
        generator: source of all draws.
        scale: range of the window area as a fraction of the image area.
        ratio: range of the window aspect ``w / h``.

    Returns:
        ``(top, left, h, w)`` of the window.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(height - h + 1, generator)
            left = _randint(width - w + 1, generator)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_params(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Return ``(top, left, size, size)``: the centred ``size x size`` window (floor offsets)."""
    if size > height or size > width:
        raise ValueError(f"center crop: size {size} exceeds the image {height}x{width}")
    return (height - size) // 2, (width - size) // 2, size, size


# ------------------------------------------------------------------ per-image (Pillow)


def _bilinear():
    from PIL import Image

    return getattr(Image, "Resampling", Image).BILINEAR


def random_resized_crop_image(image, size: int, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop the window of :func:`random_resized_crop_params` and resize it to ``size x size`` (bilinear).

    Args:
        image: a ``PIL.Image``.
        size: output side in pixels.
        generator: source of the window draws.

    Returns:
        A ``size x size`` ``PIL.Image``.
    """
    top, left, h, w = random_resized_crop_params(image.height, image.width, generator, scale, ratio)
    return image.crop((left, top, left + w, top + h)).resize((size, size), _bilinear())


def resize_center_crop_image(image, resize: int, size: int):
    """Resize the shorter side to ``resize`` (bilinear, aspect kept), then centre-crop ``size x size``.

    The longer side becomes ``int(resize * long / short)``.
    """
    width, height = image.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _bilinear())
    top, left, h, w = center_crop_params(new_h, new_w, size)
    return image.crop((left, top, left + w, top + h))


def image_to_uint8(image) -> torch.Tensor:
    """Convert a ``PIL.Image`` to RGB and return it as a uint8 ``[3, H, W]`` tensor."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------- normalisation


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to float32 in ``[0, 1]``: ``x / 255``."""
    return images.to(torch.float32).div_(255.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Standardise each channel in place: ``(x[:, c] - mean[c]) / std[c]`` on ``[B, C, H, W]`` float."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return images.sub_(m).div_(s)
