"""In-memory datasets (IDX, CIFAR): all images as one uint8 tensor, augmented batch-wise."""

from __future__ import annotations

from typing import Sequence

import torch

from hbnn.data.info import DatasetInfo
from hbnn.data.seeding import AugmentKey
from hbnn.data.transforms import pad_random_crop, random_hflip
from hbnn.errors import DatasetError

__all__ = ["ArrayDataset"]


class ArrayDataset:
    """A dataset held in memory as ``images`` uint8 ``[N, C, H, W]`` and ``labels`` int64 ``[N]``.

    Other dtypes or shapes raise :class:`hbnn.errors.DatasetError`.

    Attributes:
        info: the :class:`DatasetInfo` (normalisation and default augmentation).
        split: ``"train"`` or ``"test"``.
        classes: class names, index = label.
        num_classes, in_channels: from ``info``.
        image_size: ``(H, W)``.
        mean, std: per-channel normalisation constants.
    """

    lazy = False  # already in memory: batches are built in-process

    def __init__(
        self, info: DatasetInfo, split: str, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DatasetError(f"{info.name}: images must be uint8 [N, C, H, W], got {images.dtype} "
                               f"{list(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise DatasetError(f"{info.name}: labels must be int64 [{images.shape[0]}], got {labels.dtype} "
                               f"{list(labels.shape)}")
        self.info = info
        self.name = info.name
        self.split = split
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.in_channels = images.shape[1]
        self.image_size = (images.shape[2], images.shape[3])
        self.mean, self.std = info.mean, info.std

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(uint8 [C, H, W] image, label)`` of sample ``index``, unaugmented."""
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name!r}, split={self.split!r}, n={len(self)}, image_size={self.image_size})"

    def select(self, indices: torch.Tensor) -> "ArrayDataset":
        """Return the subset at ``indices`` (int64), in that order, as a new dataset."""
        return ArrayDataset(self.info, self.split, self.images[indices], self.labels[indices], self.classes)

    def fetch(self, indices: torch.Tensor, key: AugmentKey | None) -> torch.Tensor:
        """Return the uint8 ``[B, C, H, W]`` images at ``indices``, augmented when ``key`` is given.

        With a key, one generator ``key.batch_generator()`` drives, in order:
        pad + random crop (if ``info.pad``), then random horizontal flip (if ``info.flip``).
        """
        images = self.images[indices]
        if key is None:
            return images
        generator = key.batch_generator()
        if self.info.pad:
            images = pad_random_crop(images, self.info.pad, generator)
        if self.info.flip:
            images = random_hflip(images, generator)
        return images
