"""``build_dataset``: dataset name + split + folder -> a dataset object the loader can batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hbnn.data.arrays import ArrayDataset
from hbnn.data.cifar import CIFAR10_CLASSES, load_cifar10_split
from hbnn.data.folder import ImageFolderDataset
from hbnn.data.idx import load_idx_split
from hbnn.data.info import DATASETS, FASHION_MNIST_CLASSES, MNIST_CLASSES, DatasetInfo
from hbnn.data.seeding import STREAM_SUBSET, make_generator
from hbnn.errors import ConfigError, DatasetError

__all__ = ["SPLITS", "list_datasets", "dataset_info", "build_dataset", "resolve_data_dir", "subset_indices"]

SPLITS = {"train": "train", "test": "test", "val": "test"}  # "val" is an alias of "test"


def list_datasets() -> list[str]:
    """Return the sorted registry names accepted by :func:`build_dataset`."""
    return sorted(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registry name (case and ``-``/``_`` are ignored).

    Raises:
        ConfigError: unknown name (the message lists :func:`list_datasets`).
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(list_datasets())}")
    return DATASETS[key]


def resolve_data_dir(info: DatasetInfo, data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """Return ``(folder, defaulted)``: ``data_dir``, or the dataset's default folder when None.

    Raises:
        DatasetError: no default exists, the default is absent (the message says how to
            install it or to pass ``--data-dir``), or ``data_dir`` does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise DatasetError(f"--data-dir {path} does not exist; {info.name} expects {info.layout}")
        return path, False
    if info.default_dir is None:
        raise DatasetError(
            f"dataset {info.name!r} has no default location; pass --data-dir DIR holding {info.layout}"
        )
    path = Path(info.default_dir)
    if not path.is_dir():
        raise DatasetError(f"{info.name} not found at {path}: {info.install_hint}")
    return path, True


def subset_indices(n: int, limit: int) -> torch.Tensor:
    """Pick ``min(limit, n)`` of ``range(n)``: a fixed random sample (same for every seed), sorted.

    A random rather than leading sample keeps the classes balanced on class-sorted data
    such as image folders.
    """
    if limit >= n:
        return torch.arange(n)
    perm = torch.randperm(n, generator=make_generator(STREAM_SUBSET))
    return perm[:limit].sort().values


def _check_image_size(info: DatasetInfo, image_size: int | None) -> int:
    if image_size is None:
        return info.image_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive int, got {image_size!r}")
    if not info.random_resized_crop and image_size != info.image_size:
        raise ConfigError(
            f"image_size={image_size} is not available for {info.name}, whose images are "
            f"{info.image_size}x{info.image_size}; omit it or pass {info.image_size}"
        )
    return image_size


def _load(info: DatasetInfo, split: str, root: Path, defaulted: bool, image_size: int):
    if info.name in ("fashion_mnist", "mnist"):
        hint = info.install_hint if defaulted else ""
        images, labels = load_idx_split(root, split, info.num_classes, missing_hint=hint, image_size=info.image_size)
        classes = FASHION_MNIST_CLASSES if info.name == "fashion_mnist" else MNIST_CLASSES
        return ArrayDataset(info, split, images, labels, classes)
    if info.name == "cifar10":
        images, labels = load_cifar10_split(root, split)
        return ArrayDataset(info, split, images, labels, CIFAR10_CLASSES)
    return ImageFolderDataset.from_root(info, root, split, image_size)


def build_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    *,
    limit: int | None = None,
):
    """Load a dataset split.

    Args:
        name: one of :func:`list_datasets` (``fashion_mnist``, ``mnist``, ``cifar10``,
            ``imagenet``; case and ``-``/``_`` are ignored).
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted as ``"test"``; image
            folders read ``val/`` for it).
        data_dir: folder holding the data; None uses the dataset's default
            (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist``; the others have none).
        image_size: output side; only image folders may change it (default 224); the
            in-memory datasets accept None or their native size.
        limit: keep only this many samples, a fixed random subset (see
            :func:`subset_indices`), for quick runs and tests.

    Returns:
        An :class:`~hbnn.data.arrays.ArrayDataset` (IDX, CIFAR) or
        :class:`~hbnn.data.folder.ImageFolderDataset` with ``num_classes``,
        ``in_channels``, ``image_size`` ``(H, W)``, ``mean``, ``std``, ``classes``,
        ``labels`` and ``len()``.

    Raises:
        ConfigError: unknown name or split, bad ``image_size`` or ``limit``.
        DatasetError: missing, truncated or malformed files.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive int or None, got {limit!r}")
    size = _check_image_size(info, image_size)
    root, defaulted = resolve_data_dir(info, data_dir)
    dataset = _load(info, SPLITS[split], root, defaulted, size)
    if len(dataset) == 0:
        raise DatasetError(f"{root}: the {split} split of {info.name} is empty")
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(subset_indices(len(dataset), limit))
    return dataset
