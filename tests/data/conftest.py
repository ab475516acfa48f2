"""Fabricators of miniature datasets in each real on-disk format (IDX, CIFAR-10, image folders)."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
                  np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise ``array`` as an IDX file (big-endian header + data)."""
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    code = IDX_TYPE_CODES[np.dtype(big.dtype.str.replace("<", ">"))]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + big.tobytes()


def write_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, gzip-compressed when the name ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_mnist_dir(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0) -> dict:
    """Write the four MNIST IDX files into ``root``; return ``{split: (images [N,28,28], labels [N])}``."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_file(root / f"{stem}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write_file(root / f"{stem}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
        out[split] = (images, labels)
    return out


def cifar_batches(per_batch: int = 3, seed: int = 0) -> dict:
    """Random CIFAR-10 batches: ``{batch name: (data uint8 [n, 3072], labels list)}``."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {n: (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist())
            for n in names}  # fmt: skip


def cifar_expected(batches: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(images [N,3,32,32], labels [N])`` a reader must return for ``split``."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data = np.concatenate([batches[n][0] for n in names]).reshape(-1, 3, 32, 32)
    return data, np.concatenate([np.asarray(batches[n][1], dtype=np.int64) for n in names])


def cifar_pickle(data: np.ndarray, labels: list, protocol: int = 2, old_numpy_names: bool = False) -> bytes:
    """Pickle a batch dict shaped like the official one (bytes keys)."""
    blob = pickle.dumps({b"batch_label": b"fabricated", b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * len(labels)}, protocol=protocol)  # fmt: skip
    if old_numpy_names:  # the official files name numpy.core.multiarray (NumPy 1.x)
        assert protocol <= 3, "GLOBAL opcodes hold the module name as plain text only up to protocol 3"
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return blob


def cifar_binary(data: np.ndarray, labels: list) -> bytes:
    """Encode a batch as 3073-byte records (label byte + pixels)."""
    return np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], data], axis=1).tobytes()


def cifar_members(batches: dict, binary: bool, protocol: int = 2) -> dict[str, bytes]:
    """``{archive member path: bytes}`` of a whole CIFAR-10 tree in one format."""
    folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    out = {}
    for name, (data, labels) in batches.items():
        if binary:
            out[f"{folder}/{name}.bin"] = cifar_binary(data, labels)
        else:
            out[f"{folder}/{name}"] = cifar_pickle(data, labels, protocol)
    out[f"{folder}/batches.meta" if not binary else f"{folder}/batches.meta.txt"] = b"meta"
    return out


def write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        write_file(root / name, data)
    return root


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_image_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 2, seed: int = 0) -> dict:
    """Write PNGs to ``root/{train,val}/<class>/``; return ``{(split, class, file): uint8 HxWx3}``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "val"):
        for c in classes:
            for i in range(per_class):
                h, w = int(rng.integers(12, 24)), int(rng.integers(12, 24))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                path = root / split / c / f"img{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                written[(split, c, path.name)] = pixels
    return written


@pytest.fixture
def fab():
    """The fabricators above, as one namespace."""
    return SimpleNamespace(
        idx_bytes=idx_bytes,
        write_file=write_file,
        make_mnist_dir=make_mnist_dir,
        cifar_batches=cifar_batches,
        cifar_expected=cifar_expected,
        cifar_pickle=cifar_pickle,
        cifar_binary=cifar_binary,
        cifar_members=cifar_members,
        write_tree=write_tree,
        write_tar=write_tar,
        make_image_folder=make_image_folder,
    )
