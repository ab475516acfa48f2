"""Loader: order, batching, normalisation, DDP sharding, and the resume property (bit-exact)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from hbnn.data import DATASETS, ArrayDataset, build_loader
from hbnn.data.loader import epoch_order, shard
from hbnn.data.seeding import AugmentKey
from hbnn.errors import ConfigError


def toy(n=23, name="cifar10"):
    """An in-memory dataset whose pixel (0, 0, 0) of sample i is i, so indices can be read back."""
    info = DATASETS[name]
    c, s = info.in_channels, info.image_size
    images = torch.randint(1, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ArrayDataset(info, "train", images, torch.arange(n) % 10, [str(i) for i in range(10)])


def normalised(ds, idx, images=None):
    """Reference ``(x / 255 - mean) / std`` of ``ds.images[idx]`` (or of ``images``)."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return ((ds.images[idx] if images is None else images).float() / 255 - mean) / std


def test_eval_keeps_order_and_the_last_partial_batch_unaugmented():
    ds = toy()
    loader = build_loader(ds, batch_size=5, train=False, seed=0, epoch=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, ds.labels)
    torch.testing.assert_close(x, normalised(ds, torch.arange(23)), atol=1e-6, rtol=0)


def test_train_shuffles_by_seed_and_epoch_and_drops_the_partial_batch():
    ds = toy()
    loader = build_loader(ds, batch_size=5, train=True, seed=1, epoch=0, augment=False)
    assert len(loader) == 4
    seen = torch.cat([y for _, y in loader])
    assert torch.equal(seen, ds.labels[loader.indices[:20]])
    assert sorted(loader.indices.tolist()) == list(range(23))
    assert torch.equal(loader.indices, epoch_order(23, train=True, seed=1, epoch=0))
    same = build_loader(ds, batch_size=7, train=True, seed=1, epoch=0)
    assert torch.equal(same.indices, loader.indices)  # the order ignores batch size and augment
    assert not torch.equal(build_loader(ds, batch_size=5, train=True, seed=1, epoch=1).indices, loader.indices)
    assert not torch.equal(build_loader(ds, batch_size=5, train=True, seed=2, epoch=0).indices, loader.indices)
    x, _ = next(iter(loader))
    torch.testing.assert_close(x, normalised(ds, loader.indices[:5]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_start_batch_yields_exactly_the_tail_of_the_epoch(name):
    ds = toy(n=41, name=name)
    kwargs = dict(batch_size=4, train=True, seed=7, epoch=3, rank=1, world_size=2)
    full = list(build_loader(ds, **kwargs))
    assert len(full) == 5
    for k in (0, 2, 4, 5):
        resumed = build_loader(ds, start_batch=k, **kwargs)
        assert len(resumed) == 5 and resumed.remaining == 5 - k
        tail = list(resumed)
        assert len(tail) == 5 - k
        for (x1, y1), (x2, y2) in zip(full[k:], tail):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)  # bit-identical


def test_augmentation_is_a_function_of_seed_epoch_rank_batch():
    ds = toy(n=40)
    loader = build_loader(ds, batch_size=8, train=True, seed=5, epoch=2)
    idx = loader.batch_indices(3)
    raw = ds.images[idx]
    augmented = ds.fetch(idx, AugmentKey(5, 2, 0, 3))
    x, _ = loader.batch(3)
    torch.testing.assert_close(x, normalised(ds, None, augmented), atol=1e-6, rtol=0)
    assert not torch.equal(augmented, raw)
    assert not torch.equal(augmented, ds.fetch(idx, AugmentKey(5, 2, 1, 3)))  # other rank
    assert not torch.equal(augmented, ds.fetch(idx, AugmentKey(5, 2, 0, 4)))  # other batch
    # every output pixel is either padding or a pixel of the same image (crop + flip only)
    for b in range(8):
        allowed = set(raw[b].flatten().tolist()) | {0}
        assert set(augmented[b].flatten().tolist()) <= allowed


def test_augment_false_and_eval_never_augment():
    ds = toy()
    for kwargs in (dict(train=True, augment=False), dict(train=False, augment=True)):
        loader = build_loader(ds, batch_size=4, seed=0, epoch=0, **kwargs)
        assert not loader.augment
        x, _ = loader.batch(1)
        torch.testing.assert_close(x, normalised(ds, loader.batch_indices(1)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n,world", [(24, 2), (23, 2), (23, 4), (5, 3)])
def test_ranks_partition_the_epoch_like_distributed_sampler(n, world):
    ds = toy(n=n)
    order = epoch_order(n, train=True, seed=4, epoch=1)
    kwargs = dict(batch_size=1, train=True, seed=4, epoch=1, world_size=world)
    shards = [build_loader(ds, rank=r, **kwargs) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s.indices) == per_rank == len(s) for s in shards)
    interleaved = torch.stack([s.indices for s in shards], 1).flatten()
    assert torch.equal(interleaved[:n], order)  # every sample once, in epoch order ...
    assert torch.equal(interleaved[n:], order[: per_rank * world - n])  # ... padded with the head
    for r in range(world):  # same positions as torch's sampler for the same order
        sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)
        assert shard(torch.arange(n), r, world).tolist() == list(sampler)


def test_two_ranks_cover_a_training_epoch_disjointly():
    ds = toy(n=32)
    kwargs = dict(batch_size=4, train=True, seed=0, epoch=0, world_size=2, augment=False)
    seen = []  # sample i carries the value i in pixel (0, 0, 0); read it back from the batches
    for rank in (0, 1):
        for x, _ in build_loader(ds, rank=rank, **kwargs):
            seen += torch.round((x[:, 0, 0, 0] * ds.std[0] + ds.mean[0]) * 255).long().tolist()
    assert sorted(seen) == list(range(32))


def test_bad_arguments_raise_config_errors():
    ds = toy(n=10)
    base = dict(batch_size=4, train=True, seed=0, epoch=0)
    cases = [
        (dict(batch_size=0), r"batch_size must be an int >= 1, got 0"),
        (dict(seed=-1), r"seed must be an int >= 0, got -1"),
        (dict(epoch=1.5), r"epoch must be an int >= 0, got 1.5"),
        (dict(rank=2, world_size=2), r"rank must be in \[0, 2\), got 2"),
        (dict(world_size=0), r"world_size must be an int >= 1"),
        (dict(start_batch=3), r"start_batch must be in \[0, 2\], got 3"),
        (dict(batch_size=11), r"batch_size 11 exceeds the 10 training samples per rank"),
        (dict(num_workers=-1), r"num_workers must be an int >= 0"),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_loader(ds, **{**base, **override})
    assert len(build_loader(ds, **{**base, "batch_size": 11, "train": False})) == 1
    with pytest.raises(IndexError, match=r"batch 2 out of range \[0, 2\)"):
        build_loader(ds, **base).batch(2)
