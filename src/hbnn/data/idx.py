"""Reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header followed by the raw array::

    bytes 0-1   0x0000
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions n
    4*n bytes   each dimension as a big-endian uint32
    rest        prod(dims) elements, row-major, big-endian

So the magic number of an MNIST image file is ``0x00000803`` (uint8, 3 dims) and of a
label file ``0x00000801``. Files may be gzip-compressed (``.gz``). Every header field is
checked: the two zero bytes, a known element type, ``n >= 1``, every dimension ``>= 1``,
and a file size of exactly ``4 + 4 n + prod(dims) * itemsize`` bytes (computed without
overflow); a split also needs as many labels as images, labels in ``[0, num_classes)`` and,
when asked, images of the dataset's size. Any deviation raises
:class:`hbnn.errors.DatasetError` with one line naming the file, the problem and the fix
(re-download the file).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from hbnn.errors import DatasetError

__all__ = ["IDX_DTYPES", "parse_idx", "read_idx", "find_idx_file", "load_idx_split"]

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_SPLIT_STEMS = {"train": "train", "test": "t10k"}
_FIX = "re-download it"


def _read_bytes(path: Path) -> bytes:
    """Return the content of ``path``, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({exc}); {_FIX}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None


def parse_idx(data: bytes, source: str, expected_magic: int | None = None) -> np.ndarray:
    """Decode the bytes of an IDX file into an array of its shape and (native-endian) dtype.

    Args:
        data: the whole (decompressed) file.
        source: file name used in error messages.
        expected_magic: if given, the exact 32-bit magic number required
            (e.g. ``0x00000803`` for uint8 images with 3 dimensions).

    Returns:
        A writable ``numpy`` array of shape ``dims``.

    Raises:
        DatasetError: wrong magic number, unknown element type, no or an empty dimension,
            or a size that does not match the header (truncated file or trailing bytes).
    """
    if len(data) < 4:
        raise DatasetError(f"{source}: truncated IDX file ({len(data)} bytes, no header); {_FIX}")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise DatasetError(f"{source}: wrong magic number 0x{magic:08x}; not an IDX file ({_FIX})")
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(f"{source}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                           f"(a file of another kind under this name?); {_FIX}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source}: truncated IDX header ({len(data)} of {header} bytes); {_FIX}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if min(dims) < 1:
        raise DatasetError(f"{source}: IDX shape {dims} has an empty dimension (no data); {_FIX}")
    dtype = IDX_DTYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(data) < expected:
        raise DatasetError(f"{source}: truncated IDX file ({len(data)} of {expected} bytes for shape {dims}); {_FIX}")
    if len(data) > expected:
        extra = len(data) - expected
        raise DatasetError(f"{source}: {extra} unexpected trailing bytes after an IDX array of shape {dims}; {_FIX}")
    array = np.frombuffer(data, dtype=dtype, count=(expected - header) // dtype.itemsize, offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) with :func:`parse_idx`."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path), expected_magic)


def find_idx_file(data_dir: Path, name: str) -> Path | None:
    """Return the first existing variant of ``name`` in ``data_dir``, or None.

    Variants, in order: ``name``, ``name.gz`` and the same with ``-idx`` written ``.idx``
    (e.g. ``train-images.idx3-ubyte``, as some mirrors spell it).
    """
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        path = data_dir / candidate
        if path.is_file():
            return path
    return None


def load_idx_split(
    data_dir: str | os.PathLike, split: str, num_classes: int = 10, missing_hint: str = "",
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of an MNIST-layout folder.

    Args:
        data_dir: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``"train"`` or ``"test"``.
        num_classes: labels must lie in ``[0, num_classes)``.
        missing_hint: appended to the "missing file" error (how to obtain the data).
        image_size: if given, images must be ``image_size x image_size``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 1, H, W]`` and int64 ``[N]``.

    Raises:
        DatasetError: a missing file, a malformed file, mismatched counts, labels
            out of range or images of another size.
    """
    data_dir = Path(data_dir)
    stem = _SPLIT_STEMS[split]
    paths = {}
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{stem}-{kind}-ubyte"
        path = find_idx_file(data_dir, name)
        if path is None:
            hint = f"; {missing_hint}" if missing_hint else ""
            raise DatasetError(f"{data_dir}: missing {name} (or {name}.gz){hint}")
        paths[kind] = path
    images = read_idx(paths["images-idx3"], expected_magic=0x00000803)
    labels = read_idx(paths["labels-idx1"], expected_magic=0x00000801)
    if images.shape[0] != labels.shape[0]:
        where, other = paths["labels-idx1"], paths["images-idx3"].name
        raise DatasetError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images in {other}; "
                           f"re-download both files of the split")
    if int(labels.max()) >= num_classes:
        raise DatasetError(f"{paths['labels-idx1']}: label {int(labels.max())} outside [0, {num_classes}) "
                           f"(another dataset's labels?); {_FIX}")
    if image_size is not None and images.shape[1:] != (image_size, image_size):
        h, w = images.shape[1:]
        raise DatasetError(f"{paths['images-idx3']}: {h}x{w} images, expected {image_size}x{image_size} "
                           f"(another dataset's file?); {_FIX}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
