"""Derive independent, reproducible random streams from integer keys.

Every random decision in the data pipeline (epoch permutation, augmentation of batch ``k``,
augmentation of one image-folder sample, the ``limit`` subset) draws from its own
``torch.Generator`` whose seed is a pure function of a key tuple such as
``(seed, epoch, STREAM_BATCH, rank, k)``. Nothing depends on what ran before, which is
what lets a resumed run reproduce the tail of an interrupted epoch bit for bit.

The key is hashed with :class:`numpy.random.SeedSequence`, whose output is specified by
NumPy and stable across versions, so nearby keys give unrelated streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "AugmentKey",
    "STREAM_PERMUTATION",
    "STREAM_BATCH",
    "STREAM_SAMPLE",
    "STREAM_SUBSET",
    "derive_seed",
    "make_generator",
]

STREAM_PERMUTATION = 0  # key: (seed, epoch, 0)
STREAM_BATCH = 1  # key: (seed, epoch, 1, rank, batch)
STREAM_SAMPLE = 2  # key: (seed, epoch, 2, sample_index)
STREAM_SUBSET = 3  # key: (3,) -- the ``limit`` subset is the same for every seed


def derive_seed(*key: int) -> int:
    """Hash non-negative integers into a 63-bit seed.

    Args:
        *key: non-negative integers, e.g. ``(seed, epoch, STREAM_BATCH, rank, batch)``.

    Returns:
        ``SeedSequence(key).generate_state(2)`` packed into one integer in ``[0, 2**63)``.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def make_generator(*key: int) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``key``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*key))
    return generator


@dataclass(frozen=True)
class AugmentKey:
    """Identity of one training batch, from which all its augmentation randomness derives.

    Attributes:
        seed, epoch, rank, batch: the run seed, the epoch, the DDP rank and the batch
            index within this rank's epoch.
    """

    seed: int
    epoch: int
    rank: int
    batch: int

    def batch_generator(self) -> torch.Generator:
        """Generator for batched augmentation: key ``(seed, epoch, STREAM_BATCH, rank, batch)``."""
        return make_generator(self.seed, self.epoch, STREAM_BATCH, self.rank, self.batch)

    def sample_generator(self, index: int) -> torch.Generator:
        """Generator for one sample's augmentation: key ``(seed, epoch, STREAM_SAMPLE, index)``."""
        return make_generator(self.seed, self.epoch, STREAM_SAMPLE, index)
