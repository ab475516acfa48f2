"""``build_loader``: a deterministic, resumable, DDP-sharded batch iterator.

For epoch ``e`` of a run with seed ``s``:

1. Order: training shuffles with ``randperm(N)`` from generator ``(s, e, STREAM_PERMUTATION)``;
   evaluation keeps ``0..N-1``.
2. Sharding (as ``torch.utils.data.DistributedSampler``): the order is padded by repeating
   its head to a multiple of ``world_size``; rank ``r`` takes positions ``r::world_size``.
3. Batching: consecutive chunks of ``batch_size``; training drops the last partial
   batch, evaluation keeps it.
4. Augmentation (training with ``augment=True``): batch ``k`` is augmented from the key
   ``AugmentKey(s, e, r, k)`` only; in-memory datasets draw from one generator per batch,
   image folders from one generator per sample index.
5. Output: ``((x / 255 - mean) / std)`` as float32 ``[B, C, H, W]`` and int64 labels ``[B]``.

Every batch is thus a pure function of ``(dataset, s, e, r, world_size, k)``; a loader
built with ``start_batch=k`` yields exactly batches ``k, k+1, ...`` of the full epoch,
whatever ran before (resume after a crash).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from hbnn.data.seeding import STREAM_PERMUTATION, AugmentKey, make_generator
from hbnn.data.transforms import normalize, to_float
from hbnn.errors import ConfigError, HbnnError

__all__ = ["epoch_order", "shard", "Loader", "build_loader"]


def epoch_order(n: int, *, train: bool, seed: int, epoch: int) -> torch.Tensor:
    """Return the int64 sample order of one epoch: a seeded permutation (train) or ``arange(n)`` (eval)."""
    if not train:
        return torch.arange(n)
    return torch.randperm(n, generator=make_generator(seed, epoch, STREAM_PERMUTATION))


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Return rank ``rank``'s share of ``order`` the way ``DistributedSampler`` does.

    ``order`` is extended by repeating its head until its length is a multiple of
    ``world_size``; the share is ``padded[rank::world_size]`` (length ``ceil(N / world_size)``).
    """
    n = order.numel()
    total = math.ceil(n / world_size) * world_size
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank::world_size]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class _BatchView(Dataset):
    """Map-style view ``k -> batch k`` so DataLoader workers can build whole batches."""

    def __init__(self, loader: "Loader"):
        self.loader = loader

    def __len__(self) -> int:
        return self.loader.num_batches

    def __getitem__(self, k: int):
        return self.loader.batch(k)


class Loader:
    """Iterable over one epoch's batches for one rank; see the module docstring.

    Args:
        dataset: from :func:`hbnn.data.build_dataset` (anything with ``__len__``,
            ``labels``, ``mean``, ``std`` and ``fetch(indices, key)``).
        batch_size: samples per batch (per rank).
        train: shuffle, drop the last partial batch, and augment if ``augment``;
            otherwise keep order and every sample, no augmentation.
        seed, epoch: the permutation is a function of ``(seed, epoch)``; augmentation
            of batch ``k`` of ``(seed, epoch, rank, k)``.
        start_batch: first batch to yield (resume); ``len()`` stays the whole epoch.
        rank, world_size: DDP shard, as ``DistributedSampler`` (evaluation with
            ``world_size > 1`` therefore repeats a few samples to equalise the shards).
        augment: apply the dataset's default training augmentation (see ``DATASETS``).
        num_workers: worker processes that decode whole batches; used only by lazily
            decoded datasets (image folders); in-memory batches are built in-process.

    Raises:
        ConfigError: a bad argument, or a training epoch with no full batch.

    Attributes:
        num_batches: batches in the whole epoch for this rank; also ``len(loader)``.
        start_batch: first batch yielded; ``remaining = num_batches - start_batch``.
        indices: this rank's sample indices for the epoch, in order.
    """

    def __init__(
        self,
        dataset,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
        num_workers: int = 0,
    ):
        self.dataset = dataset
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.epoch = _check_int("epoch", epoch, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        order = epoch_order(len(dataset), train=self.train, seed=self.seed, epoch=self.epoch)
        self.indices = shard(order, self.rank, self.world_size)
        per_rank = self.indices.numel()
        self.num_batches = per_rank // self.batch_size if self.train else math.ceil(per_rank / self.batch_size)
        if self.train and self.num_batches == 0:
            raise ConfigError(
                f"batch_size {batch_size} exceeds the {per_rank} training samples per rank; "
                "training drops partial batches, so the epoch would be empty"
            )
        self.start_batch = _check_int("start_batch", start_batch, 0)
        if self.start_batch > self.num_batches:
            raise ConfigError(f"start_batch must be in [0, {self.num_batches}], got {start_batch!r}")

    def __len__(self) -> int:
        return self.num_batches

    @property
    def remaining(self) -> int:
        """Batches this loader will yield: ``num_batches - start_batch``."""
        return self.num_batches - self.start_batch

    def batch_indices(self, k: int) -> torch.Tensor:
        """Return the dataset indices of batch ``k`` (int64)."""
        return self.indices[k * self.batch_size : (k + 1) * self.batch_size]

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Build batch ``k``: ``(float32 [B, C, H, W] normalised images, int64 [B] labels)``."""
        if not 0 <= k < self.num_batches:
            raise IndexError(f"batch {k} out of range [0, {self.num_batches})")
        idx = self.batch_indices(k)
        key = AugmentKey(self.seed, self.epoch, self.rank, k) if self.augment else None
        images = normalize(to_float(self.dataset.fetch(idx, key)), self.dataset.mean, self.dataset.std)
        return images, self.dataset.labels[idx]

    def __iter__(self):
        if self.num_workers == 0 or not getattr(self.dataset, "lazy", False):
            return (self.batch(k) for k in range(self.start_batch, self.num_batches))
        return self._iter_workers()

    def _iter_workers(self):
        batches = DataLoader(
            _BatchView(self),
            batch_size=None,
            sampler=range(self.start_batch, self.num_batches),
            num_workers=self.num_workers,
        )
        try:
            yield from batches
        except HbnnError as exc:
            # DataLoader re-raises worker errors with the traceback in the message; keep
            # the original one-line message so the CLI can print it as such.
            raise type(exc)(_worker_message(exc)) from None


def _worker_message(exc: Exception) -> str:
    last = str(exc).strip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def build_loader(dataset, **options) -> Loader:
    """Return ``Loader(dataset, **options)``: one epoch of ``dataset`` for one rank.

    ``options`` are :class:`Loader`'s keyword arguments: ``batch_size``, ``train``,
    ``seed``, ``epoch`` (required), ``start_batch=0``, ``rank=0``, ``world_size=1``,
    ``augment=True``, ``num_workers=0``.
    """
    return Loader(dataset, **options)
