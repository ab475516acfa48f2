"""Image folders: class discovery, lazy Pillow decode, per-sample augmentation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hbnn.data import build_dataset, build_loader
from hbnn.data.seeding import AugmentKey
from hbnn.data.transforms import image_to_uint8, resize_center_crop_image
from hbnn.errors import DatasetError


@pytest.fixture
def folder(tmp_path, fab):
    return tmp_path, fab.make_image_folder(tmp_path, classes=("emu", "cat", "dog"), per_class=2)


def test_classes_are_sorted_and_labels_follow(folder):
    root, _ = folder
    ds = build_dataset("imagenet", "train", root, image_size=8)
    assert ds.classes == ["cat", "dog", "emu"] and ds.num_classes == 3 and ds.in_channels == 3
    assert ds.image_size == (8, 8) and len(ds) == 6 and ds.resize_size == 9
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.split("/")[-2:] for p, _ in ds.samples][:2] == [["cat", "img0.png"], ["cat", "img1.png"]]
    val = build_dataset("imagenet", "val", root, image_size=8)
    assert val.split == "test" and val.classes == ds.classes and "/val/" in val.samples[0][0]


def test_eval_transform_is_resize_then_centre_crop(folder):
    from PIL import Image

    root, written = folder
    ds = build_dataset("imagenet", "test", root, image_size=8)
    image, label = ds[4]
    reference = resize_center_crop_image(Image.fromarray(written[("val", "emu", "img0.png")]), 9, 8)
    assert label == 2 and image.dtype == torch.uint8
    assert torch.equal(image, image_to_uint8(reference))


def test_loader_batches_and_per_sample_determinism(folder):
    root, _ = folder
    ds = build_dataset("imagenet", "train", root, image_size=8)
    loader = build_loader(ds, batch_size=2, train=True, seed=3, epoch=1)
    batches = list(loader)
    assert len(batches) == 3 and batches[0][0].shape == (2, 3, 8, 8) and batches[0][0].dtype == torch.float32
    again = list(build_loader(ds, batch_size=2, train=True, seed=3, epoch=1, start_batch=1))
    for (x1, y1), (x2, y2) in zip(batches[1:], again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # augmentation of a sample depends on (seed, epoch, index), not on its batch or rank
    idx = loader.batch_indices(0)
    key = AugmentKey(3, 1, rank=5, batch=99)
    assert torch.equal(ds.fetch(idx, key), ds.fetch(idx.flip(0), key).flip(0))
    other_epoch = list(build_loader(ds, batch_size=6, train=True, seed=3, epoch=2))[0][0]
    assert not torch.equal(torch.cat([b[0] for b in batches]).sum(0), other_epoch.sum(0))


def test_worker_processes_give_the_same_batches(folder):
    root, _ = folder
    ds = build_dataset("imagenet", "train", root, image_size=8)
    kwargs = dict(batch_size=2, train=True, seed=0, epoch=0, start_batch=1)
    plain = list(build_loader(ds, **kwargs))
    workers = list(build_loader(ds, num_workers=1, **kwargs))
    assert len(plain) == len(workers) == 2
    for (x1, y1), (x2, y2) in zip(plain, workers):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_grayscale_images_become_rgb(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.full((10, 10), 77, dtype=np.uint8), mode="L").save(tmp_path / "train" / "a" / "g.JPG")
    ds = build_dataset("imagenet", "train", tmp_path, image_size=8)
    image, _ = ds[0]
    assert image.shape == (3, 8, 8) and int(image.min()) >= 70 and int(image.max()) <= 84


def test_missing_and_empty_folders(tmp_path, fab):
    with pytest.raises(DatasetError, match=r"train: missing folder; expected .*train/<class>/<image>"):
        build_dataset("imagenet", "train", tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="train: no class folders"):
        build_dataset("imagenet", "train", tmp_path)
    (tmp_path / "train" / "cls").mkdir()
    (tmp_path / "train" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"train/cls: class folder has no images \(.jpg"):
        build_dataset("imagenet", "train", tmp_path)


def test_val_classes_must_match_train(tmp_path, fab):
    fab.make_image_folder(tmp_path, classes=("a", "b"), per_class=1)
    (tmp_path / "val" / "zebra").mkdir()
    fab.make_image_folder(tmp_path / "tmp", classes=("zebra",), per_class=1)
    (tmp_path / "tmp" / "val" / "zebra" / "img0.png").rename(tmp_path / "val" / "zebra" / "img0.png")
    with pytest.raises(DatasetError, match=r"val: class folders differ from .*train \(e.g. 'zebra'\)"):
        build_dataset("imagenet", "val", tmp_path)


def test_unreadable_image_fails_when_fetched_naming_the_file(folder):
    root, _ = folder
    bad = root / "train" / "dog" / "img1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    ds = build_dataset("imagenet", "train", root, image_size=8)  # listing does not decode
    with pytest.raises(DatasetError, match=r"dog/img1.png: unreadable image"):
        list(build_loader(ds, batch_size=6, train=False, seed=0, epoch=0))
    with pytest.raises(DatasetError, match=r"^\S+dog/img1.png: unreadable image \(OSError[^\n]*$"):
        list(build_loader(ds, batch_size=6, train=False, seed=0, epoch=0, num_workers=1))
    bad.write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=r"dog/img1.png: unreadable image \(UnidentifiedImageError"):
        ds[3]


def test_fake_images_fail_naming_the_file_and_the_fix(folder):
    root, _ = folder
    bad = root / "train" / "cat" / "img0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))  # a PNG signature, then nothing
    ds = build_dataset("imagenet", "train", root, image_size=8)
    with pytest.raises(DatasetError, match=r"^\S+cat/img0.png: unreadable image \(.*\); replace or remove the file$"):
        ds[0]


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "train").write_text("not a folder")
    with pytest.raises(DatasetError, match="train: missing folder"):
        build_dataset("imagenet", "train", tmp_path)
