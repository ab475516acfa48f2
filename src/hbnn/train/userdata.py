"""Training on a user's own data: ``fit(cfg, run_dir, train_data=..., test_data=...)``.

Either argument may be

* a map-style ``torch.utils.data.Dataset`` whose items are ``(image tensor [C, H, W], int
  label)``: batched by :class:`UserLoader` in hbnn's deterministic order (epoch ``e``'s
  permutation from ``(seed, e)``, sharded over DDP ranks like ``DistributedSampler``,
  the last partial training batch dropped, :func:`hbnn.data.loader.epoch_order`), so a
  run resumes bit-exactly, mid-epoch included, as long as ``dataset[i]`` is a pure
  function of ``i`` (no random augmentation inside the dataset); no normalization or
  augmentation is added (``data.augment`` does not apply);
* a ``torch.utils.data.DataLoader`` (anything iterable with ``len``), used as given: its
  order, sharding and augmentation are the user's. A mid-epoch checkpoint of such a run
  cannot be continued exactly, so resuming from one is refused (resume from an epoch-end
  checkpoint, or pass a Dataset).

The model's shape comes from the training data: ``num_classes`` from the dataset's
``num_classes`` attribute or the length of its ``classes`` (for a DataLoader: of its
``dataset``), the channels and (square) side from the first image.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader

from hbnn.data.loader import epoch_order, shard
from hbnn.errors import ConfigError

__all__ = ["UserLoader", "is_user_loader", "user_shape", "check_user_data"]


def is_user_loader(data: Any) -> bool:
    """True for a ready batch iterable (a DataLoader), False for a map-style Dataset."""
    return isinstance(data, DataLoader) or (not hasattr(data, "__getitem__") and hasattr(data, "__iter__"))


def check_user_data(name: str, data: Any) -> None:
    """A Dataset with ``len`` and ``[i]``, or a DataLoader with ``len``; else one ConfigError line."""
    ok = hasattr(data, "__len__") and (hasattr(data, "__getitem__") or hasattr(data, "__iter__"))
    if not ok:
        raise ConfigError(f"fit: {name} must be a map-style torch Dataset (len and [i]) or a DataLoader with "
                          f"a length, got {type(data).__name__}")
    if len(data) == 0:
        raise ConfigError(f"fit: {name} is empty")


def _first_sample(data: Any, name: str) -> tuple[torch.Tensor, Any]:
    if is_user_loader(data):
        images, labels = next(iter(data))
        return images[0], labels[0]
    item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ConfigError(f"fit: {name}[0] must be (image tensor, int label), got {type(item).__name__}")
    return item[0], item[1]


def user_shape(data: Any, name: str = "train_data") -> dict:
    """``{"num_classes", "in_channels", "image_size"}`` of user data (see the module docstring).

    Raises:
        ConfigError: no class count, or an image that is not a square ``[C, H, W]`` tensor.
    """
    source = data.dataset if isinstance(data, DataLoader) else data
    classes = getattr(source, "num_classes", None)
    if classes is None and getattr(source, "classes", None) is not None:
        classes = len(source.classes)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ConfigError(f"fit: {name} needs a num_classes attribute (an int >= 2) or a classes list; "
                          f"got {classes!r}")
    image, _ = _first_sample(data, name)
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[1] != image.shape[2]:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(f"fit: {name} images must be square [C, H, W] tensors, got {got}")
    return {"num_classes": classes, "in_channels": int(image.shape[0]), "image_size": int(image.shape[1])}


class UserLoader:
    """One epoch of a user Dataset for one rank, in hbnn's deterministic order (module docstring).

    Args:
        dataset: a map-style Dataset of ``(image, label)``.
        batch_size, train, seed, epoch, start_batch, rank, world_size: as
            :class:`hbnn.data.Loader` (training drops the last partial batch).
    """

    def __init__(self, dataset: Any, *, batch_size: int, train: bool, seed: int, epoch: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.batch_size, self.start_batch = dataset, batch_size, start_batch
        order = epoch_order(len(dataset), train=train, seed=seed, epoch=epoch)
        self.indices = shard(order, rank, world_size)
        n = self.indices.numel()
        self.num_batches = n // batch_size if train else math.ceil(n / batch_size)
        if train and self.num_batches == 0:
            raise ConfigError(f"batch_size {batch_size} exceeds the {n} training samples per rank of train_data; "
                              "training drops partial batches, so the epoch would be empty")

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``k``: stacked float images and int64 labels."""
        idx = self.indices[k * self.batch_size: (k + 1) * self.batch_size].tolist()
        items = [self.dataset[i] for i in idx]
        images = torch.stack([torch.as_tensor(image) for image, _ in items]).float()
        labels = torch.as_tensor([int(label) for _, label in items], dtype=torch.int64)
        return images, labels

    def __iter__(self):
        return (self.batch(k) for k in range(self.start_batch, self.num_batches))
