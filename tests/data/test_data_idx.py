"""IDX reader: exact round trips (raw and gzip) and one-line errors for every malformed file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from hbnn.data.idx import load_idx_split, parse_idx, read_idx
from hbnn.errors import DatasetError


@pytest.mark.parametrize("gz", [False, True])
def test_split_round_trip_is_exact(tmp_path, fab, gz):
    written = fab.make_mnist_dir(tmp_path, n_train=7, n_test=3, gz=gz)
    for split in ("train", "test"):
        images, labels = load_idx_split(tmp_path, split)
        assert images.dtype == torch.uint8 and images.shape == (len(written[split][0]), 1, 28, 28)
        assert labels.dtype == torch.int64
        assert torch.equal(images[:, 0], torch.from_numpy(written[split][0]))
        assert torch.equal(labels, torch.from_numpy(written[split][1].astype(np.int64)))


def test_dotted_file_names_are_found(tmp_path, fab):
    images = np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(2, 28, 28)
    fab.write_file(tmp_path / "t10k-images.idx3-ubyte", fab.idx_bytes(images))
    fab.write_file(tmp_path / "t10k-labels.idx1-ubyte.gz", fab.idx_bytes(np.array([3, 9], dtype=np.uint8)))
    x, y = load_idx_split(tmp_path, "test")
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and y.tolist() == [3, 9]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_every_element_type_round_trips(fab, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    data = fab.idx_bytes(array)
    assert len(data) == 4 + 3 * 4 + array.nbytes
    out = parse_idx(data, "mem")
    assert out.shape == (2, 3, 4) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_truncated_file_names_file_and_problem(tmp_path, fab):
    data = fab.idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = fab.write_file(tmp_path / "train-images-idx3-ubyte", data[:-10])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: truncated IDX file \(2358 of 2368 bytes"):
        read_idx(path)
    with pytest.raises(DatasetError, match="truncated IDX header"):
        parse_idx(data[:9], "short")
    with pytest.raises(DatasetError, match="no header"):
        parse_idx(b"\x00\x00", "tiny")


def test_trailing_bytes_are_rejected(fab):
    data = fab.idx_bytes(np.zeros(4, dtype=np.uint8)) + b"xx"
    with pytest.raises(DatasetError, match="2 unexpected trailing bytes"):
        parse_idx(data, "f")


def test_wrong_magic(tmp_path, fab):
    path = fab.write_file(tmp_path / "bogus", b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DatasetError, match=r"bogus: wrong magic number 0x89504e47; not an IDX file"):
        read_idx(path)
    labels = fab.idx_bytes(np.zeros(4, dtype=np.uint8))
    with pytest.raises(DatasetError, match="wrong magic number 0x00000801, expected 0x00000803"):
        parse_idx(labels, "labels-as-images", expected_magic=0x00000803)


def test_swapped_files_in_a_split_are_caught(tmp_path, fab):
    fab.make_mnist_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: wrong magic number 0x00000801"):
        load_idx_split(tmp_path, "train")


def test_corrupt_gzip(tmp_path, fab):
    fab.make_mnist_dir(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        load_idx_split(tmp_path, "test")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        load_idx_split(tmp_path, "test")


def test_missing_file_and_count_mismatch_and_bad_labels(tmp_path, fab):
    with pytest.raises(DatasetError, match=r"missing train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\)"):
        load_idx_split(tmp_path, "train")
    fab.make_mnist_dir(tmp_path, n_test=3)
    fab.write_file(tmp_path / "t10k-labels-idx1-ubyte", fab.idx_bytes(np.zeros(2, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="2 labels for 3 images"):
        load_idx_split(tmp_path, "test")
    fab.write_file(tmp_path / "t10k-labels-idx1-ubyte", fab.idx_bytes(np.array([0, 1, 10], dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"label 10 outside \[0, 10\)"):
        load_idx_split(tmp_path, "test")


def test_gzip_file_is_read_through(tmp_path, fab):
    array = np.arange(6, dtype=np.uint8)
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(fab.idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path, expected_magic=0x00000801), array)


def _header(type_code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("data, message", [
    (_header(0x08, (0, 28, 28)), r"IDX shape \(0, 28, 28\) has an empty dimension"),
    (_header(0x08, (2**32 - 1,) * 4) + bytes(8), r"truncated IDX file \(28 of \d+ bytes"),  # no int64 overflow
    (_header(0x07, (1,)) + bytes(1), "wrong magic number 0x00000701; not an IDX file"),
    (_header(0x08, ()), "wrong magic number 0x00000800; not an IDX file"),
    (b"\x00\x01" + _header(0x08, (1,))[2:] + bytes(1), "wrong magic number 0x00010801"),
    (_header(0x0D, (2,)) + bytes(7), r"truncated IDX file \(15 of 16 bytes for shape \(2,\)\)"),
])
def test_every_header_field_is_checked(data, message):
    with pytest.raises(DatasetError, match=message) as info:
        parse_idx(data, "f")
    assert "re-download it" in str(info.value) and "\n" not in str(info.value)


def test_images_of_another_size_are_refused(tmp_path, fab):
    fab.make_mnist_dir(tmp_path)
    fab.write_file(tmp_path / "t10k-images-idx3-ubyte", fab.idx_bytes(np.zeros((5, 7, 7), dtype=np.uint8)))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: 7x7 images, expected 28x28"):
        load_idx_split(tmp_path, "test", image_size=28)
    assert load_idx_split(tmp_path, "test")[0].shape == (5, 1, 7, 7)  # no size asked: any size


def test_mutated_idx_files_load_or_raise_dataset_error(tmp_path, fab):
    """Every header byte set to a few values, and truncations: DatasetError or a valid load, nothing else."""
    fab.make_mnist_dir(tmp_path, n_test=3)
    originals = {n: (tmp_path / n).read_bytes() for n in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    outcomes = {"ok": 0, "error": 0}
    for name, data in originals.items():
        header = 4 + 4 * data[3]
        variants = [data[:cut] for cut in (0, 1, 3, 4, header - 1, header, len(data) - 1)]
        for i in range(header + 1):
            for value in (0x00, 0x01, 0x03, 0x0D, 0x7F, 0xFF):
                variants.append(data[:i] + bytes([value]) + data[i + 1:])
        for variant in variants:
            (tmp_path / name).write_bytes(variant)
            try:
                images, labels = load_idx_split(tmp_path, "test", image_size=28)
            except DatasetError as exc:
                assert "\n" not in str(exc) and name in str(exc)
                outcomes["error"] += 1
            else:
                assert images.shape == (3, 1, 28, 28) and labels.shape == (3,) and int(labels.max()) < 10
                outcomes["ok"] += 1
        (tmp_path / name).write_bytes(data)
    assert outcomes["error"] > 50 and outcomes["ok"] > 0, outcomes
