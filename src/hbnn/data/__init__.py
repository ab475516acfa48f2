"""Datasets read by hbnn's own code, with deterministic, resumable loaders.

Readers: IDX (MNIST, Fashion-MNIST; raw or gzip), CIFAR-10 (python or binary format,
extracted or packed), ImageNet-style class folders (Pillow, imported lazily).

    >>> from hbnn.data import build_dataset, build_loader
    >>> ds = build_dataset("fashion_mnist", "train")          # doctest: +SKIP
    >>> for x, y in build_loader(ds, batch_size=256, train=True, seed=0, epoch=0):  # doctest: +SKIP
    ...     pass  # x: float32 [256, 1, 28, 28] normalised, y: int64 [256]
"""

from hbnn.data.arrays import ArrayDataset
from hbnn.data.folder import ImageFolderDataset
from hbnn.data.info import DATASETS, DatasetInfo
from hbnn.data.loader import Loader, build_loader
from hbnn.data.registry import build_dataset, dataset_info, list_datasets

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ArrayDataset",
    "ImageFolderDataset",
    "Loader",
    "build_dataset",
    "build_loader",
    "dataset_info",
    "list_datasets",
]
