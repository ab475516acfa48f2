"""ImageNet-style class folders, ``root/{train,val}/<class>/<image>``, decoded lazily with Pillow.

Classes are the sorted sub-folder names (label = position). Each sample is opened and
transformed only when fetched: training takes a random-resized crop to ``image_size``
and a random flip, drawn from the sample's own generator ``key.sample_generator(index)``;
evaluation resizes the shorter side to ``int(image_size * 256 / 224)`` and centre-crops.

Problems are :class:`hbnn.errors.DatasetError` lines naming the folder or file: a missing
or unreadable folder, a class folder without images (found when scanning), a file that is
unreadable, truncated or not an image (found when the sample is first decoded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from hbnn.data.info import DatasetInfo
from hbnn.data.seeding import AugmentKey
from hbnn.data.transforms import image_to_uint8, random_resized_crop_image, resize_center_crop_image
from hbnn.errors import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "list_classes", "scan_image_folder", "ImageFolderDataset"]


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list the folder ({exc.strerror or exc}); check its permissions") from None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def list_classes(split_dir: Path) -> list[str]:
    """Return the sorted names of the sub-folders of ``split_dir`` (hidden ones skipped).

    Raises:
        DatasetError: ``split_dir`` is missing or has no sub-folders.
    """
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: missing folder; expected {split_dir}/<class>/<image>")
    classes = sorted(e.name for e in _entries(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders; expected {split_dir}/<class>/<image>")
    return classes


def scan_image_folder(split_dir: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """List ``(path, label)`` of every image under ``split_dir/<class>/``, sorted by class then file name.

    Images are files whose extension (any case) is in :data:`IMAGE_EXTENSIONS`.

    Raises:
        DatasetError: a class folder without images.
    """
    samples = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(
            e.name for e in _entries(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise DatasetError(f"{folder}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((str(folder / f), label) for f in files)
    return samples


class ImageFolderDataset:
    """A dataset of image files in class folders, decoded per sample.

    Attributes:
        info: the :class:`DatasetInfo` (normalisation constants, flip).
        split: ``"train"`` or ``"test"`` (read from ``root/val``).
        classes: sorted class names; ``num_classes = len(classes)``.
        samples: ``(path, label)`` pairs; ``labels`` is the same as an int64 tensor.
        in_channels: 3 (images are converted to RGB).
        image_size: ``(S, S)`` of the output.
        resize_size: evaluation shorter side ``int(S * 256 / 224)``.
    """

    lazy = True  # decoded per sample: the loader may use worker processes

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        image_size: int,
    ):
        self.info = info
        self.name = info.name
        self.split = split
        self.samples = list(samples)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.in_channels = 3
        self.image_size = (image_size, image_size)
        self.resize_size = int(image_size * 256 / 224)
        self.mean, self.std = info.mean, info.std

    @classmethod
    def from_root(
        cls, info: DatasetInfo, root: str | os.PathLike, split: str, image_size: int
    ) -> "ImageFolderDataset":
        """Scan ``root/train`` (split ``"train"``) or ``root/val`` (split ``"test"``).

        The val classes must equal the train classes when ``root/train`` exists, so that
        labels agree between the splits.

        Raises:
            DatasetError: missing or empty folders, or class lists that differ.
        """
        root = Path(root)
        split_dir = root / ("train" if split == "train" else "val")
        classes = list_classes(split_dir)
        train_dir = root / "train"
        if split != "train" and train_dir.is_dir():
            train_classes = list_classes(train_dir)
            if classes != train_classes:
                extra = sorted(set(classes) ^ set(train_classes))
                raise DatasetError(f"{split_dir}: class folders differ from {train_dir} (e.g. {extra[0]!r})")
        return cls(info, split, scan_image_folder(split_dir, classes), classes, image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.name!r}, split={self.split!r}, n={len(self)}, classes={self.num_classes})"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return ``(uint8 [3, S, S] image, label)`` with the evaluation transform."""
        return self.load(index, None), self.samples[index][1]

    def select(self, indices: torch.Tensor) -> "ImageFolderDataset":
        """Return the subset at ``indices``, in that order (classes unchanged)."""
        picked = [self.samples[i] for i in indices.tolist()]
        return ImageFolderDataset(self.info, self.split, picked, self.classes, self.image_size[0])

    def open_image(self, index: int):
        """Decode sample ``index`` as an RGB ``PIL.Image``.

        Raises:
            DatasetError: the file is missing, truncated or not an image.
        """
        from PIL import Image

        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # forces the full decode inside the try
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...; all are the file's fault
            what = (str(exc).splitlines() or [""])[0][:120]
            raise DatasetError(f"{path}: unreadable image ({type(exc).__name__}: {what}); "
                               "replace or remove the file") from None

    def load(self, index: int, generator: torch.Generator | None) -> torch.Tensor:
        """Return sample ``index`` as uint8 ``[3, S, S]``.

        With a generator: random-resized crop (scale (0.08, 1), ratio (3/4, 4/3)), then,
        if ``info.flip``, a flip when ``rand(1, generator) < 0.5``. Without: resize the
        shorter side to ``resize_size`` and centre-crop ``S``.
        """
        image = self.open_image(index)
        size = self.image_size[0]
        if generator is None:
            return image_to_uint8(resize_center_crop_image(image, self.resize_size, size))
        tensor = image_to_uint8(random_resized_crop_image(image, size, generator))
        if self.info.flip and float(torch.rand(1, generator=generator)) < 0.5:
            tensor = tensor.flip(-1)
        return tensor

    def fetch(self, indices: torch.Tensor, key: AugmentKey | None) -> torch.Tensor:
        """Return uint8 ``[B, 3, S, S]``; sample ``i`` uses ``key.sample_generator(i)`` when augmenting."""
        return torch.stack([self.load(i, None if key is None else key.sample_generator(i)) for i in indices.tolist()])
