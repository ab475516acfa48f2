"""CIFAR-10 reader: four on-disk layouts, safe unpickling, and errors for damaged archives."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from hbnn.data.cifar import decode_binary_batch, find_cifar10_source, load_cifar10_split, safe_unpickle
from hbnn.errors import DatasetError

LAYOUTS = ["python-dir", "python-tar", "binary-dir", "binary-tar"]


def build_layout(root, fab, layout, batches):
    binary = layout.startswith("binary")
    members = fab.cifar_members(batches, binary)
    if layout.endswith("dir"):
        fab.write_tree(root, members)
    else:
        fab.write_tar(root / ("cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz"), members)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_round_trips_exactly(tmp_path, fab, layout):
    batches = fab.cifar_batches(per_batch=3)
    build_layout(tmp_path, fab, layout, batches)
    for split, n in (("train", 15), ("test", 3)):
        images, labels = load_cifar10_split(tmp_path, split)
        want_x, want_y = fab.cifar_expected(batches, split)
        assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32)
        assert labels.dtype == torch.int64
        assert torch.equal(images, torch.from_numpy(want_x)) and torch.equal(labels, torch.from_numpy(want_y))


def test_pixel_layout_is_rgb_planes_row_major(fab):
    data = np.zeros((1, 3072), dtype=np.uint8)
    data[0, 1024 + 32 * 2 + 5] = 200  # green plane, row 2, column 5
    images, labels = decode_binary_batch(fab.cifar_binary(data, [7]), "mem")
    assert images[0, 1, 2, 5] == 200 and images.sum() == 200 and labels.tolist() == [7]


def test_data_dir_may_be_the_batch_folder_or_the_archive(tmp_path, fab):
    batches = fab.cifar_batches(per_batch=2)
    fab.write_tree(tmp_path / "a", fab.cifar_members(batches, binary=True))
    tar = fab.write_tar(tmp_path / "b" / "my-cifar.tar.gz", fab.cifar_members(batches, binary=False))
    want_x, want_y = fab.cifar_expected(batches, "test")
    for source in (tmp_path / "a" / "cifar-10-batches-bin", tar):
        images, labels = load_cifar10_split(source, "test")
        assert torch.equal(images, torch.from_numpy(want_x)) and torch.equal(labels, torch.from_numpy(want_y))
    assert find_cifar10_source(tmp_path / "a") == (tmp_path / "a" / "cifar-10-batches-bin", True)


@pytest.mark.parametrize("protocol,old_names", [(2, True), (2, False), (3, True), (4, False), (5, False)])
def test_pickles_of_every_protocol_and_numpy_naming_load(tmp_path, fab, protocol, old_names):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = fab.cifar_pickle(data, [1, 2], protocol=protocol, old_numpy_names=old_names)
    if old_names:
        assert b"numpy.core.multiarray" in blob
    batch = safe_unpickle(blob, "mem")
    np.testing.assert_array_equal(batch[b"data"], data)
    assert batch[b"labels"] == [1, 2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_unpickler_refuses_foreign_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for payload in (_Evil(), {b"data": _Evil()}, {b"x": pickle.loads}):
        blob = pickle.dumps(payload, protocol=2)
        with pytest.raises(DatasetError, match=r"evil.pkl: not a CIFAR-10 data pickle \(refusing to load global"):
            safe_unpickle(blob, "evil.pkl")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_unpickler_refuses_exotic_codecs():
    class Encode:
        def __reduce__(self):
            import _codecs

            return (_codecs.encode, ("x", "rot13"))

    with pytest.raises(DatasetError, match="refusing _codecs.encode"):
        safe_unpickle(pickle.dumps(Encode(), protocol=2), "p")


def test_pickle_with_wrong_content_is_rejected(tmp_path, fab):
    batches = fab.cifar_batches(per_batch=2)
    fab.write_tree(tmp_path, fab.cifar_members(batches, binary=False))
    test_batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    test_batch.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DatasetError, match="test_batch: expected a pickled dict, got list"):
        load_cifar10_split(tmp_path, "test")
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"'data' must be a uint8 array of shape \[N, 3072\]"):
        load_cifar10_split(tmp_path, "test")
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(DatasetError, match="'labels' must hold one label per image"):
        load_cifar10_split(tmp_path, "test")
    test_batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DatasetError, match=r"label 10 outside \[0, 10\)"):
        load_cifar10_split(tmp_path, "test")


def test_truncated_pickle_and_binary_batches(tmp_path, fab):
    batches = fab.cifar_batches(per_batch=2)
    fab.write_tree(tmp_path / "py", fab.cifar_members(batches, binary=False))
    fab.write_tree(tmp_path / "bin", fab.cifar_members(batches, binary=True))
    damaged = ("py/cifar-10-batches-py/data_batch_3", "bin/cifar-10-batches-bin/data_batch_3.bin")
    for path in (tmp_path / d for d in damaged):
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="data_batch_3: corrupt or truncated pickle"):
        load_cifar10_split(tmp_path / "py", "train")
    with pytest.raises(DatasetError, match=r"data_batch_3.bin: truncated CIFAR-10 binary batch \(6046 bytes"):
        load_cifar10_split(tmp_path / "bin", "train")


@pytest.mark.parametrize("binary", [False, True])
def test_truncated_archive(tmp_path, fab, binary):
    name = "cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz"
    tar = fab.write_tar(tmp_path / name, fab.cifar_members(fab.cifar_batches(per_batch=2), binary))
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DatasetError, match=f"{name}: corrupt or truncated archive"):
        load_cifar10_split(tmp_path, "train")


def test_missing_batches_and_missing_dataset(tmp_path, fab):
    members = fab.cifar_members(fab.cifar_batches(per_batch=2), binary=False)
    del members["cifar-10-batches-py/data_batch_4"]
    fab.write_tree(tmp_path / "dir", members)
    fab.write_tar(tmp_path / "tar" / "cifar-10-python.tar.gz", members)
    with pytest.raises(DatasetError, match="cifar-10-batches-py: missing CIFAR-10 batch data_batch_4"):
        load_cifar10_split(tmp_path / "dir", "train")
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz: archive lacks CIFAR-10 batch data_batch_4"):
        load_cifar10_split(tmp_path / "tar", "train")
    assert load_cifar10_split(tmp_path / "tar", "test")[0].shape == (2, 3, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CIFAR-10 found; expected cifar-10-batches-py/"):
        load_cifar10_split(tmp_path / "empty", "train")


def test_binary_label_out_of_range(tmp_path, fab):
    batches = fab.cifar_batches(per_batch=2)
    batches["test_batch"] = (batches["test_batch"][0], [3, 11])
    fab.write_tree(tmp_path, fab.cifar_members(batches, binary=True))
    with pytest.raises(DatasetError, match=r"test_batch.bin: label 11 outside \[0, 10\)"):
        load_cifar10_split(tmp_path, "test")


@pytest.mark.parametrize("labels, message", [
    (["a", "b"], "'labels' must be a list of integers or a 1-d integer array"),
    ([True, False], "'labels' must be a list of integers"),
    ([0.0, 1.0], "'labels' must be a list of integers"),
    (np.array([[0, 1]]), "'labels' must be a list of integers or a 1-d integer array"),
    (np.array([0.0, 1.0]), "'labels' must be a list of integers or a 1-d integer array"),
    (7, "'labels' must be a list of integers"),
    (None, "'labels' must be a list of integers"),
    ([0, -1], r"label -1 outside \[0, 10\)"),
    ([0, 2**70], r"label 1180591620717411303424 outside \[0, 10\)"),
    (np.array([3, 12], dtype=np.int64), r"label 12 outside \[0, 10\)"),
])
def test_pickled_labels_are_checked(tmp_path, fab, labels, message):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
    with pytest.raises(DatasetError, match=message) as info:
        load_cifar10_split(tmp_path, "test")
    assert str(info.value).startswith(str(folder / "test_batch")) and "re-download" in str(info.value)


def test_empty_and_non_contiguous_pixel_arrays(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "labels": []}))
    with pytest.raises(DatasetError, match=r"with N >= 1"):
        load_cifar10_split(tmp_path, "test")
    pixels = np.asfortranarray(np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": pixels, "labels": [1, 2]}))
    images, labels = load_cifar10_split(tmp_path, "test")
    assert torch.equal(images.reshape(2, 3072), torch.from_numpy(np.ascontiguousarray(pixels)))
    assert labels.tolist() == [1, 2]


def test_mutated_pickles_never_escape_as_other_errors(tmp_path, fab):
    batches = fab.cifar_batches(per_batch=2)
    blob = fab.cifar_members(batches, False)["cifar-10-batches-py/test_batch"]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for _ in range(300):
        data = bytearray(blob)
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[i] = int(rng.integers(0, 256))
        (folder / "test_batch").write_bytes(bytes(data[: int(rng.integers(len(data) // 2, len(data) + 1))]))
        try:
            images, labels = load_cifar10_split(tmp_path, "test")
        except DatasetError as exc:
            assert "\n" not in str(exc)
        else:
            assert images.shape[1:] == (3, 32, 32) and len(labels) == len(images) and 0 <= int(labels.min())
            assert int(labels.max()) < 10
