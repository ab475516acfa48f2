"""build_dataset: names, splits, default folders and their error messages, limit, real Fashion-MNIST."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hbnn.data import DATASETS, build_dataset, build_loader, dataset_info, list_datasets
from hbnn.data.registry import subset_indices
from hbnn.errors import ConfigError, DatasetError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_unknown_dataset_lists_the_allowed_names():
    allowed = "cifar10, fashion_mnist, imagenet, mnist"
    with pytest.raises(ConfigError, match=rf"unknown dataset 'svhn'; allowed: {allowed}$"):
        build_dataset("svhn", "train")
    assert list_datasets() == ["cifar10", "fashion_mnist", "imagenet", "mnist"]
    with pytest.raises(ConfigError, match=rf"unknown dataset 'svhn'; allowed: {allowed}$"):
        dataset_info("svhn")


def test_dataset_info_ignores_case_and_dashes():
    assert dataset_info("Fashion-MNIST") is DATASETS["fashion_mnist"]
    assert dataset_info(" cifar10 ") is DATASETS["cifar10"]


def test_unknown_split_and_bad_options(tmp_path, fab):
    fab.make_mnist_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown split 'dev'; allowed: train, test, val"):
        build_dataset("mnist", "dev", tmp_path)
    with pytest.raises(ConfigError, match=r"limit must be a positive int or None, got 0"):
        build_dataset("mnist", "train", tmp_path, limit=0)
    with pytest.raises(ConfigError, match=r"image_size=32 is not available for mnist, whose images are 28x28"):
        build_dataset("mnist", "train", tmp_path, image_size=32)
    with pytest.raises(ConfigError, match=r"image_size must be a positive int, got -3"):
        build_dataset("imagenet", "train", tmp_path, image_size=-3)


def test_missing_default_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    info = dataclasses.replace(DATASETS["fashion_mnist"], default_dir=str(tmp_path / "absent"))
    monkeypatch.setitem(DATASETS, "fashion_mnist", info)
    with pytest.raises(DatasetError) as err:
        build_dataset("fashion_mnist", "train")
    message = str(err.value)
    assert "\n" not in message and "absent" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    (tmp_path / "absent").mkdir()  # the package folder exists but lost a file
    with pytest.raises(DatasetError, match=r"missing train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        build_dataset("fashion_mnist", "train")


def test_datasets_without_default_require_data_dir(tmp_path):
    for name in ("mnist", "cifar10", "imagenet"):
        with pytest.raises(DatasetError, match=rf"dataset '{name}' has no default location; pass --data-dir DIR"):
            build_dataset(name, "train")
    with pytest.raises(DatasetError, match=r"--data-dir .*nowhere does not exist; mnist expects \{train,t10k\}"):
        build_dataset("mnist", "train", tmp_path / "nowhere")


def test_mnist_and_fashion_from_a_folder(tmp_path, fab):
    written = fab.make_mnist_dir(tmp_path, n_train=9, n_test=4, gz=True)
    for name in ("mnist", "Fashion-MNIST"):
        ds = build_dataset(name, "val", str(tmp_path))
        assert (ds.num_classes, ds.in_channels, ds.image_size, len(ds)) == (10, 1, (28, 28), 4)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(written["test"][0]))
    assert build_dataset("fashion_mnist", "test", tmp_path).classes[9] == "Ankle boot"


def test_cifar_dataset_object(tmp_path, fab):
    fab.write_tar(tmp_path / "cifar-10-binary.tar.gz", fab.cifar_members(fab.cifar_batches(per_batch=2), binary=True))
    ds = build_dataset("cifar10", "train", tmp_path, image_size=32)
    assert (ds.num_classes, ds.in_channels, ds.image_size, len(ds)) == (10, 3, (32, 32), 10)
    assert ds.classes[0] == "airplane"


def test_limit_takes_a_fixed_sorted_subset(tmp_path, fab):
    fab.make_mnist_dir(tmp_path, n_train=30)
    full = build_dataset("mnist", "train", tmp_path)
    a = build_dataset("mnist", "train", tmp_path, limit=8)
    b = build_dataset("mnist", "train", tmp_path, limit=8)
    idx = subset_indices(30, 8)
    assert len(a) == 8 and torch.equal(a.images, b.images) and torch.equal(a.images, full.images[idx])
    assert idx.tolist() == sorted(set(idx.tolist())) and idx.tolist() != list(range(8))
    assert len(build_dataset("mnist", "train", tmp_path, limit=100)) == 30


def test_default_augmentations():
    fm, mn, cf, im = (DATASETS[n] for n in ("fashion_mnist", "mnist", "cifar10", "imagenet"))
    assert (fm.pad, fm.flip, fm.image_size) == (2, True, 28)
    assert (mn.pad, mn.flip) == (2, False)
    assert (cf.pad, cf.flip, cf.image_size) == (4, True, 32)
    assert (im.pad, im.random_resized_crop, im.flip, im.image_size) == (0, True, True, 224)
    assert cf.describe_augmentation() == "pad 4 + random crop 32, hflip"
    assert fm.default_dir == str(REAL_FMNIST)


def test_import_is_light():
    code = "import sys, hbnn.data; assert 'PIL' not in sys.modules, 'PIL imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not (REAL_FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="no dataset-fashion-mnist")
def test_real_fashion_mnist():
    train = build_dataset("fashion_mnist", "train")
    test = build_dataset("fashion_mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28)
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    x, y = next(iter(build_loader(train, batch_size=512, train=True, seed=0, epoch=0)))
    assert x.shape == (512, 1, 28, 28) and abs(float(x.mean())) < 0.15 and 0.85 < float(x.std()) < 1.15
